/* zoo._native: the Python face of the kernels. Arguments are checked here (the Python wrappers in
 * zoo/_kernels.py check them too, with the same messages as zoo/_fallback.py); the heavy loops run
 * with the GIL released so zoo's thread pool scales over chunks. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "bitpack.h"
#include "coder.h"
#include "dispatch.h"
#include "mapping.h"

static const zoo_kernels *active = &zoo_kernels_scalar;
static const char *active_name = "scalar";

static PyObject *available_isas(PyObject *self, PyObject *unused) {
    PyObject *names = PyList_New(0);
    for (size_t i = 0; names && i < ZOO_ISA_COUNT; i++)
        if (zoo_kernels_for(zoo_isas[i])) {
            PyObject *name = PyUnicode_FromString(zoo_isas[i]);
            if (!name || PyList_Append(names, name)) {
                Py_XDECREF(name);
                Py_DECREF(names);
                return NULL;
            }
            Py_DECREF(name);
        }
    return names;
}

static PyObject *select_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (size_t i = 0; i < ZOO_ISA_COUNT; i++)
        if (!strcmp(name, zoo_isas[i])) {
            const zoo_kernels *table = zoo_kernels_for(zoo_isas[i]);
            if (!table) break;
            active = table;
            active_name = zoo_isas[i];
            return PyUnicode_FromString(active_name);
        }
    return PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernels", name);
}

static PyObject *current_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(active_name); }

static PyObject *best_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(zoo_best_isa()); }

static PyObject *cpu_features(PyObject *self, PyObject *unused) {
    const char *names[32];
    size_t n = zoo_cpu_features(names, 32);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) PyList_SET_ITEM(list, (Py_ssize_t)i, PyUnicode_FromString(names[i]));
    return list;
}

static PyObject *new_bytearray(size_t size, char **data) {
    if (size > PY_SSIZE_T_MAX) return PyErr_NoMemory();
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out) *data = PyByteArray_AS_STRING(out);
    return out;
}

static int check_word_bytes(int word_bytes) {
    if (word_bytes == 1 || word_bytes == 2 || word_bytes == 4 || word_bytes == 8) return 1;
    PyErr_Format(PyExc_ValueError, "word size %d is not 1, 2, 4 or 8 bytes", word_bytes);
    return 0;
}

/* -- byte planes --------------------------------------------------------------------------- */

static PyObject *split_planes(PyObject *self, PyObject *args) {
    Py_buffer chunk;
    int word_bytes, rotate;
    if (!PyArg_ParseTuple(args, "y*ip", &chunk, &word_bytes, &rotate)) return NULL;
    PyObject *result = NULL;
    if (!check_word_bytes(word_bytes)) goto done;
    if (chunk.len % word_bytes) {
        PyErr_Format(PyExc_ValueError, "chunk of %zd bytes is not whole words of %d bytes", chunk.len, word_bytes);
        goto done;
    }
    size_t count = (size_t)chunk.len / (size_t)word_bytes;
    uint8_t *planes[8];
    result = PyList_New(word_bytes);
    for (int p = 0; result && p < word_bytes; p++) {
        char *data = NULL;
        PyObject *plane = new_bytearray(count, &data);
        if (!plane) {
            Py_CLEAR(result);
            break;
        }
        planes[p] = (uint8_t *)data;
        PyList_SET_ITEM(result, p, plane);
    }
    if (result) {
        Py_BEGIN_ALLOW_THREADS active->split_planes((const uint8_t *)chunk.buf, count, word_bytes, rotate, planes);
        Py_END_ALLOW_THREADS
    }
done:
    PyBuffer_Release(&chunk);
    return result;
}

