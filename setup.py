"""sgdx's build: the package and its native CPU kernel, ``sgdx/_native/sgd_step.cc``.

The kernel is a plain shared library (an XLA FFI target, no Python module) that
``sgdx._kernel`` loads with ctypes. It is compiled for baseline x86-64, with its loops also
compiled for AVX2 and AVX-512 and chosen on the running CPU, so one binary runs on any
x86-64. It is optional: without a working C++ compiler sgdx installs without it (saying so
in one line) and runs the pure-JAX path. The library records its source's digest and the
version of jax whose headers it was built with (``SgdxBuildInfo``), which the loader checks.
The release wheel is built by ``tools/build_wheel.py``.
"""

import hashlib
import platform
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

KERNEL = "sgdx._native.libsgdx_sgd_step"
SOURCE = "sgdx/_native/sgd_step.cc"


class BuildKernel(build_ext):
    """build_ext for a shared library that is not a Python module: its own file name, and
    the FFI headers of the jax it builds against."""

    def get_ext_filename(self, fullname: str) -> str:
        *package, name = fullname.split(".")
        return str(Path(*package, name + (sysconfig.get_config_var("SHLIB_SUFFIX") or ".dll")))

    def build_extension(self, ext: Extension) -> None:
        import jax

        ext.extra_compile_args += ["-isystem", jax.ffi.include_dir()]  # its warnings are not ours
        source = hashlib.sha256(Path(SOURCE).read_bytes()).hexdigest()
        ext.define_macros.append(("SGDX_BUILD_INFO", f'"{source} {jax.__version__}"'))
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as error:
            print(
                f"sgdx: the native kernel was not built ({error}): sgdx installs without it and "
                "runs the pure-JAX path (the same numbers, slower). To get it, install a C++ "
                "compiler (or name one with CXX) and reinstall: pip install --force-reinstall "
                "--no-deps --no-cache-dir sgdx",
                file=sys.stderr,
            )


setup(
    ext_modules=[
        Extension(
            KERNEL,
            [SOURCE],
            language="c++",
            extra_compile_args=[
                *["-std=c++17", "-O3", "-g0", "-ffp-contract=off"],
                *["-fvisibility=hidden", "-fvisibility-inlines-hidden"],  # export only Sgdx*
            ],
            extra_link_args=["-Wl,-z,defs"] if platform.system() == "Linux" else [],
        )
    ],
    cmdclass={"build_ext": BuildKernel},
    # the library uses no Python API: one wheel per platform for every CPython from 3.10
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
