"""The native kernel: compiled on first use, cached, validated, loaded and registered with
XLA, or the reason why not. Nothing here raises: a failure is a status."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

SOURCE = Path(__file__).with_name("_native") / "sgd_step.cc"
TARGETS = {np.dtype(np.float32): "sgdx_sgd_step_f32", np.dtype(np.float64): "sgdx_sgd_step_f64"}
_SYMBOLS = {
    "SgdxSgdStepF32": TARGETS[np.dtype(np.float32)],
    "SgdxSgdStepF64": TARGETS[np.dtype(np.float64)],
}
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC", "-std=c++17", "-w"]
_NO_UNDEFINED = ["-Wl,-z,defs"] if platform.system() == "Linux" else []  # e.g. a C driver


class NativeStatus(NamedTuple):
    """Whether sgd's native CPU kernel (``fused``) can run, and why (not)."""

    available: bool
    reason: str
    """Where the kernel was loaded from, or what stopped it (and how to fix that)."""


class _Unavailable(Exception):
    pass


def _disabled() -> bool:
    value = os.environ.get("SGDX_DISABLE_NATIVE", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _compiler() -> tuple[list[str], str]:
    """The compiler command (``$CXX``, which may hold a wrapper and flags, else ``c++``) and
    its ``--version`` output."""
    given = os.environ.get("CXX", "").strip()
    command = shlex.split(given) if given else [shutil.which("c++") or shutil.which("g++") or ""]
    if not command[0] or shutil.which(command[0]) is None:
        where = f"CXX={given!r}" if given else "c++ or g++ on PATH"
        raise _Unavailable(f"no C++ compiler: {where} is not found. Install one or set CXX.")
    try:
        version = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(
            f"the C++ compiler {' '.join(command)!r} does not run: {error}"
        ) from None
    return command, version


def _cpu_features() -> str:
    """What ``-march=native`` builds for: the CPU's feature flags (Linux), else its name."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("SGDX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sgdx"
    )
    return Path(root)


def _writable_dir() -> tuple[Path, str]:
    """The cache directory, or a private temporary one where it cannot be written."""
    directory = _cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-")  # noqa: SIM115
        probe.close()
        return directory, ""
    except OSError as error:
        private = Path(tempfile.mkdtemp(prefix="sgdx-native-"))
        return private, f" (cache {directory} not writable: {error.strerror}; built in {private})"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: concurrent first uses build once, the others wait."""
    try:
        import fcntl
    except ImportError:  # no flock: each process builds into its own temporary file
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(library: Path) -> bool:
    """A cached library is used only if it is whole: its digest was written after it."""
    sidecar = library.with_suffix(".sha256")
    try:
        return library.stat().st_size > 0 and sidecar.read_text().strip() == _digest(library)
    except OSError:
        return False


def _build(command: list[str], library: Path) -> None:
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        include = f"-I{jax.ffi.include_dir()}"
        result = subprocess.run(
            [
                *command,
                *_FLAGS,
                include,
                str(SOURCE),
                "-o",
                str(built),
                "-lpthread",
                *_NO_UNDEFINED,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise _Unavailable(
                f"compiling {SOURCE.name} with {' '.join(command)!r} failed: "
                f"{result.stderr.strip()[-400:]}"
            )
        digest = _digest(built)
        os.replace(built, library)  # atomic: a reader sees the old file or the whole new one
        sidecar = library.with_suffix(".sha256")
        sidecar.with_suffix(".tmp").write_text(digest)
        os.replace(sidecar.with_suffix(".tmp"), sidecar)


def _key(command: list[str], version: str, cpu_features: str) -> str:
    """The cache key: a library is loaded only where all of these are the same."""
    flags = " ".join(_FLAGS + _NO_UNDEFINED)
    parts = (jax.__version__, platform.machine(), " ".join(command), version, flags, cpu_features)
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in parts:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:20]


def _load() -> str:
    if _disabled():
        raise _Unavailable("disabled by SGDX_DISABLE_NATIVE")
    command, version = _compiler()
    key = _key(command, version, _cpu_features())
    directory, note = _writable_dir()
    library = directory / f"sgd_step-{key}.so"
    how = "loaded from the cache"
    with _locked(directory / f"sgd_step-{key}.lock"):
        if not _valid(library):  # absent, truncated, empty, or from an interrupted build
            _build(command, library)
            how = f"built with {' '.join(command)}"
    try:
        handle = ctypes.cdll.LoadLibrary(str(library))
        for symbol, target in _SYMBOLS.items():
            capsule = jax.ffi.pycapsule(getattr(handle, symbol))  # type: ignore[no-untyped-call]
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except (OSError, AttributeError) as error:
        raise _Unavailable(f"loading {library} failed: {error}") from None
    return f"{how}: {library}{note}"


@functools.cache
def native_status() -> NativeStatus:
    """Whether sgd's native CPU kernel (``fused``) is available, and the reason.

    The kernel is compiled on first use with ``$CXX`` (a compiler, or a wrapper with flags;
    default ``c++``) for this CPU, and cached in ``$SGDX_CACHE_DIR`` (default
    ``~/.cache/sgdx``) under a key of the source, jax's version, the compiler and its
    version, the flags and the CPU's features. A cached library is loaded only if its
    digest checks (a truncated or empty file is rebuilt); concurrent first uses build once,
    under a lock; an unwritable cache builds in a private temporary directory.
    ``SGDX_DISABLE_NATIVE=1`` turns the kernel off. When it is not available, ``sgd``
    runs the pure-JAX path (same numbers) and says so in one warning.

    Examples:
      >>> import sgdx
      >>> status = sgdx.native_status()
      >>> status.available in (True, False) and isinstance(status.reason, str)
      True
    """
    try:
        return NativeStatus(True, _load())
    except _Unavailable as why:
        return NativeStatus(False, str(why))
