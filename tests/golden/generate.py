"""Regenerates ``sgd_torch.npz``: torch.optim.SGD trajectories on the reference problem.

Run from the repository root with torch installed: ``python -m tests.golden.generate``.
The file holds, for every configuration in ``tests.oracle.CONFIGS`` in float32 and
float64, the problem (initial parameters, gradient coefficients), the per-step learning
rates and torch's parameters and momentum buffers after every step, so the parity tests
run without torch too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests import oracle

PATH = Path(__file__).with_name("sgd_torch.npz")
DTYPES = (np.float32, np.float64)


def generate() -> dict[str, np.ndarray]:
    """Every array of the golden file, keyed ``'{config}|{dtype}|{name}'``."""
    import torch  # here, so that the golden tests import this module without torch

    arrays: dict[str, np.ndarray] = {"torch_version": np.array(torch.__version__)}
    for name, kwargs in oracle.CONFIGS:
        for dtype in DTYPES:
            prefix = f"{name}|{np.dtype(dtype).name}|"
            problem = oracle.make_problem(0, dtype, maximize=kwargs.get("maximize", False))
            for part in ("params", "coef", "noise"):
                for leaf, value in problem[part].items():
                    arrays[f"{prefix}{part}/{leaf}"] = value
            arrays[f"{prefix}lrs"] = oracle.learning_rates(kwargs)
            for key, value in oracle.run_torch(kwargs, problem, dtype).items():
                arrays[prefix + key] = value
    return arrays


if __name__ == "__main__":
    np.savez_compressed(PATH, **generate())
    print(f"wrote {PATH} ({PATH.stat().st_size} bytes)")
