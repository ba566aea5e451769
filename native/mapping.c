/* Read-only maps of whole files that a truncation cannot crash.
 *
 * Reading an archive through a map spares `zoo serve` the copy out of the page cache that
 * pread makes for every chunk of every download, and compress reads its sources through maps
 * (zoo.container.writer). The price of a map is SIGBUS: a page past
 * the end of a file that shrank since it was mapped kills the process on the first touch,
 * whether the touch comes from zoo's decoder, zstandard or the interpreter. So each map is
 * registered here, and a SIGBUS inside a registered map puts a page of zeros where the
 * missing page was, marks the map damaged and lets the read go on. Whoever read through the
 * map checks `damaged` once done and throws the result away (zoo.container.format). A SIGBUS
 * anywhere else goes to the handler that was there before, or kills the process as it would
 * have without this file. The handler goes in with the first map. A handler installed after it
 * (faulthandler.enable() called later) takes its place and is left there: put back over it, ours
 * would chain to a handler that chains back to ours. While it is displaced, `maps_guarded()` is
 * false, map_file refuses, and zoo reads its archives with pread (zoo.container.format) and its
 * sources through plain maps. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mapping.h"

#define SLOTS 4096 /* maps alive at once, in all: a map that finds none free is refused */

typedef struct {
    _Atomic uintptr_t start; /* 0: free */
    _Atomic size_t size;
    _Atomic int damaged;
} slot;

static slot slots[SLOTS];
static struct sigaction previous;
static int installed;  /* changed only with the GIL held */
static uintptr_t page_mask;

static void on_sigbus(int signal_number, siginfo_t *info, void *context) {
    uintptr_t address = (uintptr_t)info->si_addr;
    if (info->si_code > 0) /* raised by the kernel for an access, not sent by kill() or raise() */
        for (size_t i = 0; i < SLOTS; i++) {
            uintptr_t start = atomic_load_explicit(&slots[i].start, memory_order_acquire);
            if (start == 0 || address - start >= atomic_load_explicit(&slots[i].size, memory_order_relaxed)) continue;
            void *page = (void *)(address & page_mask);
            if (mmap(page, ~page_mask + 1, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) break;
            atomic_store_explicit(&slots[i].damaged, 1, memory_order_release);
            return; /* the read is retried and finds zeros */
        }
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(signal_number, info, context);
    } else if (previous.sa_handler == SIG_IGN && info->si_code <= 0) {
        return; /* sent by another process, and ignored before this handler came */
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(signal_number);
    } else {
        /* Not ours and nobody else's: the default action ends the process, as it would have
         * without this handler (the signal, raised again, is taken once this returns). */
        struct sigaction fatal = {0};
        fatal.sa_handler = SIG_DFL;
        sigemptyset(&fatal.sa_mask);
        sigaction(SIGBUS, &fatal, NULL);
        raise(signal_number);
    }
}

static int install(void) {
    if (installed) return 0;
    struct sigaction ours = {0};
    ours.sa_sigaction = on_sigbus;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGBUS, &ours, &previous) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    page_mask = ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
    installed = 1;
    return 0;
}

/* Whether a fault in a map would reach on_sigbus: true before the first map (which installs it). */
static int guarded(void) {
    if (!installed) return 1;
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) != 0) return 0;
    return (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus;
}

typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size;
    int slot;
} Mapping;

