"""The native kernel that the package's build compiled (``setup.py``): found, checked,
loaded and registered with XLA, or the reason why not. Nothing here raises: a failure is a
status."""

from __future__ import annotations

import base64
import ctypes
import functools
import hashlib
import importlib.metadata
import os
import re
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

_HERE = Path(__file__).with_name("_native")
SOURCE = _HERE / "sgd_step.cc"
TARGETS = {np.dtype(np.float32): "sgdx_sgd_step_f32", np.dtype(np.float64): "sgdx_sgd_step_f64"}
_SYMBOLS = {
    "SgdxSgdStepF32": TARGETS[np.dtype(np.float32)],
    "SgdxSgdStepF64": TARGETS[np.dtype(np.float64)],
}
_REINSTALL = (
    "install sgdx's wheel, or reinstall it from source with a C++ compiler on PATH "
    "(or named by CXX): pip install --force-reinstall --no-deps --no-cache-dir sgdx"
)
# A source build against the jax installed here (not the newest, in pip's isolated build).
_REBUILD_HERE = (
    "pip install --force-reinstall --no-deps --no-cache-dir --no-build-isolation "
    "--no-binary sgdx sgdx (with setuptools and a C++ compiler)"
)


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


def _installed_library() -> Path | None:
    """The kernel that pip recorded installing, if it did."""
    try:
        files = importlib.metadata.distribution("sgdx").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if Path(str(f)).name.startswith("libsgdx_sgd_step.")]
    return Path(str(found[0].locate())) if found else None


def _library() -> Path:
    found = sorted(_HERE.glob("libsgdx_sgd_step.*"))
    if not found:
        recorded = _installed_library()
        if recorded is not None:
            raise _Unavailable(
                f"the installed native kernel {recorded} is missing (deleted after "
                f"installation); {_REINSTALL}"
            )
        raise _Unavailable(
            f"sgdx was installed without its native kernel (no {_HERE}/libsgdx_sgd_step.*: "
            f"it was built where no C++ compiler worked); {_REINSTALL}"
        )
    return found[0]


def _api(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def framework_ffi_api() -> tuple[int, int] | None:
    """The XLA FFI API version of the running jaxlib, from the headers it ships (the
    version its runtime accepts handlers up to), or ``None`` where they cannot be read."""
    try:
        header = (Path(jax.ffi.include_dir()) / "xla/ffi/api/c_api.h").read_text()
        major, minor = (
            int(re.search(rf"#define XLA_FFI_API_{part}\s+(\d+)", header)[1])  # type: ignore[index]
            for part in ("MAJOR", "MINOR")
        )
    except (OSError, TypeError, AttributeError):
        return None
    return major, minor


def _check_api(kernel: tuple[int, int], library: Path, built_with: str) -> None:
    """Raises unless the running jaxlib accepts handlers of the kernel's FFI API version
    (the same major version, a minor version no newer than its own): registering one it
    does not accept would fail the CPU backend's start, and every JAX computation with it."""
    framework = framework_ffi_api()
    if framework is None:
        raise _Unavailable(
            f"the FFI API version of jax {jax.__version__} could not be read (no "
            "xla/ffi/api/c_api.h under jax.ffi.include_dir()), so the kernel is not "
            f"registered: a handler it did not accept would stop JAX's CPU backend; {_REINSTALL}"
        )
    if kernel[0] != framework[0] or kernel[1] > framework[1]:
        raise _Unavailable(
            f"{library} was built with jax {built_with} for XLA's FFI API "
            f"{kernel[0]}.{kernel[1]}, which this jax {jax.__version__} (FFI API "
            f"{framework[0]}.{framework[1]}) cannot run; upgrade jax and jaxlib to the "
            f"version it was built with (pip install -U 'jax>={built_with}'), or build sgdx "
            f"against this jax: {_REBUILD_HERE}"
        )


def _check_installed(library: Path) -> None:
    """A library that pip installed must match the digest in the installation's RECORD (a
    truncated or damaged file is never loaded). A library built in a source tree has none."""
    try:
        files = importlib.metadata.distribution("sgdx").files or []
    except importlib.metadata.PackageNotFoundError:
        return
    for file in files:
        if file.hash is None or Path(str(file.locate())).resolve() != library.resolve():
            continue
        actual = hashlib.new(file.hash.mode, library.read_bytes()).digest()
        if base64.urlsafe_b64encode(actual).rstrip(b"=").decode() != file.hash.value:
            raise _Unavailable(
                f"{library} does not match its installed digest (damaged); {_REINSTALL}"
            )


def _load() -> str:
    if _disabled():
        raise _Unavailable("disabled by SGDX_DISABLE_NATIVE")
    library = _library()
    _check_installed(library)
    try:
        handle = ctypes.cdll.LoadLibrary(str(library))
        handle.SgdxBuildInfo.restype = ctypes.c_char_p
        handle.SgdxFfiApiVersion.restype = ctypes.c_char_p
        source, built_with = handle.SgdxBuildInfo().decode().split()
        kernel_api = _api(handle.SgdxFfiApiVersion().decode())
    except (OSError, AttributeError, ValueError) as error:
        raise _Unavailable(f"loading {library} failed: {error}; {_REINSTALL}") from None
    if source != hashlib.sha256(SOURCE.read_bytes()).hexdigest():
        raise _Unavailable(
            f"{library} was built from another {SOURCE.name} than {SOURCE} (a stale build); "
            "rebuild it: pip install --no-deps -e ."
        )
    _check_api(kernel_api, library, built_with)
    try:
        for symbol, target in _SYMBOLS.items():
            capsule = jax.ffi.pycapsule(getattr(handle, symbol))  # type: ignore[no-untyped-call]
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except Exception as error:  # XLA's own errors, e.g. an FFI version it does not support
        raise _Unavailable(
            f"registering {library} (built with jax {built_with}) with jax {jax.__version__} "
            f"failed: {error}; {_REINSTALL}"
        ) from None
    return f"loaded {library} (built with jax {built_with})"


@functools.cache
def native_status() -> NativeStatus:
    """Whether sgd's native CPU kernel (``fused``) is available, and the reason.

    The kernel is compiled by sgdx's build (a wheel carries it; a source install builds it
    with ``$CXX``, default ``c++``) for baseline x86-64 with AVX2 and AVX-512 loops chosen on
    the running CPU. It is checked before it is loaded: against its installed digest (a
    damaged file is not loaded) and its source (a stale build in a source tree is not
    loaded). ``SGDX_DISABLE_NATIVE=1`` turns it off. When it is not available, ``sgd`` runs
    the pure-JAX path (the same numbers) and says so in one warning.

    Examples:
      >>> import sgdx
      >>> status = sgdx.native_status()
      >>> status is sgdx.native_status()  # checked, loaded and registered once, at import
      True
    """
    try:
        return NativeStatus(True, _load())
    except _Unavailable as why:
        return NativeStatus(False, str(why))
