"""Python snippets and shell commands in the README and docs/ run as written."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import sgdx
from tests import processes

ROOT = processes.ROOT
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_quick_start_runs_and_learns():
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(snippets(ROOT / "README.md")[0], namespace)
    params = namespace["params"]
    assert float(namespace["loss"](params, namespace["x"], namespace["y"])) < 0.1


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_snippet_runs(path):
    for code in snippets(path):
        with jax.numpy_dtype_promotion("standard"):
            exec(code, {})


def test_docs_coverage_check_fails_for_an_undocumented_name(monkeypatch):
    """The check docs/conf.py runs before every build: each public name on the API page,
    each with a docstring of its own."""
    pytest.importorskip("sphinx")
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    conf = importlib.import_module("conf")
    api = (ROOT / "docs" / "api.rst").read_text()
    assert conf.undocumented(api) == []
    assert conf.undocumented(api.replace("   sgdx.trace\n", "")) == [
        "sgdx.trace (not on the API page)"
    ]
    monkeypatch.setattr(sgdx.sgd, "__doc__", None)
    assert conf.undocumented(api) == ["sgdx.sgd (no docstring)"]


def commands(text):
    """The commands a page shows: each line of its ``sh`` blocks (comments cut) and its
    inline code that starts like one; not usage lines (``[--plot FILE.png]``, ``a|b``)."""
    found = [
        line.split("#")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
    ]
    found += [
        " ".join(c.split())  # an inline command may wrap over lines
        for c in re.findall(r"`((?:python -m sgdx|python benchmarks/|make )[^`]*)`", text)
    ]
    return {c for c in found if c and not re.search(r"[\[\]|]|\.\.\.", c)}


SHOWN = sorted({c for page in PAGES for c in commands(page.read_text())})


def test_the_pages_show_the_commands_users_run():
    assert {"make demo", "make test", "python -m sgdx compare"} <= set(SHOWN)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in SHOWN if c.startswith("python -m sgdx")])
def test_every_sgdx_command_shown_runs(command, tmp_path):
    """Each ``python -m sgdx ...`` on the README and docs pages, run as written in a scratch
    folder (``--plot curves.png`` writes there): every extra it needs is in the test extra."""
    result = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


BENCHMARKS = [c for c in SHOWN if c.startswith("python benchmarks/")]


def benchmark_script(command):
    """The script a ``python benchmarks/...`` command runs, loaded as a module, and its
    arguments."""
    script, *args = shlex.split(command)[1:]
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, args


@pytest.mark.parametrize("command", BENCHMARKS)
def test_every_benchmark_command_shown_parses(command):
    """Each ``python benchmarks/...`` on the pages is accepted by its script's own parser:
    an option or choice the script does not have exits 2."""
    module, args = benchmark_script(command)
    module.parse_args(args)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in BENCHMARKS if "--device gpu" not in c])
def test_every_cpu_benchmark_command_shown_runs(command, tmp_path):
    """Each CPU benchmark command on the pages, run as written at tiny sizes (``--smoke``; a
    real run takes minutes), writes a result for every model and variant it asks for."""
    module, args = benchmark_script(command)
    out = tmp_path / "results.json"
    processes.run([*shlex.split(command)[1:], "--smoke", "--out", str(out)])
    asked = module.parse_args(args)
    results = json.loads(out.read_text())["models"]
    assert [r["model"] for r in results] == asked.models
    for result in results:
        assert set(result["variants"]) == set(asked.variants or module.VARIANTS)
        assert all(v["median_ms"] > 0 for v in result["variants"].values())


@pytest.mark.parametrize("command", [c for c in SHOWN if c.startswith("make ")])
def test_every_make_target_shown_exists(command):
    """``make demo``, ``make test``, ``make wheel``: each target is in the Makefile (a dry
    run; running them is what CI and the release do)."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    result = subprocess.run(
        ["make", "-n", *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
