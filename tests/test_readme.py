"""The README's Python snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

import jax

README = Path(__file__).parents[1] / "README.md"


def test_quick_start_runs_and_learns():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(blocks[0], namespace)
    params = namespace["params"]
    assert float(namespace["loss"](params, namespace["x"], namespace["y"])) < 0.1
