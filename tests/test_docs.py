"""Python snippets in the README and docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import pytest

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
