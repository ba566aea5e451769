"""Builds zoo._native from native/; metadata lives in pyproject.toml.

Each instruction-set file is compiled with only its own flags (never a global -mavx2), so the
extension runs on any x86-64 and picks its kernels at run time (native/dispatch.c).
"""

import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

X86 = platform.machine().lower() in ("x86_64", "amd64")
SOURCES = ["native/module.c", "native/dispatch.c", "native/coder.c", "native/kernels_scalar.c", "native/bitpack.c"]
ISA_FLAGS = {
    "native/kernels_avx2.c": ["-mavx2", "-mbmi2", "-mf16c", "-mfma"],
    "native/kernels_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vbmi", "-mbmi2", "-mf16c",
                                "-mpclmul", "-mvpclmulqdq"],
    "native/crc32_pclmul.c": ["-mpclmul", "-msse4.1"],
}
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
            depends=["native/kernels.h", "native/coder.h", "native/dispatch.h", "native/bitpack.h"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
        )
    ],
    cmdclass={"build_ext": BuildWithIsaFlags},
)
