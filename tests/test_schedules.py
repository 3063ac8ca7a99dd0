"""Each schedule against the lr sequence of the torch scheduler it is named after."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sgdx import schedules

torch = pytest.importorskip("torch")
STEPS = 300

CASES = [
    ("StepLR", {"step_size": 30, "gamma": 0.5}, schedules.step_lr),
    ("MultiStepLR", {"milestones": [40, 90, 200], "gamma": 0.3}, schedules.multistep_lr),
    ("ExponentialLR", {"gamma": 0.99}, schedules.exponential_lr),
    ("CosineAnnealingLR", {"T_max": 120, "eta_min": 0.001}, schedules.cosine_annealing_lr),
]


def torch_sequence(name, kwargs, base_lr):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = getattr(torch.optim.lr_scheduler, name)(optimizer, **kwargs)
    lrs = []
    for _ in range(STEPS):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.asarray(lrs)


@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_schedule_matches_torch_scheduler(name, kwargs, make):
    base_lr = 0.1
    ours = make(base_lr, **{k.lower(): v for k, v in kwargs.items()})
    actual = np.asarray(jax.jit(jax.vmap(ours))(np.arange(STEPS, dtype=np.int32)))
    np.testing.assert_allclose(
        actual, torch_sequence(name, kwargs, base_lr), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: schedules.step_lr(-0.1, 10), "Invalid learning rate: -0.1"),
        (lambda: schedules.step_lr(0.1, 0), "step_size must be a positive integer"),
        (lambda: schedules.exponential_lr(0.1, -0.5), "Invalid gamma value: -0.5"),
        (lambda: schedules.cosine_annealing_lr(0.1, 0), "t_max must be a positive integer"),
    ],
)
def test_invalid_schedule_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