static PyObject *merge_planes(PyObject *self, PyObject *args) {
    PyObject *sequence;
    int word_bytes, rotate;
    if (!PyArg_ParseTuple(args, "Oip", &sequence, &word_bytes, &rotate)) return NULL;
    if (!check_word_bytes(word_bytes)) return NULL;
    PyObject *items = PySequence_Fast(sequence, "planes must be a sequence");
    if (!items) return NULL;
    Py_buffer views[8];
    int held = 0;
    PyObject *result = NULL;
    if (PySequence_Fast_GET_SIZE(items) != word_bytes) {
        PyErr_Format(PyExc_ValueError, "%d-byte words take %d planes, got %zd", word_bytes, word_bytes, PySequence_Fast_GET_SIZE(items));
        goto done;
    }
    for (; held < word_bytes; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(items, held), &views[held], PyBUF_SIMPLE)) goto done;
        if (views[held].len != views[0].len) {
            held++;
            PyErr_SetString(PyExc_ValueError, "planes differ in length");
            goto done;
        }
    }
    const uint8_t *planes[8];
    for (int p = 0; p < word_bytes; p++) planes[p] = (const uint8_t *)views[p].buf;
    size_t count = (size_t)views[0].len;
    char *data = NULL;
    result = new_bytearray(count * (size_t)word_bytes, &data);
    if (result) {
        Py_BEGIN_ALLOW_THREADS active->merge_planes(planes, count, word_bytes, rotate, (uint8_t *)data);
        Py_END_ALLOW_THREADS
    }
done:
    for (int p = 0; p < held; p++) PyBuffer_Release(&views[p]);
    Py_DECREF(items);
    return result;
}

/* -- bit packing (bitpack.c) --------------------------------------------------------------- */

static PyObject *pack_indices(PyObject *self, PyObject *args) {
    Py_buffer indices;
    int item_bytes, bits;
    if (!PyArg_ParseTuple(args, "y*ii", &indices, &item_bytes, &bits)) return NULL;
    PyObject *result = NULL;
    if ((item_bytes != 1 && item_bytes != 2) || bits < 1 || bits > 16 || indices.len % item_bytes) {
        PyErr_SetString(PyExc_ValueError, "pack_indices takes uint8 or uint16 indices and 1..16 bits");
        goto done;
    }
    size_t count = (size_t)indices.len / (size_t)item_bytes;
    char *data = NULL;
    result = new_bytearray(zoo_packed_size(count, bits), &data);
    if (!result) goto done;
    int too_big;
    Py_BEGIN_ALLOW_THREADS;
    too_big = zoo_pack_indices(indices.buf, count, item_bytes, bits, (uint8_t *)data);
    Py_END_ALLOW_THREADS;
    if (too_big) {
        Py_CLEAR(result);
        PyErr_Format(PyExc_ValueError, "an index does not fit in %d bits", bits);
    }
done:
    PyBuffer_Release(&indices);
    return result;
}

static PyObject *unpack_indices(PyObject *self, PyObject *args) {
    Py_buffer packed;
    int bits;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "y*in", &packed, &bits, &count)) return NULL;
    PyObject *result = NULL;
    if (bits < 1 || bits > 16 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "unpack_indices takes 1..16 bits and a count of at least 0");
        goto done;
    }
    if ((size_t)count > SIZE_MAX / 16 || (size_t)packed.len < zoo_packed_size((size_t)count, bits)) {
        PyErr_Format(PyExc_ValueError, "%zd indices of %d bits need more than %zd bytes", count, bits, packed.len);
        goto done;
    }
    char *data = NULL;
    result = new_bytearray((size_t)count * (bits <= 8 ? 1 : 2), &data);
    if (!result) goto done;
    Py_BEGIN_ALLOW_THREADS;
    zoo_unpack_indices((const uint8_t *)packed.buf, bits, (size_t)count, data);
    Py_END_ALLOW_THREADS;
done:
    PyBuffer_Release(&packed);
    return result;
}

/* -- dequantize ---------------------------------------------------------------------------- */