static void mapping_dealloc(Mapping *self) {
    if (self->data) {
        /* The slot goes first: no fault inside this range is ours once it is unmapped. */
        atomic_store_explicit(&slots[self->slot].start, 0, memory_order_release);
        munmap(self->data, (size_t)self->size);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A memoryview of the map holds a reference to it: the map outlives every view. */
static int mapping_getbuffer(Mapping *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 1, flags);
}

static PyObject *mapping_damaged(Mapping *self, void *unused) {
    return PyBool_FromLong(atomic_load_explicit(&slots[self->slot].damaged, memory_order_acquire));
}

static PyObject *mapping_address(Mapping *self, void *unused) { return PyLong_FromVoidPtr(self->data); }

static Py_ssize_t mapping_length(Mapping *self) { return self->size; }

/* Drops the pages of [offset, offset + length) from the process, rounded out to whole pages at the
 * start (they stay in the page cache; a later read faults them in again): what a writer does with
 * a source's bytes once they are coded, so that its resident set does not grow with the model. */
static PyObject *mapping_release(Mapping *self, PyObject *args) {
    Py_ssize_t offset, length;
    if (!PyArg_ParseTuple(args, "nn", &offset, &length)) return NULL;
    if (offset < 0 || length < 0 || offset > self->size || length > self->size - offset)
        return PyErr_Format(PyExc_ValueError, "bytes %zd to %zd are outside a map of %zd", offset, offset + length, self->size);
    if (length == 0) Py_RETURN_NONE;
    uintptr_t first = ((uintptr_t)self->data + (uintptr_t)offset) & page_mask;
    uintptr_t end = (uintptr_t)self->data + (uintptr_t)offset + (uintptr_t)length;
    if (madvise((void *)first, end - first, MADV_DONTNEED) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef mapping_methods[] = {
    {"release", (PyCFunction)mapping_release, METH_VARARGS,
     "release(offset, length): drop those bytes' pages from the process (they stay in the page cache)."},
    {NULL, NULL, 0, NULL},
};

static PyBufferProcs mapping_buffer = {(getbufferproc)mapping_getbuffer, NULL};
static PySequenceMethods mapping_sequence = {.sq_length = (lenfunc)mapping_length};
static PyGetSetDef mapping_getset[] = {
    {"damaged", (getter)mapping_damaged, NULL, "Whether a read found a page past the file's end (it read zeros).", NULL},
    {"address", (getter)mapping_address, NULL, "Where the map starts in memory.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zoo._native.Mapping",
    .tp_doc = "A read-only map of a file that a truncation cannot crash (map_file).",
    .tp_basicsize = sizeof(Mapping),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_as_buffer = &mapping_buffer,
    .tp_as_sequence = &mapping_sequence,
    .tp_getset = mapping_getset,
    .tp_methods = mapping_methods,
};

static PyObject *map_file(PyObject *module, PyObject *args) {
    int descriptor;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "in", &descriptor, &size)) return NULL;
    if (size <= 0) return PyErr_Format(PyExc_ValueError, "cannot map %zd bytes", size);
    if (install() < 0) return NULL;
    if (!guarded()) return PyErr_Format(PyExc_OSError, "another SIGBUS handler replaced zoo's: a map is not safe");
    int chosen = -1;
    for (int i = 0; i < SLOTS && chosen < 0; i++) /* under the GIL: no other thread takes a slot meanwhile */
        if (atomic_load_explicit(&slots[i].start, memory_order_acquire) == 0) chosen = i;
    if (chosen < 0) return PyErr_Format(PyExc_OSError, "%d files are mapped already", SLOTS);
    Mapping *self = PyObject_New(Mapping, &MappingType);
    if (!self) return NULL;
    self->data = NULL;
    self->size = size;
    self->slot = chosen;
    void *data = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, descriptor, 0);
    if (data == MAP_FAILED) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->data = data;
    atomic_store_explicit(&slots[chosen].damaged, 0, memory_order_relaxed);
    atomic_store_explicit(&slots[chosen].size, (size_t)size, memory_order_relaxed);
    atomic_store_explicit(&slots[chosen].start, (uintptr_t)data, memory_order_release);
    return (PyObject *)self;
}

static PyObject *maps_guarded(PyObject *module, PyObject *unused) { return PyBool_FromLong(guarded()); }

static PyMethodDef MAPPING_METHODS[] = {
    {"maps_guarded", maps_guarded, METH_NOARGS,
     "maps_guarded() -> bool: whether a read past a truncated end of a map is still caught (false once "
     "another SIGBUS handler has replaced zoo's, until it is put back)."},
    {"map_file", map_file, METH_VARARGS,
     "map_file(fd, size) -> Mapping: the first `size` bytes of an open file, read-only; a read past a "
     "truncated end finds zeros and sets `damaged` instead of killing the process."},
    {NULL, NULL, 0, NULL},
};

int zoo_add_mapping(PyObject *module) {
    if (PyType_Ready(&MappingType) < 0) return -1;
    return PyModule_AddFunctions(module, MAPPING_METHODS);
}
