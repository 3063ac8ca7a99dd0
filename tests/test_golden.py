"""sgdx against committed torch.optim.SGD trajectories: runs with or without torch."""

from __future__ import annotations

import numpy as np
import pytest

from tests import oracle
from tests.golden.generate import DTYPES, PATH

GOLDEN = dict(np.load(PATH))
CASES = [(name, np.dtype(dtype).name) for name, _ in oracle.CONFIGS for dtype in DTYPES]


def golden_case(name: str, dtype: str) -> tuple[dict, np.ndarray, dict]:
    prefix = f"{name}|{dtype}|"
    case = {k[len(prefix) :]: v for k, v in GOLDEN.items() if k.startswith(prefix)}
    problem = {
        part: {leaf: case[f"{part}/{leaf}"] for leaf in oracle.SHAPES}
        for part in ("params", "coef", "noise")
    }
    kwargs = dict(oracle.CONFIGS)[name]
    problem["maximize"] = kwargs.get("maximize", False)
    expected = {k: v for k, v in case.items() if k.startswith(("param/", "buf/"))}
    return problem, case["lrs"], expected


def test_golden_file_covers_every_config():
    assert sorted({k.split("|")[0] for k in GOLDEN if "|" in k}) == sorted(dict(oracle.CONFIGS))


@pytest.mark.parametrize(("name", "dtype"), CASES)
def test_sgdx_reproduces_golden_torch_trajectory(name, dtype):
    problem, lrs, expected = golden_case(name, dtype)
    kwargs = dict(oracle.CONFIGS)[name]
    actual = oracle.run_sgdx(oracle.sgdx_optimizer(kwargs, lrs), problem)
    oracle.assert_trajectories_close(actual, expected, kwargs.get("momentum", 0.0))


@pytest.mark.parametrize(("name", "dtype"), CASES)
def test_golden_file_matches_live_torch(name, dtype):
    """Guards against a stale golden file: regenerate it with tests/golden/generate.py."""
    pytest.importorskip("torch")
    problem, lrs, expected = golden_case(name, dtype)
    kwargs = dict(oracle.CONFIGS)[name]
    np.testing.assert_array_equal(lrs, oracle.learning_rates(kwargs))
    live = oracle.run_torch(kwargs, problem, np.dtype(dtype))
    oracle.assert_trajectories_close(live, expected, kwargs.get("momentum", 0.0))
