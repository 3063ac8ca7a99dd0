"""`python -m sgdx demo` end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sgdx", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_prints_matching_torch_and_sgdx_runs():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    result = run_cli("demo", "--epochs", "3", "--decay-epoch", "2")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:5].strip().isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [float(row[1]) for row in rows] == [0.1, 0.1, 0.01]
    for row in rows:
        torch_loss, sgdx_loss, max_diff = float(row[2]), float(row[3]), float(row[4])
        assert abs(torch_loss - sgdx_loss) < 1e-12 and max_diff < 1e-12
    assert float(rows[-1][2]) < float(rows[0][2])


def test_cli_rejects_bad_arguments():
    assert "invalid choice" in run_cli("train").stderr
    result = run_cli("demo", "--lr", "-0.5")
    assert result.returncode == 2 and "Invalid learning rate: -0.5" in result.stderr
