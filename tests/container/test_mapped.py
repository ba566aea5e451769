"""Archives read through a map of their files (`zoo serve`'s way): the same bytes as through
pread, and a file that shrinks under the map fails the read, never the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import random_storage, write_safetensors
from zoo import kernels
from zoo.api import compress

pytestmark = pytest.mark.skipif(kernels.map_file is None, reason="maps need the native extension")


@pytest.fixture
def archive(tmp_path):
    """A lossless archive of three tensors in 4 KiB chunks (many chunks: some lie past any cut)."""
    source = tmp_path / "model.safetensors"
    write_safetensors(source, {name: ("F32", random_storage("F32", (64, 48), seed)) for seed, name in enumerate("abc")})
    compress(source, tmp_path / "model.zoo", chunk_bytes=4096)
    return source, tmp_path / "model.zoo"


def run_python(code: str) -> subprocess.CompletedProcess:
    """A scenario in a process of its own: if a SIGBUS got through, it ends that process, not the tests."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False)


def test_a_mapped_archive_reads_the_same_bytes(archive):
    """(In a process of its own, as every test here: a SIGBUS handler that a library another test
    loaded installs after zoo's turns the maps off in that process, see kernels.maps_guarded.)"""
    _, path = archive
    result = run_python(f"""
        from zoo import kernels
        from zoo.container.reader import Archive
        with Archive({str(path)!r}) as copied, Archive({str(path)!r}, mapped=True) as mapped:
            assert mapped._file.mapped and kernels.maps_guarded()
            for name in "abc":
                assert mapped.read_tensor(name).data.tobytes() == copied.read_tensor(name).data.tobytes()
            assert mapped.read_file("model.safetensors") == copied.read_file("model.safetensors")
        """)
    assert result.returncode == 0, result.stderr


def test_an_archive_that_shrinks_under_its_map_fails_the_read_not_the_process(archive):
    source, path = archive
    result = run_python(f"""
        import os
        from zoo.container.reader import Archive
        from zoo.errors import FormatError
        archive = Archive({str(path)!r}, mapped=True)
        whole = archive.read_file("model.safetensors")  # every chunk mapped and read once
        assert whole == open({str(source)!r}, "rb").read()
        os.truncate({str(path)!r}, os.path.getsize({str(path)!r}) // 2)  # the cut lies inside tensor b
        for attempt in ("refused", "again"):  # the second maps the file afresh: c is simply missing then
            try:
                archive.read_tensor("c")
            except FormatError as error:
                print(f"{{attempt}}:", error)
        """)
    assert result.returncode == 0, result.stderr
    refused, again = result.stdout.splitlines()
    assert refused.startswith("refused:") and "shrank while" in refused and "truncated or damaged" in refused
    assert again.startswith("again:") and "truncated" in again


