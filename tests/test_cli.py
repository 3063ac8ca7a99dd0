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
    pytest.importorskip("sklearn")  # without the demo extra, the demo says so first
    result = run_cli("demo", "--lr", "-0.5")
    assert result.returncode == 2 and "Invalid learning rate: -0.5" in result.stderr


def test_compare_prints_both_conventions_and_draws_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    result = run_cli(
        "compare", "--steps", "120", "--step-size", "40", "--every", "10", "--plot", str(png)
    )
    assert result.returncode == 0, result.stderr
    assert "loss pytorch" in result.stdout and "loss sutskever" in result.stdout
    rows = {
        int(r.split()[0]): r.split() for r in result.stdout.splitlines() if r[:6].strip().isdigit()
    }
    assert sorted(rows) == list(range(0, 121, 10))
    assert float(rows[40][-1]) == 0.0  # same trajectory while the lr is constant
    assert float(rows[120][-1]) > 1e-3  # apart once it has dropped
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_with_momentum_correction_does_not_diverge():
    result = run_cli("compare", "--steps", "100", "--step-size", "30", "--momentum-correction")
    assert result.returncode == 0, result.stderr
    divergence = [
        float(r.split()[-1]) for r in result.stdout.splitlines() if r[:6].strip().isdigit()
    ]
    assert max(divergence) < 1e-5


def test_compare_shows_progress_on_long_runs(monkeypatch, capsys):
    """A run of 2000 steps drives a tqdm bar (on stderr) to its total, one step at a time."""
    tqdm = pytest.importorskip("tqdm")
    from sgdx.__main__ import main

    bars = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    argv = ["compare", "--steps", "2000", "--schedule", "cosine", "--problem", "quadratic"]
    assert main(argv) == 0
    (bar,) = bars
    assert (bar.total, bar.n, bar.fp) == (2000, 2000, sys.stderr)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schedule", "warmup"], "invalid choice: 'warmup'"),
        (["--lr", "-0.1"], "Invalid learning rate: -0.1"),
        (["--momentum", "-1"], "Invalid momentum value: -1.0"),
        (["--nesterov", "--dampening", "0.5"], "Nesterov momentum requires"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_compare_rejects_bad_arguments(args, message):
    result = run_cli("compare", *args)
    assert result.returncode == 2 and message in result.stderr