static PyObject *dequantize(PyObject *self, PyObject *args) {
    Py_buffer packed, row_codebook, codebooks;
    int bits, kind;
    Py_ssize_t rows, cols, n_codebooks;
    if (!PyArg_ParseTuple(args, "y*inny*y*ni", &packed, &bits, &rows, &cols, &row_codebook, &codebooks, &n_codebooks, &kind))
        return NULL;
    PyObject *result = NULL;
    const char *problem = NULL;
    size_t count = 0, book = (size_t)1 << (bits >= 1 && bits <= 16 ? bits : 1);
    if (bits < 1 || bits > 16 || rows < 0 || cols < 0 || n_codebooks < 0 || kind < 0 || kind > 2)
        problem = "dequantize takes 1..16 bits, sizes of at least 0 and kind 0..2";
    else if (cols && (size_t)rows > SIZE_MAX / 16 / (size_t)cols)
        problem = "dequantize sizes overflow";
    else if ((count = (size_t)rows * (size_t)cols, (size_t)packed.len < zoo_packed_size(count, bits)))
        problem = "packed indices are shorter than rows x cols";
    else if ((size_t)row_codebook.len != 4 * (size_t)rows)
        problem = "row_codebook must hold one int32 per row";
    else if ((size_t)n_codebooks > SIZE_MAX / 4 / book || (size_t)codebooks.len != 4 * book * (size_t)n_codebooks)
        problem = "codebooks must hold n_codebooks x 2**bits float32";
    else
        for (Py_ssize_t r = 0; r < rows; r++) {
            int32_t which;
            memcpy(&which, (const char *)row_codebook.buf + 4 * r, 4);
            if (which < 0 || which >= n_codebooks) {
                problem = "row_codebook names a codebook that does not exist";
                break;
            }
        }
    if (problem) {
        PyErr_SetString(PyExc_ValueError, problem);
        goto done;
    }
    char *data = NULL;
    result = new_bytearray(count * (kind == 0 ? 4 : 2), &data);
    if (!result) goto done;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    /* rows in batches of about 64 Ki indices, unpacked to 16 bits, so the batch stays in cache */
    size_t batch_rows = cols ? 65536 / (size_t)cols : (size_t)rows;
    if (batch_rows == 0) batch_rows = 1;
    uint16_t *indices = malloc(2 * batch_rows * (size_t)(cols ? cols : 1));
    int32_t *books = malloc(4 * batch_rows);
    if (!indices || !books) failed = 1;
    for (size_t first = 0; !failed && first < (size_t)rows; first += batch_rows) {
        size_t n = (size_t)rows - first < batch_rows ? (size_t)rows - first : batch_rows;
        zoo_unpack_range((const uint8_t *)packed.buf, bits, first * (size_t)cols, n * (size_t)cols, indices);
        memcpy(books, (const char *)row_codebook.buf + 4 * first, 4 * n);
        active->dequantize_rows(indices, n, (size_t)cols, books, (const float *)codebooks.buf, book, kind,
                                data + first * (size_t)cols * (kind == 0 ? 4 : 2));
    }
    free(indices);
    free(books);
    Py_END_ALLOW_THREADS;
    if (failed) {
        Py_CLEAR(result);
        PyErr_NoMemory();
    }
done:
    PyBuffer_Release(&packed);
    PyBuffer_Release(&row_codebook);
    PyBuffer_Release(&codebooks);
    return result;
}

/* -- Philox -------------------------------------------------------------------------------- */

static PyObject *philox_uniform(PyObject *self, PyObject *args) {
    unsigned long long seed, stream, offset;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "KKnK", &seed, &stream, &count, &offset)) return NULL;
    /* elements offset .. offset + count - 1 must be numbers of 64 bits: offset + count at most 2**64 */
    if (count < 0 || (count > 0 && (unsigned long long)(count - 1) > ~offset)) {
        PyErr_SetString(PyExc_ValueError, "count must be at least 0 and offset + count at most 2**64");
        return NULL;
    }
    if (count > PY_SSIZE_T_MAX / 4) { /* 4 * count wrapped to a small buffer, written past its end */
        PyErr_SetString(PyExc_ValueError, "array is too big");
        return NULL;
    }
    char *data = NULL;
    PyObject *result = new_bytearray(4 * (size_t)count, &data);
    if (!result) return NULL;
    Py_BEGIN_ALLOW_THREADS active->philox_uniform(seed, stream, offset, (size_t)count, (float *)data);
    Py_END_ALLOW_THREADS return result;
}

/* -- the lowrank product ---------------------------------------------------------------------- */

