"""The native kernel's build, tried as a new user's machine would try it: each environment
in a process of its own, which must survive, report why the kernel is or is not available,
and step to the reference path's numbers either way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler to build the kernel with", allow_module_level=True)

SCRIPT = textwrap.dedent(
    """
    import warnings
    import jax, jax.numpy as jnp, numpy as np
    import sgdx

    status = sgdx.native_status()
    print("available", status.available)
    print("reason", status.reason)
    opt = sgdx.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    params = {"w": jnp.linspace(-1.0, 1.0, 50, dtype=jnp.float32)}
    grads = {"w": jnp.cos(params["w"])}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = jax.jit(sgdx.step, static_argnums=0)
        fused, _ = step(opt, params, grads, opt.init(params))
        step(opt, params, {"w": grads["w"] * 2}, opt.init(params))  # no second warning
    print("warnings", len([w for w in caught if "native kernel" in str(w.message)]))
    updates, _ = opt.update(grads, opt.init(params), params)
    reference = sgdx.apply_updates(params, updates)
    print("equal", bool(np.allclose(fused["w"], reference["w"], rtol=1e-6, atol=0)))
    jaxpr = jax.make_jaxpr(lambda *a: sgdx.step(opt, *a))(params, grads, opt.init(params))
    print("kernel", "sgdx_sgd_step" in str(jaxpr))
    """
)


def run(env_changes, cache, timeout=300):
    env = {**os.environ, "SGDX_CACHE_DIR": str(cache), **env_changes}
    env = {k: v for k, v in env.items() if v is not None}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def assert_reference_numbers(out, available):
    assert out["available"] == str(available), out
    assert out["equal"] == "True"
    assert out["kernel"] == str(available)
    assert out["warnings"] == ("0" if available else "1"), out


def test_default_compiler_builds_once_and_loads_from_the_cache(tmp_path):
    first = run({}, tmp_path)
    assert_reference_numbers(first, True)
    assert first["reason"].startswith("built with")
    second = run({}, tmp_path)
    assert_reference_numbers(second, True)
    assert second["reason"].startswith("loaded from the cache")


@pytest.mark.parametrize("cxx", ["/nonexistent/g++", "no-such-compiler"])
def test_missing_compiler(tmp_path, cxx):
    out = run({"CXX": cxx}, tmp_path)
    assert_reference_numbers(out, False)
    assert "no C++ compiler" in out["reason"] and cxx in out["reason"]


def test_compiler_wrapper_with_flags(tmp_path):
    compiler = shutil.which("g++") or shutil.which("c++")
    wrapper = tmp_path / "ccache-like"
    wrapper.write_text(f'#!/bin/sh\nexec {compiler} "$@"\n')
    wrapper.chmod(0o755)
    for cxx in (f"{compiler} -O2", f"{wrapper} -O2"):
        out = run({"CXX": cxx}, tmp_path / cxx.replace("/", "_").replace(" ", "_"))
        assert_reference_numbers(out, True)


def test_c_driver_fails_cleanly_and_caches_nothing_broken(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    out = run({"CXX": "gcc"}, tmp_path)
    assert_reference_numbers(out, False)
    assert "failed" in out["reason"]
    assert not list(tmp_path.glob("*.so"))  # nothing broken left behind
    assert_reference_numbers(run({"CXX": None}, tmp_path), True)  # CXX unset: it works


def test_read_only_cache_and_home():
    out = run({"HOME": "/proc/sgdx-home", "XDG_CACHE_HOME": None}, "/proc/sgdx-cache")
    assert_reference_numbers(out, True)
    assert "not writable" in out["reason"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "no digest"])
def test_damaged_cached_library_is_rebuilt(tmp_path, damage):
    assert_reference_numbers(run({}, tmp_path), True)
    (library,) = tmp_path.glob("*.so")
    if damage == "truncated":
        library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    elif damage == "empty":
        library.write_bytes(b"")
    else:
        library.with_suffix(".sha256").unlink()
    out = run({}, tmp_path)
    assert_reference_numbers(out, True)
    assert out["reason"].startswith("built with")


def test_four_concurrent_first_uses_build_once(tmp_path):
    env = {**os.environ, "SGDX_CACHE_DIR": str(tmp_path)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    outs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        outs.append(dict(line.split(" ", 1) for line in stdout.splitlines()))
    for out in outs:
        assert_reference_numbers(out, True)
    assert sum(out["reason"].startswith("built with") for out in outs) == 1


@pytest.mark.parametrize(("value", "available"), [("1", False), ("0", True), ("", True)])
def test_disable_switch(tmp_path, value, available):
    out = run({"SGDX_DISABLE_NATIVE": value}, tmp_path)
    assert_reference_numbers(out, available)


def test_cache_key_separates_compilers_and_cpus():
    """A build for one compiler, compiler version or CPU is never loaded for another
    (an AVX-512 build on a machine without AVX-512 would die of SIGILL)."""
    from sgdx import _build

    key = _build._key(["g++"], "g++ 12.2", "avx2 fma sse4_2")
    assert key == _build._key(["g++"], "g++ 12.2", "avx2 fma sse4_2")
    assert key != _build._key(["g++"], "g++ 12.2", "avx2 avx512f fma sse4_2")
    assert key != _build._key(["g++"], "g++ 13.1", "avx2 fma sse4_2")
    assert key != _build._key(["ccache", "g++"], "g++ 12.2", "avx2 fma sse4_2")
