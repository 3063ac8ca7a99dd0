"""The native kernel as users get it: built by the package's build, tried in a process of
its own per environment, which must survive, report why the kernel is or is not available,
and step to the reference path's numbers either way.

The release wheel is built once from this tree (``tools/build_wheel.py``: manylinux, the
kernel built with the oldest declared jax's headers) and installed with ``pip --target`` or
into fresh venvs with each end of the declared jax range and its middle; each test runs a
fresh interpreter with that installation first on ``sys.path``. Source installs are built
with ``CXX`` a compiler wrapper with flags (as ``ccache g++`` is), or with none.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which("g++") or shutil.which("c++")
if COMPILER is None or not (ROOT / "setup.py").exists():
    pytest.skip("no C++ compiler or no source tree to build sgdx from", allow_module_level=True)
RELEASE_TOOLS = ["ziglang", "auditwheel"]  # the release extra, which builds the release wheel
(DECLARED_JAX,) = [r for r in importlib.metadata.requires("sgdx") or [] if r.startswith("jax")]
LOWEST_JAX = re.search(r">=([\w.]+)", DECLARED_JAX)[1]  # type: ignore[index]

SCRIPT = textwrap.dedent(
    """
    import warnings
    import jax, jax.numpy as jnp, numpy as np
    import sgdx

    status = sgdx.native_status()
    print("file", sgdx.__file__)
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
    compiled = jax.jit(lambda *a: sgdx.step(opt, *a)).lower(params, grads, opt.init(params))
    print("kernel", "sgdx_sgd_step_f32" in compiled.as_text())
    try:  # fused=True: the kernel, or an error that gives the reason
        sgdx.sgd(0.1, momentum=0.9, fused=True)
        print("fused_true", "ok")
    except RuntimeError as error:
        print("fused_true", "raises" if status.reason in str(error) else repr(error))
    """
)
# what a package needs to build: the rest of the tree (tests, docs) is not part of it
PACKAGE = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "sgdx", "tools"]
NO_COMPILER = "/nonexistent/g++"


def copy_tree(to: Path) -> Path:
    to.mkdir()
    for name in PACKAGE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, to / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy(source, to / name)
    return to


def pip(*args: str, env: dict[str, str] | None = None, python: str = sys.executable) -> str:
    result = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def install(source: Path, target: Path, env: dict[str, str] | None = None) -> Path:
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target),
        str(source), env=env)  # fmt: skip
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """sgdx's release wheel, built from a copy of this tree as ``make wheel`` builds it."""
    missing = [tool for tool in RELEASE_TOOLS if importlib.util.find_spec(tool) is None]
    if missing:
        pytest.skip(f"the release build needs {missing}: pip install -e '.[release]'")
    tmp = tmp_path_factory.mktemp("wheel")
    tree = copy_tree(tmp / "tree")
    result = subprocess.run(
        [sys.executable, str(tree / "tools" / "build_wheel.py"), str(tmp / "dist")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return Path(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def source_built(tmp_path_factory) -> Path:
    """sgdx installed from source with ``CXX`` a compiler wrapper with flags."""
    tmp = tmp_path_factory.mktemp("source")
    wrapper = tmp / "ccache-like"
    wrapper.write_text(f'#!/bin/sh\nexec {COMPILER} "$@"\n')
    wrapper.chmod(0o755)
    return install(copy_tree(tmp / "tree"), tmp / "site", env={"CXX": f"{wrapper} -O2"})


@pytest.fixture
def installed(wheel, tmp_path) -> Path:
    """The wheel installed into a folder of its own."""
    return install(wheel, tmp_path / "site")


def environment(site: Path | None, env_changes=None, python=sys.executable) -> dict:
    """This environment with ``site`` first on the path and no compiler on PATH."""
    env = {**os.environ, "PATH": str(Path(python).parent), "CXX": NO_COMPILER}
    env.update({"PYTHONPATH": str(site)} if site else {})
    return {k: v for k, v in {**env, **(env_changes or {})}.items() if v is not None}


def report(returncode: int, stdout: str, stderr: str, site: Path | None) -> dict:
    """SCRIPT's lines, from a process that must have succeeded with ``site``'s sgdx."""
    assert returncode == 0, stderr[-3000:]
    out = dict(line.split(" ", 1) for line in stdout.splitlines())
    if site:
        assert out["file"].startswith(str(site)), out
    return out


def run(site: Path | None, env_changes=None, python=sys.executable, timeout=300, prefix=""):
    """SCRIPT (after ``prefix``) in a fresh process, in :func:`environment`."""
    result = subprocess.run(
        [python, "-c", prefix + SCRIPT], capture_output=True, text=True, timeout=timeout,
        env=environment(site, env_changes, python),
        cwd=Path(python).parent,  # not this tree, whose sgdx would come first
    )  # fmt: skip
    return report(result.returncode, result.stdout, result.stderr, site)


def assert_reference_numbers(out, available):
    assert out["available"] == str(available), out
    assert out["equal"] == "True"
    assert out["kernel"] == str(available)
    assert out["fused_true"] == ("ok" if available else "raises"), out
    assert out["warnings"] == ("0" if available else "1"), out


def test_release_wheel_is_manylinux_for_any_cpython(wheel):
    """One wheel per platform (the library uses no Python API) that a package index takes:
    auditwheel finds no symbol newer than glibc 2.17 and no library outside the manylinux
    policy (the C++ runtime is linked in), and the kernel was built with the oldest declared
    jax's FFI headers, so that it runs with every declared jax."""
    assert re.fullmatch(r"sgdx-[\w.]+-cp310-abi3-manylinux2014_x86_64\.manylinux_2_17_x86_64\.whl",
                        wheel.name), wheel.name  # fmt: skip
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert 'consistent with the following platform tag: "manylinux_2_17_x86_64"' in " ".join(
        shown.split()
    ), shown
    with zipfile.ZipFile(wheel) as archive:
        (library,) = [n for n in archive.namelist() if "libsgdx_sgd_step" in n]
        assert f" {LOWEST_JAX}\0".encode() in archive.read(library)


@pytest.fixture
def instructions(source_built):
    """The source-built library's functions, disassembled."""
    if sys.platform != "linux" or os.uname().machine != "x86_64" or not shutil.which("objdump"):
        pytest.skip("the instruction check reads an x86-64 ELF with objdump")
    (library,) = source_built.glob("sgdx/_native/libsgdx_sgd_step.*")
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", str(library)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return re.split(r"\n(?=[0-9a-f]+ <)", listing)


def test_only_the_loops_chosen_by_cpu_use_wide_registers(instructions):
    """Baseline x86-64 code outside the loops that the library picks by CPU (which would
    otherwise die of SIGILL on a CPU without AVX), and a loop of each instruction set for
    each dtype."""
    loops = {isa: [f for f in instructions if re.match(rf"[0-9a-f]+ <.*::Loop{isa}<", f)]
             for isa in ("Avx2", "Avx512")}  # fmt: skip
    for isa, register in [("Avx2", "%ymm"), ("Avx512", "%zmm")]:
        for dtype in ("float", "double"):
            mine = [f for f in loops[isa] if f"Loop{isa}<{dtype}," in f.split("\n", 1)[0]]
            assert mine and any(register in f for f in mine), (isa, dtype)
    baseline = [f for f in instructions if not any(f in chosen for chosen in loops.values())]
    assert not [f.split("\n", 1)[0] for f in baseline if re.search(r"%[yz]mm", f)]


def test_source_install_with_a_compiler_wrapper_builds_the_kernel(source_built):
    out = run(source_built)
    assert_reference_numbers(out, True)
    assert out["reason"].startswith(f"loaded {source_built}")


def test_installed_wheel_runs_natively_without_a_compiler(installed):
    out = run(installed, {"HOME": "/proc/sgdx-read-only-home", "XDG_CACHE_HOME": None})
    assert_reference_numbers(out, True)
    assert out["reason"].startswith(f"loaded {installed}")


# a computation before sgdx is imported: the backend has started when the kernel registers
COMPUTE_FIRST = "import jax.numpy as jnp\nassert float(jnp.ones(3).sum()) == 3.0\n"


@pytest.mark.slow
@pytest.mark.parametrize("version", [LOWEST_JAX, "0.8.0", "newest"])
def test_fresh_venv_from_the_wheel_with_each_declared_jax(wheel, tmp_path, version):
    """A new user's install: a fresh venv, the wheel and its dependencies from the package
    index with the oldest declared jax, one in the middle or the newest, no compiler on PATH,
    a read-only home. The kernel runs on each, whether sgdx registers it before JAX's
    backend starts or after a first computation, and every doctest of sgdx's passes."""
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    pins = [] if version == "newest" else [f"jax=={version}", f"jaxlib=={version}"]
    pip("install", "--quiet", "-c", str(ROOT / "constraints.txt"), str(wheel), *pins,
        python=python)  # fmt: skip
    installed = subprocess.run(
        [python, "-c", "import jax; print(jax.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    assert installed == (jax.__version__ if version == "newest" else version)
    for prefix in ("", COMPUTE_FIRST):
        out = run(None, {"HOME": "/proc/sgdx-read-only-home"}, python=python, prefix=prefix)
        assert_reference_numbers(out, True)
        assert out["file"].startswith(str(tmp_path / "venv"))
    # every public name's doctest, with x64 on as the suite runs them
    pip("install", "--quiet", "pytest", python=python)
    (package,) = (tmp_path / "venv").glob("lib/python*/site-packages/sgdx")
    doctests = subprocess.run(
        [python, "-m", "pytest", "--doctest-modules", "-q", "-p", "no:cacheprovider", "sgdx"],
        cwd=package.parent, env={**os.environ, "JAX_ENABLE_X64": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert doctests.returncode == 0, doctests.stdout[-3000:]


@pytest.mark.parametrize("cxx", [NO_COMPILER, "no-such-compiler"])
def test_source_install_without_a_compiler_installs_and_falls_back(tmp_path, cxx):
    """The build says in one line what is lost and how to get it (pip shows a build's
    output with -v), and the installed sgdx gives the reason again."""
    tree, site = copy_tree(tmp_path / "tree"), tmp_path / "site"
    output = pip("install", "-v", "--no-deps", "--no-build-isolation", "--target", str(site),
                 str(tree), env={"CXX": cxx, "PATH": str(Path(sys.executable).parent)})  # fmt: skip
    (line,) = [line for line in output.splitlines() if "sgdx: the native kernel" in line]
    assert "not built" in line and "install a C++ compiler" in line and "--no-cache-dir" in line
    assert not list(site.glob("sgdx/_native/libsgdx_sgd_step.*"))
    out = run(site)
    assert_reference_numbers(out, False)
    assert "installed without its native kernel" in out["reason"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "overwritten"])
def test_damaged_library_is_not_loaded(installed, damage):
    (library,) = installed.glob("sgdx/_native/libsgdx_sgd_step.*")
    data = library.read_bytes()
    replacement = {"truncated": data[: len(data) // 2], "empty": b"", "overwritten": data[::-1]}
    library.write_bytes(replacement[damage])
    out = run(installed)
    assert_reference_numbers(out, False)
    assert "does not match its installed digest" in out["reason"]


def test_stale_build_is_not_loaded(installed):
    source = installed / "sgdx" / "_native" / "sgd_step.cc"
    source.write_text(source.read_text() + "// edited after the build\n")
    out = run(installed)
    assert_reference_numbers(out, False)
    assert "stale build" in out["reason"]


def test_four_processes_at_once(installed):
    env = environment(installed, {"HOME": "/proc/sgdx-read-only-home"})
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=installed,
        )
        for _ in range(4)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert_reference_numbers(report(process.returncode, stdout, stderr, installed), True)


@pytest.mark.parametrize(("value", "available"), [("1", False), ("0", True), ("", True)])
def test_disable_switch(installed, value, available):
    out = run(installed, {"SGDX_DISABLE_NATIVE": value})
    assert_reference_numbers(out, available)
    assert value != "1" or out["reason"] == "disabled by SGDX_DISABLE_NATIVE"


EXPORT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax import export
    import sgdx

    path = sys.argv[1]
    tx = sgdx.sgd(0.1, momentum=0.9, nesterov=True)
    params = {"w": jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)}
    grads = {"w": jnp.cos(params["w"])}
    state = tx.init(params)
    if sys.argv[2] == "export":
        exported = export.export(
            jax.jit(lambda *a: sgdx.step(tx, *a)),
            disabled_checks=[export.DisabledSafetyCheck.custom_call("sgdx_sgd_step_f32")],
        )(params, grads, state)
        assert "sgdx_sgd_step_f32" in exported.mlir_module()
        open(path, "wb").write(exported.serialize())
    else:  # a fresh process that only imports jax and sgdx, then runs what was exported
        new_params, _ = export.deserialize(bytearray(open(path, "rb").read())).call(
            params, grads, state
        )
        updates, _ = tx.update(grads, state, params)
        expected = sgdx.apply_updates(params, updates)
        np.testing.assert_allclose(new_params["w"], expected["w"], rtol=1e-6)
        print("ran")
    """
)


def test_an_exported_step_runs_in_a_fresh_process_that_imports_sgdx(installed, tmp_path):
    """The kernel's FFI targets are registered when sgdx is imported, not when a step first
    asks for them: the docs' export recipe, deserialized where nothing else ran."""
    path = str(tmp_path / "step.bin")
    for mode in ("export", "call"):
        result = subprocess.run(
            [sys.executable, "-c", EXPORT, path, mode],
            env=environment(installed),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ran"]


def test_a_kernel_for_a_newer_ffi_api_is_refused_before_registration(installed):
    """A kernel built against a newer XLA FFI API than the running jaxlib's would fail the
    CPU backend's start at registration (jax 0.6-0.8 with a wheel built on 0.10): it is
    refused first, with both versions and the fix, and JAX computes on."""
    script = textwrap.dedent(
        """
        import pathlib, tempfile
        import jax, jax.numpy as jnp
        # the running jaxlib's headers say FFI API 0.1, as jax 0.6.2's do
        include = tempfile.mkdtemp()
        header = pathlib.Path(include, "xla/ffi/api/c_api.h")
        header.parent.mkdir(parents=True)
        header.write_text("#define XLA_FFI_API_MAJOR 0\\n#define XLA_FFI_API_MINOR 1\\n")
        jax.ffi.include_dir = lambda: include
        import sgdx
        status = sgdx.native_status()
        print(status.available)
        print(status.reason)
        print(float(jnp.sum(jnp.ones(3))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=environment(installed),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    available, reason, computed = result.stdout.strip().splitlines()
    assert available == "False" and computed == "3.0"
    assert re.search(r"FFI API 0\.\d+, which this jax .* \(FFI API 0\.1\) cannot run", reason)
    assert "--no-build-isolation" in reason


@pytest.mark.slow
def test_the_sdist_carries_what_its_tests_need(tmp_path):
    """The sdist holds every tracked file but CI's own, so that its tests (examples,
    benchmarks' smoke runs, the docs check included) run from it unpacked: each test module
    collects there."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode:
        pytest.skip("not a git checkout: nothing to compare the sdist with")
    built = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    with tarfile.open(tmp_path / built.stdout.split()[-1]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        sdist.extractall(tmp_path, filter="data")
    missing = set(tracked.stdout.split()) - {".ci/run", ".gitignore"} - names
    assert not missing, sorted(missing)
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path / top, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert collected.returncode == 0, collected.stdout[-3000:]