static PyObject *product(PyObject *self, PyObject *args) {
    Py_buffer left, right;
    Py_ssize_t rows, rank, cols;
    if (!PyArg_ParseTuple(args, "y*y*nnn", &left, &right, &rows, &rank, &cols)) return NULL;
    PyObject *result = NULL;
    if (rows < 0 || rank < 0 || cols < 0)
        PyErr_SetString(PyExc_ValueError, "product takes sizes of at least 0");
    else if ((rank && (size_t)rows > SIZE_MAX / 4 / (size_t)rank) || (cols && (size_t)rank > SIZE_MAX / 4 / (size_t)cols) ||
             (cols && (size_t)rows > SIZE_MAX / 4 / (size_t)cols))
        PyErr_SetString(PyExc_ValueError, "product sizes overflow");
    else if ((size_t)left.len != 4 * (size_t)rows * (size_t)rank || (size_t)right.len != 4 * (size_t)rank * (size_t)cols)
        PyErr_SetString(PyExc_ValueError, "left must hold rows x rank float32 and right rank x cols");
    else {
        char *data = NULL;
        result = new_bytearray(4 * (size_t)rows * (size_t)cols, &data);
        if (result) {
            Py_BEGIN_ALLOW_THREADS active->product((const float *)left.buf, (const float *)right.buf, (size_t)rows, (size_t)rank,
                                                   (size_t)cols, (float *)data);
            Py_END_ALLOW_THREADS
        }
    }
    PyBuffer_Release(&left);
    PyBuffer_Release(&right);
    return result;
}

/* -- checksums ----------------------------------------------------------------------------- */

static PyObject *crc32(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &value)) return NULL;
    uint32_t crc = (uint32_t)value;
    if (data.len < 4096) { /* taking and giving back the GIL costs more than this */
        crc = active->crc32(crc, (const uint8_t *)data.buf, (size_t)data.len);
    } else {
        Py_BEGIN_ALLOW_THREADS crc = active->crc32(crc, (const uint8_t *)data.buf, (size_t)data.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

/* -- the section coder --------------------------------------------------------------------- */

/* The section goes straight into the bytes object returned, after `prefix` (the headers of the
 * frames around it), which then shrinks to fit: once coded, the section is not copied again.
 * `lengths_at` (where it is not -1): the offset in `prefix` of a stream header's two u32 lengths
 * (docs/FORMAT.md, a chunk's streams), both set here to the length of what follows them, so that
 * a chunk of one stream is framed without joining its header to it afterwards. */
static PyObject *encode_section(PyObject *self, PyObject *args) {
    Py_buffer words, prefix = {0};
    int word_bytes, is_float, symbol_bits;
    Py_ssize_t lengths_at = -1;
    if (!PyArg_ParseTuple(args, "y*ipi|y*n", &words, &word_bytes, &is_float, &symbol_bits, &prefix, &lengths_at)) return NULL;
    PyObject *result = NULL;
    if (word_bytes != 1 && word_bytes != 2 && word_bytes != 4) {
        PyErr_SetString(PyExc_ValueError, "sections hold 1-, 2- or 4-byte words");
        goto done;
    }
    if (words.len % word_bytes) {
        PyErr_SetString(PyExc_ValueError, "section input is not whole words");
        goto done;
    }
    if (lengths_at != -1 && (lengths_at < 0 || lengths_at > prefix.len - 8)) {
        PyErr_SetString(PyExc_ValueError, "the prefix holds no two lengths there");
        goto done;
    }
    size_t count = (size_t)words.len / (size_t)word_bytes, capacity = zoo_section_bound(count, word_bytes), used = 0;
    if (capacity > (size_t)(PY_SSIZE_T_MAX - prefix.len)) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((size_t)prefix.len + capacity));
    if (!result) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    if (prefix.len) memcpy(out, prefix.buf, (size_t)prefix.len);
    Py_BEGIN_ALLOW_THREADS used = zoo_encode_section((const uint8_t *)words.buf, count, word_bytes, is_float, symbol_bits, out + prefix.len,
                                                     capacity, active);
    Py_END_ALLOW_THREADS if (!used) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_MemoryError, "section encoder ran out of room");
        goto done;
    }
    if (lengths_at != -1) {
        uint64_t length = (uint64_t)(prefix.len - (lengths_at + 8)) + used;
        if (length > UINT32_MAX) {
            Py_CLEAR(result);
            PyErr_SetString(PyExc_ValueError, "the stream is too long for its header's lengths");
            goto done;
        }
        for (int field = 0; field < 2; field++)
            for (int k = 0; k < 4; k++) out[lengths_at + 4 * field + k] = (uint8_t)(length >> (8 * k));
    }
    _PyBytes_Resize(&result, (Py_ssize_t)((size_t)prefix.len + used)); /* sets an error and NULL when it fails */
