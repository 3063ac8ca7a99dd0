"""Each schedule against the lr sequence of the torch scheduler it is named after."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx
from sgdx import schedules

torch = pytest.importorskip("torch")
STEPS = 300

CASES = [
    ("StepLR", {"step_size": 30, "gamma": 0.5}, schedules.step_lr),
    ("MultiStepLR", {"milestones": [40, 90, 200], "gamma": 0.3}, schedules.multistep_lr),
    ("ExponentialLR", {"gamma": 0.99}, schedules.exponential_lr),
    ("CosineAnnealingLR", {"T_max": 120, "eta_min": 0.001}, schedules.cosine_annealing_lr),
]


def torch_sequence(name, kwargs, base_lr, key="lr"):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr, momentum=0.9)
    scheduler = getattr(torch.optim.lr_scheduler, name)(optimizer, **kwargs)
    values = []
    for _ in range(STEPS):
        values.append(optimizer.param_groups[0][key])
        optimizer.step()
        scheduler.step()
    return np.asarray(values)


def sgdx_sequence(schedule):
    return np.asarray(jax.jit(jax.vmap(schedule))(np.arange(STEPS, dtype=np.int32)))


def torch_scheduler(name, **kwargs):
    return lambda optimizer: getattr(torch.optim.lr_scheduler, name)(optimizer, **kwargs)


def run_torch_schedulers(make, base_lr=0.1, steps_per_epoch=1, key="lr"):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr, momentum=0.9)
    scheduler = make(optimizer)
    values = []
    for step in range(STEPS):
        values.append(optimizer.param_groups[0][key])
        optimizer.step()
        if (step + 1) % steps_per_epoch == 0:
            scheduler.step()
    return np.asarray(values)


def as_float(t):
    return jnp.asarray(t).astype(jnp.float64)


MORE_CASES = {
    "ConstantLR": (
        torch_scheduler("ConstantLR", factor=0.5, total_iters=40),
        schedules.constant_lr(0.1, 0.5, 40),
    ),
    "LinearLR": (
        torch_scheduler("LinearLR", start_factor=0.25, end_factor=1.0, total_iters=50),
        schedules.linear_lr(0.1, 0.25, 1.0, 50),
    ),
    "LinearLR decay": (
        torch_scheduler("LinearLR", start_factor=1.0, end_factor=0.1, total_iters=250),
        schedules.linear_lr(0.1, 1.0, 0.1, 250),
    ),
    "PolynomialLR": (
        torch_scheduler("PolynomialLR", total_iters=200, power=2.0),
        schedules.polynomial_lr(0.1, 200, 2.0),
    ),
    "CosineAnnealingWarmRestarts": (
        torch_scheduler("CosineAnnealingWarmRestarts", T_0=25, eta_min=1e-4),
        schedules.cosine_annealing_warm_restarts(0.1, 25, eta_min=1e-4),
    ),
    "CosineAnnealingWarmRestarts T_mult=2": (
        torch_scheduler("CosineAnnealingWarmRestarts", T_0=20, T_mult=2),
        schedules.cosine_annealing_warm_restarts(0.1, 20, t_mult=2),
    ),
    "OneCycleLR": (
        torch_scheduler("OneCycleLR", max_lr=0.5, total_steps=STEPS),
        schedules.one_cycle_lr(0.5, STEPS),
    ),
    "OneCycleLR linear three-phase": (
        torch_scheduler(
            "OneCycleLR", max_lr=0.5, total_steps=STEPS, anneal_strategy="linear", three_phase=True
        ),
        schedules.one_cycle_lr(0.5, STEPS, anneal_strategy="linear", three_phase=True),
    ),
    "CyclicLR": (
        torch_scheduler("CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=7, step_size_down=13),
        schedules.cyclic_lr(0.01, 0.1, 7, 13),
    ),
    "CyclicLR triangular2": (
        torch_scheduler("CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=10, mode="triangular2"),
        schedules.cyclic_lr(0.01, 0.1, 10, mode="triangular2"),
    ),
    "CyclicLR exp_range": (
        torch_scheduler(
            "CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=9, mode="exp_range", gamma=0.995
        ),
        schedules.cyclic_lr(0.01, 0.1, 9, mode="exp_range", gamma=0.995),
    ),
    "CyclicLR scale_fn iterations": (
        torch_scheduler(
            "CyclicLR",
            base_lr=0.01,
            max_lr=0.1,
            step_size_up=6,
            scale_fn=lambda x: 1 / (1 + 0.01 * x),
            scale_mode="iterations",
        ),
        schedules.cyclic_lr(
            0.01, 0.1, 6, scale_fn=lambda x: 1 / (1 + 0.01 * x), scale_mode="iterations"
        ),
    ),
    "LambdaLR": (
        torch_scheduler("LambdaLR", lr_lambda=lambda epoch: 1 / (1 + 0.05 * epoch)),
        schedules.lambda_lr(0.1, lambda t: 1 / (1 + 0.05 * as_float(t))),
    ),
    "MultiplicativeLR": (
        torch_scheduler("MultiplicativeLR", lr_lambda=lambda epoch: 0.99),
        schedules.multiplicative_lr(0.1, lambda i: 0.99),
    ),
    "SequentialLR": (
        lambda opt: torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=2),
                torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
            ],
            milestones=[2],
        ),
        schedules.sequential(
            [schedules.constant_lr(0.1, 0.1, 2), schedules.exponential_lr(0.1, 0.9)], [2]
        ),
    ),
    "SequentialLR warmup cosine": (
        lambda opt: torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=20),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=280),
            ],
            milestones=[20],
        ),
        schedules.sequential(
            [schedules.linear_lr(0.1, 0.1, 1.0, 20), schedules.cosine_annealing_lr(0.1, 280)], [20]
        ),
    ),
    "ChainedScheduler": (
        lambda opt: torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=2),
                torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
            ]
        ),
        schedules.chained(
            0.1, schedules.constant_lr(0.1, 0.1, 2), schedules.exponential_lr(0.1, 0.9)
        ),
    ),
    "ChainedScheduler step+linear": (
        lambda opt: torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=30),
                torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5),
            ]
        ),
        schedules.chained(
            0.1, schedules.linear_lr(0.1, 0.2, 1.0, 30), schedules.step_lr(0.1, 50, 0.5)
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(MORE_CASES))
def test_more_schedules_match_torch(name):
    make_torch, ours = MORE_CASES[name]
    np.testing.assert_allclose(
        sgdx_sequence(ours), run_torch_schedulers(make_torch), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_momentum_matches_torch(three_phase):
    make = torch_scheduler("OneCycleLR", max_lr=0.5, total_steps=STEPS, three_phase=three_phase)
    ours = schedules.one_cycle_momentum(STEPS, three_phase=three_phase)
    expected = run_torch_schedulers(make, key="momentum")
    np.testing.assert_allclose(sgdx_sequence(ours), expected, rtol=1e-12)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_momentum_matches_torch(mode):
    make = torch_scheduler(
        "CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=7, step_size_down=4, mode=mode,
        gamma=0.99, base_momentum=0.7, max_momentum=0.95,
    )  # fmt: skip
    ours = schedules.cyclic_momentum(0.7, 0.95, 7, 4, mode=mode, gamma=0.99)
    expected = run_torch_schedulers(make, key="momentum")
    np.testing.assert_allclose(sgdx_sequence(ours), expected, rtol=1e-12)


def test_per_epoch_matches_a_scheduler_stepped_each_epoch():
    make = torch_scheduler("StepLR", step_size=3, gamma=0.5)
    expected = run_torch_schedulers(make, steps_per_epoch=7)
    ours = schedules.per_epoch(schedules.step_lr(0.1, 3, 0.5), steps_per_epoch=7)
    np.testing.assert_allclose(sgdx_sequence(ours), expected, rtol=1e-12)


@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_schedule_matches_torch_scheduler(name, kwargs, make):
    base_lr = 0.1
    ours = make(base_lr, **{k.lower(): v for k, v in kwargs.items()})
    actual = sgdx_sequence(ours)
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


PLATEAU_CASES = [
    {},
    {"factor": 0.5, "patience": 2, "cooldown": 2, "min_lr": 0.02},
    {"mode": "max", "factor": 0.3, "patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
    {"patience": 0, "threshold": 0.2},
]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=lambda k: ",".join(k) or "defaults")
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    """Two param groups, stepped once per epoch with a validation metric, as torch's docs
    show; every group's learning rate and every update equal torch's."""
    rng = np.random.default_rng(0)
    epochs, steps_per_epoch = 80, 3
    metrics = np.concatenate([np.linspace(2.0, 1.0, 20), np.full(60, 1.0)]) + rng.normal(
        0, 0.02, epochs
    )
    if kwargs.get("mode") == "max":
        metrics = -metrics
    w, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.05}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    tx = sgdx.param_groups(
        {"w": "w", "b": "b"}, {"w": {}, "b": {"learning_rate": 0.05}}, learning_rate=0.1
    )
    plateau = sgdx.reduce_lr_on_plateau(**kwargs)
    params = {"w": jnp.zeros((), jnp.float64), "b": jnp.zeros((), jnp.float64)}
    state, plateau_state = tx.init(params), plateau.init()
    update = jax.jit(tx.update)
    plateau_step = jax.jit(plateau.step)
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            updates, state = update({"w": jnp.ones(()), "b": jnp.ones(())}, state, params)
            np.testing.assert_allclose(updates["w"], -optimizer.param_groups[0]["lr"], rtol=1e-12)
            np.testing.assert_allclose(updates["b"], -optimizer.param_groups[1]["lr"], rtol=1e-12)
        scheduler.step(metrics[epoch])
        plateau_state, state = plateau_step(plateau_state, state, metrics[epoch])
        for label, group in (("w", 0), ("b", 1)):
            np.testing.assert_allclose(
                sgdx.get_hyperparams(state, group=label)["learning_rate"],
                optimizer.param_groups[group]["lr"],
                rtol=1e-12,
            )
        assert int(plateau_state.num_bad_epochs) == scheduler.num_bad_epochs
        assert int(plateau_state.cooldown_counter) == scheduler.cooldown_counter
        assert float(plateau_state.best) == pytest.approx(scheduler.best, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] < 0.1  # the plateau was detected


def test_reduce_lr_on_plateau_errors():
    plateau = sgdx.reduce_lr_on_plateau()
    with pytest.raises(TypeError, match="inject_hyperparams"):
        plateau.step(plateau.init(), sgdx.sgd(0.1).init(jnp.ones(1)), 1.0)
    with pytest.raises(ValueError, match=r"Factor should be < 1\.0"):
        sgdx.reduce_lr_on_plateau(factor=1.5)


PRECISION_SCRIPT = r"""
import warnings
import jax, jax.numpy as jnp, numpy as np, torch
from sgdx import schedules as S

