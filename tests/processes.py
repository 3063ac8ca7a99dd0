"""Running part of the suite in a process of its own (a device count set before JAX starts,
a script as a user runs it), and reading what it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]


def environment(devices: int) -> dict[str, str]:
    """This environment with ``devices`` simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """The output of ``python *args`` from the source tree's root, which must succeed."""
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def report(args: list[str], env: dict[str, str] | None = None) -> Any:
    """The JSON the process prints on its last line."""
    return json.loads(run(args, env).strip().splitlines()[-1])
