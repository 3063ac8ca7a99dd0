"""The scripts in examples/ run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def run(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_resume_from_torch_round_trip_tracks_torch():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    output = run("resume_from_torch.py")
    rows = [line.split() for line in output.splitlines() if line[:6].strip().isdigit()]
    assert [int(r[0]) for r in rows][:3] == [4, 8, 9] and int(rows[-1][0]) == 60
    for row in rows:
        losses = [float(v) for v in row[2:]]
        assert max(losses) - min(losses) < 1e-12, row
    for line in output.splitlines():
        if line.startswith("max |"):
            assert float(line.split(": ")[1]) < 1e-12, line


@pytest.mark.parametrize(
    ("script", "needs", "expected"),
    [
        ("optax_chain.py", "optax", "w ="),
        ("flax_training.py", "flax", "nnx loss"),
        ("equinox_training.py", "equinox", "loss"),
        ("orbax_checkpoint.py", "orbax.checkpoint", "identical to the uninterrupted run: True"),
        ("data_parallel.py", "jax", "buffer shard on each device: (2, 64) of (16, 64)"),
        (
            "many_leaves.py",
            "jax",
            "max |pytree - flat| over all parameters: 0\n"
            "max |pytree - stacked| over all parameters: 0\n",
        ),
    ],
)
def test_ecosystem_examples_run(script, needs, expected):
    pytest.importorskip(needs)
    assert expected in run(script)