assert not jax.config.jax_enable_x64  # JAX's default: schedules evaluated in float32
warnings.simplefilter("ignore")  # torch's "scheduler.step() before optimizer.step()"
L = torch.optim.lr_scheduler


def torch_lrs(make, n):
    optimizer = torch.optim.SGD([torch.zeros(1)], lr=0.1)
    scheduler, lrs = make(optimizer), []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return np.asarray(lrs, np.float64)


N = 90_000
CASES = {
    "cosine": (lambda o: L.CosineAnnealingLR(o, N), S.cosine_annealing_lr(0.1, N), N),
    "cosine_eta_min": (
        lambda o: L.CosineAnnealingLR(o, 7000, 1e-5),
        S.cosine_annealing_lr(0.1, 7000, 1e-5),
        30_000,
    ),
    "exponential": (lambda o: L.ExponentialLR(o, 0.99995), S.exponential_lr(0.1, 0.99995), N),
    "step": (lambda o: L.StepLR(o, 3000, 0.7), S.step_lr(0.1, 3000, 0.7), 60_000),
    "multistep": (
        lambda o: L.MultiStepLR(o, [100, 5000, 5000, 9000], 0.3),
        S.multistep_lr(0.1, [100, 5000, 5000, 9000], 0.3), 20_000),
    "linear": (
        lambda o: L.LinearLR(o, 0.01, 1.0, 5000), S.linear_lr(0.1, 0.01, 1.0, 5000), 20_000
    ),
    "constant": (lambda o: L.ConstantLR(o, 0.3, 500), S.constant_lr(0.1, 0.3, 500), 2000),
    "polynomial": (
        lambda o: L.PolynomialLR(o, 40_000, 2.0), S.polynomial_lr(0.1, 40_000, 2.0), 50_000
    ),
    "one_cycle": (lambda o: L.OneCycleLR(o, 0.1, total_steps=N), S.one_cycle_lr(0.1, N), N),
    "warm_restarts": (
        lambda o: L.CosineAnnealingWarmRestarts(o, 1000, 2),
        S.cosine_annealing_warm_restarts(0.1, 1000, 2), 40_000),
    "cyclic": (
        lambda o: L.CyclicLR(o, 0.001, 0.1, 2000, 3000, cycle_momentum=False),
        S.cyclic_lr(0.001, 0.1, 2000, 3000),
        N,
    ),
    "cyclic_exp_range": (
        lambda o: L.CyclicLR(o, 0.001, 0.1, 500, mode="exp_range", gamma=0.9999,
                             cycle_momentum=False),
        S.cyclic_lr(0.001, 0.1, 500, mode="exp_range", gamma=0.9999),
        10_000,
    ),
    "warmup_cosine": (
        lambda o: L.SequentialLR(
            o, [L.LinearLR(o, 0.01, 1.0, 2000), L.CosineAnnealingLR(o, N - 2000)], [2000]
        ),
        S.sequential(
            [S.linear_lr(0.1, 0.01, 1.0, 2000), S.cosine_annealing_lr(0.1, N - 2000)], [2000]
        ),
        N,
    ),
}
worst = {}
for name, (make, schedule, n) in CASES.items():
    theirs = torch_lrs(make, n).astype(np.float32)  # float32(torch's float64 value)
    ours = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(n, dtype=jnp.int32)))
    assert ours.dtype == np.float32, (name, ours.dtype)
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - theirs.view(np.int32).astype(np.int64))
    worst[name] = int(ulps.max())
print(worst)
assert max(worst.values()) <= 1, worst
"""


def test_float32_schedules_are_torchs_float64_values_rounded():
    """With x64 off, every schedule's float32 learning rate is float32(torch's float64 value)
    to 1 ulp over the whole run (a 90k-step cosine, warmup + cosine, one cycle, ...)."""
    result = subprocess.run(
        [sys.executable, "-c", PRECISION_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
