"""Builds zoo._native from native/; metadata lives in pyproject.toml.

Each instruction-set file is compiled with only its own flags (native/isa_flags.mk, never a global
-mavx2), so the extension runs on any x86-64 and picks its kernels at run time (native/dispatch.c).
"""

import platform
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def read_isa_flags(path: str = "native/isa_flags.mk") -> dict[str, list[str]]:
    """{"native/file.c": flags} from the table that tests/fuzz/Makefile includes as Make."""
    table = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, equals, flags = (part.strip() for part in line.partition("="))
        if not equals or not re.fullmatch(r"[\w.]+\.c", name) or flags.endswith("\\"):
            raise SystemExit(f"{path}:{number}: expected `file.c = flags`, got {line!r}")
        table[f"native/{name}"] = flags.split()
    return table


X86 = platform.machine().lower() in ("x86_64", "amd64")
SOURCES = ["native/module.c", "native/dispatch.c", "native/coder.c", "native/kernels_scalar.c", "native/bitpack.c",
           "native/mapping.c"]
ISA_FLAGS = read_isa_flags()
if X86:
    SOURCES += list(ISA_FLAGS)


class BuildWithIsaFlags(build_ext):
    """Adds each ISA file's flags to that file's compile command only."""

    def build_extensions(self) -> None:
        compile_one = self.compiler._compile

        def compile_with_flags(obj, src, ext, cc_args, extra_postargs, pp_opts):  # noqa: ANN001 - distutils' signature
            extra = list(extra_postargs) + next((flags for name, flags in ISA_FLAGS.items() if src.replace("\\", "/").endswith(name)), [])
            compile_one(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = compile_with_flags
        super().build_extensions()


if sys.byteorder != "little":
    raise SystemExit("zoo's native coder assumes a little-endian CPU")

setup(
    ext_modules=[
        Extension(
            "zoo._native",
            sources=SOURCES,
            depends=["native/kernels.h", "native/coder.h", "native/dispatch.h", "native/bitpack.h", "native/mapping.h", "native/product.h",
                     "native/isa_flags.mk"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
        )
    ],
    cmdclass={"build_ext": BuildWithIsaFlags},
)
