"""Peak memory and time of zoo under hostile inputs: what each of the inputs the hardening issue found
costs the process that meets it, now. Each input is forged in a scratch folder, then met by the CLI
in a child process (`python -m zoo ...`); its peak resident set comes from wait4's rusage. The anchor
is the same CLI's `zoo --help` peak in the same run (the floor of a zoo process with numpy loaded).

Usage: python benchmarks/bench_hostile.py    (about a minute; ~1 GB of scratch disk for the 2 GiB bomb's zip)
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402
from zoo.kernels import cpu_model  # noqa: E402

from tests.container.forge import deeply_nested, every_record_on_the_first_chunk, forge, one_huge_chunk  # noqa: E402


def measure(*args: object, cwd: Path) -> tuple[int, float, float, str]:
    """(exit code, peak MiB, seconds, last stderr line) of `python -m zoo ARGS`. A fresh python starts
    it and reads its own rusage from wait4, so each peak is that one process's."""
    probe = (
        "import os, subprocess, sys, time, resource\n"
        "t = time.perf_counter()\n"
        "p = subprocess.Popen([sys.executable, '-m', 'zoo', *sys.argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
        "err = p.stderr.read()\n"
        "_, status, usage = os.wait4(p.pid, 0)\n"
        "line = (err.decode(errors='replace').strip().splitlines() or [''])[-1]\n"
        "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - t, line, sep='\\t')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900, check=True)
    code, peak, seconds, line = done.stdout.rstrip("\n").split("\t", 3)
    return int(code), float(peak), float(seconds), line


def main() -> None:
    print(f"# bench_hostile: {cpu_model()}, {os.cpu_count()} CPUs, zoo {zoo.__version__}")
    with tempfile.TemporaryDirectory(prefix="zoo-hostile-") as scratch:
        work = Path(scratch)
        os.environ["ZOO_HOME"] = str(work / "home")
        values = np.arange(1 << 16, dtype=np.float32)
        header = json.dumps({"w": {"dtype": "F32", "shape": [values.size], "data_offsets": [0, values.nbytes]}}).encode()
        (work / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + values.tobytes())
        zoo.compress(work / "w.safetensors", work / "w.zoo", chunk_bytes=1024)

        (work / "deep.zoo").write_bytes(deeply_nested(5000))
        many = b"{" + b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(1_650_001)) + b"}"
        (work / "many.safetensors").write_bytes(struct.pack("<Q", len(many)) + many)
        wide = json.dumps({"w": {"dtype": "F32", "shape": [1] * 100_001, "data_offsets": [0, 4]}}).encode()
        (work / "wide.safetensors").write_bytes(struct.pack("<Q", len(wide)) + wide + b"\0" * 4)
        with zipfile.ZipFile(work / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bomb:
            with bomb.open("archive/data.pkl", "w", force_zip64=True) as member:
                block = b"\x00" * (16 << 20)
                for _ in range(128):  # 2 GiB inflated
                    member.write(block)

        cases = [
            ("zoo --help (the anchor)", ("--help",)),
            ("66 KB-class .zoo declaring one 2 GiB chunk: verify", ("verify", forge(work / "w.zoo", one_huge_chunk))),
            ("512-class index records on one chunk: decompress", ("decompress", forge(work / "w.zoo", change_payload=every_record_on_the_first_chunk), "-o", work / "out")),
            ("archive header nested 5000 deep: info", ("info", work / "deep.zoo")),
            (f"{(work / 'many.safetensors').stat().st_size >> 20} MB safetensors header, 1,650,001 zero-size tensors: compress",
             ("compress", work / "many.safetensors", "-o", work / "many.zoo")),
            ("safetensors shape of 100,001 dimensions: compress", ("compress", work / "wide.safetensors", "-o", work / "wide.zoo")),
            (f"{(work / 'bomb.pt').stat().st_size >> 20} MB .pt whose data.pkl inflates to 2 GiB: compress",
             ("compress", work / "bomb.pt", "-o", work / "bomb.zoo")),
        ]
        print(f"{'input':78} {'exit':>4} {'peak MiB':>9} {'seconds':>8}  last stderr line")
        for label, args in cases:
            code, peak, seconds, line = measure(*args, cwd=work)
            print(f"{label:78} {code:>4} {peak:>9.0f} {seconds:>8.2f}  {line[:110]}")


if __name__ == "__main__":
    main()