done:
    PyBuffer_Release(&words);
    PyBuffer_Release(&prefix);
    return result;
}

static PyObject *decode_section(PyObject *self, PyObject *args) {
    Py_buffer payload;
    Py_ssize_t offset, count;
    int word_bytes, is_float;
    if (!PyArg_ParseTuple(args, "y*nnip", &payload, &offset, &count, &word_bytes, &is_float)) return NULL;
    PyObject *result = NULL, *out = NULL;
    if ((word_bytes != 1 && word_bytes != 2 && word_bytes != 4) || count < 0 || offset < 0 || offset > payload.len) {
        PyErr_SetString(PyExc_ValueError, "bad section arguments");
        goto done;
    }
    if ((size_t)count > SIZE_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "section is too large");
        goto done;
    }
    char *data = NULL;
    out = new_bytearray((size_t)count * (size_t)word_bytes, &data);
    if (!out) goto done;
    const uint8_t *cursor = (const uint8_t *)payload.buf + offset, *end = (const uint8_t *)payload.buf + payload.len;
    const char *error;
    Py_BEGIN_ALLOW_THREADS error = zoo_decode_section(&cursor, end, (uint8_t *)data, (size_t)count, word_bytes, is_float, active);
    Py_END_ALLOW_THREADS if (error) PyErr_SetString(PyExc_ValueError, error);
    else result = Py_BuildValue("On", out, (Py_ssize_t)(cursor - (const uint8_t *)payload.buf));
done:
    Py_XDECREF(out);
    PyBuffer_Release(&payload);
    return result;
}

static PyMethodDef METHODS[] = {
    {"available_isas", available_isas, METH_NOARGS, "The kernel tables this CPU can run, in the order scalar, avx2, avx2-loads, avx512, avx512-ymm."},
    {"select_isa", select_isa, METH_VARARGS, "select_isa(name): use that kernel table from now on."},
    {"isa", current_isa, METH_NOARGS, "The kernel table in use."},
    {"best_isa", best_isa, METH_NOARGS, "The kernel table zoo uses on this CPU when none is forced."},
    {"cpu_features", cpu_features, METH_NOARGS, "CPU features seen at run time."},
    {"split_planes", split_planes, METH_VARARGS, "split_planes(chunk, word_bytes, rotate) -> list of bytearray."},
    {"merge_planes", merge_planes, METH_VARARGS, "merge_planes(planes, word_bytes, rotate) -> bytearray."},
    {"pack_indices", pack_indices, METH_VARARGS, "pack_indices(indices, item_bytes, bits) -> bytearray."},
    {"unpack_indices", unpack_indices, METH_VARARGS, "unpack_indices(packed, bits, count) -> bytearray."},
    {"dequantize", dequantize, METH_VARARGS, "dequantize(packed, bits, rows, cols, row_codebook, codebooks, n_codebooks, kind)."},
    {"philox_uniform", philox_uniform, METH_VARARGS, "philox_uniform(seed, stream, count, offset) -> bytearray of float32."},
    {"product", product, METH_VARARGS, "product(left, right, rows, rank, cols) -> bytearray of float32: left times right, summed in double in a fixed order."},
    {"crc32", crc32, METH_VARARGS, "crc32(data, value=0) -> int: zlib.crc32's value, faster."},
    {"encode_section", encode_section, METH_VARARGS, "encode_section(words, word_bytes, is_float, symbol_bits, prefix=b'', lengths_at=-1) -> prefix + the coded section."},
    {"decode_section", decode_section, METH_VARARGS, "decode_section(payload, offset, count, word_bytes, is_float) -> (bytearray, end)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zoo._native",
    .m_doc = "zoo's native kernels and entropy coder.",
    .m_size = -1, /* the chosen kernel table is process-wide state */
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__native(void) {
    active_name = zoo_best_isa();
    active = zoo_kernels_for(active_name);
    PyObject *module = PyModule_Create(&MODULE);
    if (module && zoo_add_mapping(module) < 0) Py_CLEAR(module);
    return module;
}