@pytest.mark.parametrize("threads", [1, 2])
def test_a_source_that_shrinks_while_it_is_compressed_fails_the_build_not_the_process(tmp_path, threads):
    """compress reads its sources through maps: a file cut short meanwhile (another process
    rewriting it) is refused in one error, and no archive is left; it was a SIGBUS that killed
    the process, leaving its temporary behind."""
    source = tmp_path / "model.safetensors"
    write_safetensors(source, {name: ("F32", random_storage("F32", (256, 256), seed)) for seed, name in enumerate("abcd")})
    result = run_python(f"""
        import os
        from zoo.api import compress
        from zoo.errors import InputError
        cut = []
        def progress(done):
            if not cut:  # after the first chunk: the later ones lie past the new end
                os.truncate({str(source)!r}, 4096)
                cut.append(done)
        try:
            compress({str(source)!r}, {str(tmp_path / "model.zoo")!r}, chunk_bytes=4096, threads={threads}, progress=progress)
        except InputError as error:
            print(error)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{source}: file changed while being read (it shrank)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_handler_installed_after_zoos_turns_the_maps_off_not_the_guard(archive):
    """faulthandler.enable() after the first map puts its own SIGBUS handler in zoo's place: the
    reads then go through pread, and a cut archive is still an error, not the end of the process."""
    source, path = archive
    result = run_python(f"""
        import faulthandler, os
        from zoo import kernels
        from zoo.container.reader import Archive
        from zoo.errors import FormatError
        archive = Archive({str(path)!r}, mapped=True)
        assert archive.read_file("model.safetensors") == open({str(source)!r}, "rb").read()
        print("guarded", kernels.maps_guarded())
        faulthandler.enable()
        print("displaced", kernels.maps_guarded())
        try:
            kernels.map_file(os.open({str(path)!r}, os.O_RDONLY), 100)
        except OSError as error:
            print("refused:", error)
        os.truncate({str(path)!r}, os.path.getsize({str(path)!r}) // 2)
        try:
            archive.read_tensor("c")
        except FormatError as error:
            print("error:", error)
        faulthandler.disable()
        print("restored", kernels.maps_guarded())
        """)
    assert result.returncode == 0, result.stderr
    guarded, displaced, refused, error, restored = result.stdout.splitlines()
    assert (guarded, displaced, restored) == ("guarded True", "displaced False", "restored True")
    assert refused.startswith("refused:") and "SIGBUS handler" in refused
    assert error.startswith("error:") and "truncated" in error


def test_an_archive_that_cannot_be_mapped_tries_once_then_reads_with_pread(archive):
    """With every map slot taken, the archive reads through pread, without a map_file call per
    chunk (in a process of its own: a handler another test's library installed would turn the
    maps off here, see maps_guarded)."""
    source, path = archive
    result = run_python(f"""
        from zoo import kernels
        from zoo.container.reader import Archive
        calls, real = [], kernels.map_file

        def counted(descriptor, size):
            calls.append(size)
            return real(descriptor, size)

        kernels.map_file = counted
        taken = []
        with open({str(source)!r}, "rb") as stream:
            try:
                while True:
                    taken.append(real(stream.fileno(), 16))
            except OSError as error:
                assert "mapped already" in str(error), error
            with Archive({str(path)!r}, mapped=True) as mapped:
                assert mapped.read_file("model.safetensors") == open({str(source)!r}, "rb").read()  # many 4 KiB chunks
        del taken
        assert len(calls) == 1, calls
        """)
    assert result.returncode == 0, result.stderr


def test_a_sigbus_outside_zoos_maps_still_ends_the_process(tmp_path):
    """The handler answers only for zoo's own maps: any other bus error is as fatal as before."""
    (tmp_path / "ours").write_bytes(b"a" * 10000)
    (tmp_path / "other").write_bytes(b"b" * 100000)
    result = run_python(f"""
        import mmap, os
        from zoo import kernels
        ours = kernels.map_file(os.open({str(tmp_path / "ours")!r}, os.O_RDONLY), 10000)  # the handler is in place
        with open({str(tmp_path / "other")!r}, "rb") as stream:
            other = mmap.mmap(stream.fileno(), 0, prot=mmap.PROT_READ)
        os.truncate({str(tmp_path / "other")!r}, 10)
        print("read", other[50000])
        """)
    assert "read" not in result.stdout
    if "AddressSanitizer" in result.stderr:  # `make asan`: the sanitizer reports the bus error and exits
        assert result.returncode != 0
    else:
        assert result.returncode in (-signal.SIGBUS, 128 + signal.SIGBUS), (result.returncode, result.stdout, result.stderr)


def test_a_bus_signal_sent_by_kill_still_ends_the_process(tmp_path):
    (tmp_path / "ours").write_bytes(b"a" * 10000)
    result = run_python(f"""
        import os, signal
        from zoo import kernels
        ours = kernels.map_file(os.open({str(tmp_path / "ours")!r}, os.O_RDONLY), 10000)
        os.kill(os.getpid(), signal.SIGBUS)
        print("alive")
        """)
    assert "alive" not in result.stdout
    assert result.returncode != 0


def test_a_decoded_chunk_never_points_into_the_map(archive):
    """Whatever a decoder hands back is the caller's to keep: a view of the mapped file is copied."""
    _, path = archive
    result = run_python(f"""
        import numpy as np
        from zoo.container.format import ArchiveFile, crc32
        file = ArchiveFile({str(path)!r}, mapped=True)
        stored = open({str(path)!r}, "rb").read()[file.payload_start:file.payload_start + 64]
        out = file.decode_chunk((0, 64, crc32(stored)), "a test chunk", None, lambda view: np.frombuffer(view, dtype=np.uint8))
        mapping = file._map
        assert mapping
        assert not mapping.address <= out.__array_interface__["data"][0] < mapping.address + len(mapping)
        assert out.tobytes() == stored
        file.close()
        """)
    assert result.returncode == 0, result.stderr


def test_a_reader_that_reads_each_chunk_once_keeps_none_of_the_archive_in_memory(tmp_path):
    """decompress and verify read through the map (no copy of each chunk) and release each chunk's
    pages once decoded: the process's resident set does not grow with the archive. A reader that
    keeps its maps (zoo serve) keeps the pages it read."""
    source = tmp_path / "model.safetensors"
    write_safetensors(source, {name: ("F32", random_storage("F32", (512, 512), seed)) for seed, name in enumerate("abcd")})
    path = tmp_path / "model.zoo"
    compress(source, path, chunk_bytes=256 << 10)
    result = run_python(f"""
        import re
        from zoo.container.reader import Archive

        def resident(mapping):  # the map's resident bytes, from its entry in /proc/self/smaps
            lines = open("/proc/self/smaps").read().splitlines()
            for number, line in enumerate(lines):
                start = re.match(r"([0-9a-f]+)-[0-9a-f]+ ", line)
                if start and int(start.group(1), 16) == mapping.address:
                    return next(int(re.match(r"Rss:\\s+(\\d+) kB", later).group(1)) for later in lines[number:] if later.startswith("Rss:")) << 10
            raise AssertionError("the map is not in /proc/self/smaps")

        original = open({str(source)!r}, "rb").read()
        for read_once in (True, False):
            with Archive({str(path)!r}, mapped=True, read_once=read_once) as archive:
                assert archive.read_file("model.safetensors") == original
                print(read_once, resident(archive._file._map), archive._file.payload_size)
        """)
    assert result.returncode == 0, result.stderr
    released, kept = (line.split() for line in result.stdout.splitlines())
    # none here; pages read from disk come in the kernel's read-ahead blocks, a few hundred KiB
    assert int(released[1]) <= 1 << 20, released
    assert int(kept[1]) >= int(kept[2]) * 0.9, kept


def test_decompress_and_verify_decode_out_of_the_map(archive, tmp_path):
    """No chunk goes through the copying read (ArchiveFile.read_chunk) where the archive can be mapped."""
    source, path = archive
    result = run_python(f"""
        import zoo
        from zoo.container.format import ArchiveFile

        def refused(*args):
            raise AssertionError("a chunk was copied out of the archive with pread")

        ArchiveFile.read_chunk = refused
        zoo.decompress({str(path)!r}, {str(tmp_path / "out")!r}, threads=2)
        assert zoo.verify({str(path)!r}) == []
        """)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("mtime", ["moved", "put-back"])
@pytest.mark.parametrize("into", ["archive", "zoo"])
def test_a_source_written_in_place_while_it_is_compressed_is_refused_and_stores_nothing(tmp_path, into, mtime):
    """A file rewritten in place (same size) while compress read it: the coder, the objects' content
    keys and the sha256 each read it on their own, and the archive, reported stored, decoded to
    bytes that matched no record; into the zoo its objects, named for bytes they did not hold,
    were reused by a later, untouched copy of the model. The build now refuses the file, also when
    the writer put its modification time back (rsync --inplace -t, touch -r): its ctime moved."""
    import zoo
    from zoo.api import compress_into
    from zoo.errors import InputError
    from zoo.hub.store import Store

    folder = tmp_path / "model"
    folder.mkdir()
    source = write_safetensors(folder / "model.safetensors",
                               {name: ("F32", random_storage("F32", (256, 256), seed)) for seed, name in enumerate("abcd")})
    original = source.read_bytes()
    written = []

    def progress(done):
        if not written:  # after the first chunk: a later tensor's bytes change, the file's size does not
            before = os.stat(source)
            with open(source, "r+b") as file:
                file.seek(len(original) - 8192)
                file.write(bytes(4096))
            if mtime == "put-back":
                os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
            written.append(done)

    store = Store(tmp_path / "zoo")
    with pytest.raises(InputError, match=r"model.safetensors: file changed while being read \(written, or its inode changed"):
        if into == "archive":
            compress(folder, tmp_path / "model.zoo", chunk_bytes=4096, threads=2, progress=progress)
        else:
            compress_into(store, folder, "busy", threads=2, progress=progress)
    assert written and not (tmp_path / "model.zoo").exists()
    if into == "zoo":
        assert store.entries() == [] and list((tmp_path / "zoo" / "objects").rglob("*.zoo")) == []
    source.write_bytes(original)  # the untouched model stores and reads back
    entry = compress_into(store, folder, "clean")
    assert zoo.verify(entry.archive) == []


def _mapping_rss_kib(path) -> int:
    """The resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if not line[0].isupper() or ":" not in line.split()[0]:  # a mapping's first line: its address range
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_a_large_run_named_from_a_mapped_file_leaves_the_resident_set_as_it_is_hashed(tmp_path, monkeypatch):
    # zoo compress --name of one 3 GB tensor held 2.8 GB resident: naming it (BLAKE3 over the
    # mapped file) touched every page, which stayed mapped until the coders reached each chunk
    import mmap
    import os

    import numpy as np

    from zoo.container import format as format_module
    from zoo.container.writer import _releaser

    monkeypatch.setattr(format_module, "DIGEST_BLOCK_RELEASED", 1 << 20)
    data = os.urandom(8 << 20)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    expected = format_module.content_digest(data)
    with open(path, "rb") as stream:
        mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    raw = np.frombuffer(mapped, np.uint8)
    try:
        assert format_module.content_digest(raw, 1) == expected
        assert _mapping_rss_kib(path) >= 7 << 10  # hashed whole: every page resident
        mapped.madvise(mmap.MADV_DONTNEED)
        assert format_module.content_digest(raw, 1, _releaser(mapped, 0)) == expected  # the same digest, block by block
        assert _mapping_rss_kib(path) <= 1 << 10
    finally:
        del raw
        mapped.close()
