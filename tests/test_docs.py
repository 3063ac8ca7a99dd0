"""Python snippets in the README and docs/ run as written."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import jax
import pytest

import sgdx

ROOT = Path(__file__).parents[1]


def snippets(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_quick_start_runs_and_learns():
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(snippets(ROOT / "README.md")[0], namespace)
    params = namespace["params"]
    assert float(namespace["loss"](params, namespace["x"], namespace["y"])) < 0.1


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
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
