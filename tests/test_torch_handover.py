"""A live torch run handed to sgdx and back (sgdx.interop.torch.from_torch / to_torch).

Real recipes' optimizer and scheduler setups run in torch; the run is handed to sgdx part
way, continued, handed back to torch and continued again. Against the uninterrupted torch
run, after every step: every parameter, every momentum buffer and every group's learning
rate (float64 to 1e-12, float32 to 1e-6, relative). The gradients are a fixed function of
the current parameters, the same in both frameworks, so the optimizers are compared on
their own.
"""

from __future__ import annotations

import copy
import functools
import importlib
import subprocess
import sys
import types
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sgdx
from sgdx.interop import torch as torch_interop
from tests import processes

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}


class Net(torch.nn.Module):
    """Linear -> BatchNorm -> Linear: weights, biases and norm parameters, as a classifier
    has (the forward pass is never run; only the parameters matter here)."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(5, 6, dtype=dtype)
        self.bn = torch.nn.BatchNorm1d(6, dtype=dtype)
        self.fc2 = torch.nn.Linear(6, 3, dtype=dtype)


def grad_of(p, k):
    """The gradient at step k: a fixed function of the parameter (numpy or torch)."""
    p = np.asarray(p, np.float64)
    return np.sin(p + 0.1 * k) + 0.1 * p


def torch_step(model, optimizer, k, frozen=()):
    for name, p in model.named_parameters():
        if name in frozen:
            p.grad = None
        else:
            p.grad = torch.tensor(grad_of(p.detach().numpy(), k), dtype=p.dtype)
    optimizer.step()


def sgdx_step(tx, state, params, k, frozen=(), donate=False):
    """One update; with ``donate``, in a jit that donates the state and the parameters (a
    state whose leaves share a buffer cannot be donated: the hand-over's must be)."""
    grads = {
        n: None if n in frozen else jnp.asarray(grad_of(p, k), p.dtype) for n, p in params.items()
    }

    def step(state, params, grads):
        updates, state = tx.update(grads, state, params)
        return state, sgdx.apply_updates(params, updates)

    return (jax.jit(step, donate_argnums=(0, 1)) if donate else step)(state, params, grads)


# ------------------------------------------------------------------------ the recipes


def torchvision_setup(model, *, nesterov, warmup, main, epochs, warmup_epochs):
    """torchvision's classification reference: norm parameters in a group of their own
    without weight decay (its set_weight_decay with norm_weight_decay=0), SGD with or
    without nesterov, a linear or constant warmup handed to the main scheduler by
    SequentialLR, stepped once per epoch."""
    norm, other = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            (norm if isinstance(module, torch.nn.BatchNorm1d) else other).append(p)
    groups = [{"params": other, "weight_decay": 1e-4}, {"params": norm, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov)
    mains = {
        "cosine": lambda: lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs - warmup_epochs, eta_min=1e-3
        ),
        "step": lambda: lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1),
        "exponential": lambda: lr_scheduler.ExponentialLR(optimizer, gamma=0.8),
    }
    main_scheduler = mains[main]()
    warmups = {
        "linear": lambda: lr_scheduler.LinearLR(
            optimizer, start_factor=0.01, total_iters=warmup_epochs
        ),
        "constant": lambda: lr_scheduler.ConstantLR(
            optimizer, factor=0.01, total_iters=warmup_epochs
        ),
    }
    scheduler = lr_scheduler.SequentialLR(
        optimizer, [warmups[warmup](), main_scheduler], milestones=[warmup_epochs]
    )
    return optimizer, scheduler


def per_iteration_setup(model, *, kind):
    """Per-iteration schedulers: a bias group with twice the learning rate and no weight
    decay (Detectron2's BIAS_LR_FACTOR / WEIGHT_DECAY_BIAS layout), with a linear warmup
    chained with a multistep decay, or a OneCycle policy (which also cycles momentum)."""
    bias = [p for n, p in model.named_parameters() if n.endswith("bias")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": rest}, {"params": bias, "lr": 0.2, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        dampening=0.1,
        weight_decay=1e-4,
    )
    if kind == "chained":
        scheduler = lr_scheduler.ChainedScheduler(
            [
                lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=10),
                lr_scheduler.MultiStepLR(optimizer, milestones=[20, 35, 35], gamma=0.5),
            ]
        )
    else:
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=[0.1, 0.2], total_steps=60)
    return optimizer, scheduler


# --------------------------------------------------------------------- the comparison


def close(ours, theirs, tolerance, message, terms=1.0):
    """Equal to ``tolerance`` relative to the leaf's scale, times ``terms`` for a momentum
    buffer: with momentum 0.9 it sums about 10 gradients, each with its own rounding."""
    theirs = np.asarray(theirs, np.float64)
    scale = terms * float(np.max(np.abs(theirs), initial=1.0))
    np.testing.assert_allclose(
        np.asarray(ours, np.float64),
        theirs,
        rtol=tolerance,
        atol=tolerance * scale,
        err_msg=message,
    )


def assert_same(run_params, run_state, model, optimizer, tolerance, where):
    for name, p in model.named_parameters():
        close(run_params[name], p.detach().numpy(), tolerance, f"{name} {where}")
    try:
        ours = sgdx.momentum_buffers(run_state)
    except ValueError:  # no group has momentum
        ours = {}
    for name, p in model.named_parameters():
        theirs = optimizer.state[p].get("momentum_buffer")
        assert (ours.get(name) is None) == (theirs is None), f"{name} buffer {where}"
        if theirs is not None:
            close(ours[name], theirs.numpy(), tolerance, f"{name} buffer {where}", terms=10.0)
    for i, group in enumerate(optimizer.param_groups):
        hyper = sgdx.get_hyperparams(run_state, group=str(i))
        np.testing.assert_allclose(
            float(hyper["learning_rate"]), group["lr"], rtol=tolerance, err_msg=f"lr {i} {where}"
        )
        if "momentum" in hyper:
            np.testing.assert_allclose(
                float(hyper["momentum"]), group["momentum"], rtol=tolerance, err_msg=where
            )


def hand_over_and_back(
    make,
    dtype,
    total,
    to_jax,
    to_torch,
    per_epoch=None,
    frozen_until=0,
    schedules=None,
    fractional=None,
):
    """The uninterrupted torch run; a run handed to sgdx after ``to_jax`` updates and back to
    torch after ``to_torch``; compared after every update. ``frozen_until``: fc2.bias has no
    gradient for that many updates (its buffer starts late). ``fractional``: the scheduler is
    stepped after every update with ``epoch + i / per_epoch`` ("i") or ``epoch + (i + 1) /
    per_epoch`` ("i + 1"), i the update's batch in its epoch."""
    tolerance = TOLERANCE[dtype]

    def frozen(k):
        return ("fc2.bias",) if k < frozen_until else ()

    def scheduler_step(scheduler, k):
        epoch, i = divmod(k, per_epoch or 1)
        if fractional == "i":
            scheduler.step(epoch + i / per_epoch)
        elif fractional == "i + 1":
            scheduler.step(epoch + (i + 1) / per_epoch)
        elif per_epoch is None or (k + 1) % per_epoch == 0:
            scheduler.step()

    reference = Net(dtype)
    ref_opt, ref_sched = make(reference)
    model = Net(dtype)
    optimizer, scheduler = make(model)
    for k in range(to_jax):
        torch_step(reference, ref_opt, k, frozen(k))
        scheduler_step(ref_sched, k)
        torch_step(model, optimizer, k, frozen(k))
        scheduler_step(scheduler, k)
    run = torch_interop.from_torch(
        optimizer,
        model,
        scheduler,
        steps_per_epoch=per_epoch,
        step_in_epoch=None if per_epoch is None or fractional else to_jax % per_epoch,
        schedules=schedules,
        fractional_epochs=fractional,
    )
    state, params = run.state, run.params
    for k in range(to_jax, to_torch):
        torch_step(reference, ref_opt, k, frozen(k))
        scheduler_step(ref_sched, k)
        state, params = sgdx_step(run.tx, state, params, k, frozen(k), donate=k == to_jax)
        assert_same(params, state, reference, ref_opt, tolerance, f"after update {k + 1} (sgdx)")

    checkpoint = torch_interop.to_torch(run, state, params)
    model = Net(dtype)
    optimizer, scheduler = make(model)  # the recipe builds them afresh, as on a restart
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(checkpoint.parameters[name])
    if per_epoch is not None:
        assert checkpoint.step_in_epoch == to_torch % per_epoch
    for k in range(to_torch, total):
        torch_step(reference, ref_opt, k, frozen(k))
        scheduler_step(ref_sched, k)
        torch_step(model, optimizer, k, frozen(k))
        scheduler_step(scheduler, k)
        for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
            close(a.detach().numpy(), b.detach().numpy(), tolerance, f"{name} after {k + 1}")
        for a, b in zip(optimizer.param_groups, ref_opt.param_groups, strict=True):
            assert a["lr"] == pytest.approx(b["lr"], rel=tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("nesterov", "warmup", "main"),
    [
        (False, "linear", "cosine"),
        (True, "linear", "step"),
        (True, "constant", "exponential"),
        (False, "constant", "cosine"),
    ],
)
def test_torchvision_recipe_hand_over_mid_warmup_and_back_mid_epoch(nesterov, warmup, main, dtype):
    """15 epochs of 4 updates (60 updates: the warmup, the hand-over to the main scheduler,
    and two or more later learning-rate changes); to sgdx in epoch 1 (mid-warmup, after
    update 6), back to torch in epoch 9 (after update 37, mid-epoch)."""
    make = functools.partial(
        torchvision_setup, nesterov=nesterov, warmup=warmup, main=main, epochs=15, warmup_epochs=3
    )
    hand_over_and_back(make, dtype, total=60, to_jax=6, to_torch=37, per_epoch=4, frozen_until=9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["chained", "one_cycle"])
def test_per_iteration_recipe_hand_over_and_back(kind, dtype):
    """Per-iteration schedulers with a 2x bias group; to sgdx mid-warmup (after update 5),
    back to torch after update 41 (past every milestone / the peak)."""
    make = functools.partial(per_iteration_setup, kind=kind)
    hand_over_and_back(make, dtype, total=60, to_jax=5, to_torch=41, frozen_until=7)


BASE_LR, MAX_ITER, WARMUP_ITERS, WARMUP_FACTOR, BIAS_LR_FACTOR = 0.1, 60, 10, 0.001, 2.0


def detectron2_groups(model):
    """Detectron2's get_default_optimizer_params, merged into groups of equal options: norm
    weights without weight decay (WEIGHT_DECAY_NORM 0), every bias at BIAS_LR_FACTOR times
    the learning rate (WEIGHT_DECAY_BIAS = WEIGHT_DECAY), the rest at the defaults."""
    groups = {"weights": [], "biases": [], "norm": []}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                groups["biases"].append(p)
            elif isinstance(module, torch.nn.BatchNorm1d):
                groups["norm"].append(p)
            else:
                groups["weights"].append(p)
    return groups


def detectron2_setup(model, *, main):
    """Detectron2's solver, stepped per iteration: SGD over those groups and its LR
    multiplier, fvcore's real ParamSchedulers (the warmup composite Detectron2 builds: a
    linear warmup from WARMUP_FACTOR x the start to where the main schedule is at
    WARMUP_ITERS, rescaled, then the main schedule on its own clock) evaluated at
    iteration / MAX_ITER, as a LambdaLR."""
    fv = pytest.importorskip("fvcore.common.param_scheduler")
    groups = detectron2_groups(model)
    optimizer = torch.optim.SGD(
        [
            {"params": groups["weights"]},
            {"params": groups["biases"], "lr": BASE_LR * BIAS_LR_FACTOR},
            {"params": groups["norm"], "weight_decay": 0.0},
        ],
        lr=BASE_LR,
        momentum=0.9,
        weight_decay=1e-4,
    )
    if main == "multistep":
        schedule = fv.MultiStepParamScheduler([1.0, 0.1, 0.01], MAX_ITER, milestones=[30, 45])
    else:
        schedule = fv.CosineParamScheduler(1.0, 0.0)
    length = WARMUP_ITERS / MAX_ITER
    warmup = fv.LinearParamScheduler(WARMUP_FACTOR * schedule(0.0), schedule(length))
    multiplier = fv.CompositeParamScheduler(
        [warmup, schedule], lengths=[length, 1 - length], interval_scaling=["rescaled", "fixed"]
    )
    return optimizer, lr_scheduler.LambdaLR(optimizer, lambda it: multiplier(it / MAX_ITER))


def detectron2_port(main):
    """The same solver in sgdx: one shared schedule (sgdx.schedules.warmup over the main
    schedule, not restarting it) and the bias group's learning_rate_scale."""
    if main == "multistep":
        schedule = sgdx.schedules.multistep_lr(BASE_LR, [30, 45], gamma=0.1)
    else:
        schedule = sgdx.schedules.cosine_annealing_lr(BASE_LR, MAX_ITER)
    return sgdx.schedules.warmup(schedule, WARMUP_ITERS, WARMUP_FACTOR)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("main", ["multistep", "cosine"])
def test_detectron2_solver_ported_to_sgdx_tracks_torch(main, dtype):
    """The sgdx recipe (param_groups with learning_rate_scale, schedules.warmup) from the
    start, against the torch solver, over 60 iterations crossing the warmup and two
    learning-rate changes."""
    tolerance = TOLERANCE[dtype]
    model = Net(dtype)
    optimizer, scheduler = detectron2_setup(model, main=main)
    groups = detectron2_groups(model)
    label_of = {id(p): label for label, ps in groups.items() for p in ps}
    labels = {n: label_of[id(p)] for n, p in model.named_parameters()}
    tx = sgdx.param_groups(
        labels,
        {
            "weights": {},
            "biases": {"learning_rate_scale": BIAS_LR_FACTOR},
            "norm": {"weight_decay": 0.0},
        },
        learning_rate=detectron2_port(main),
        momentum=0.9,
        weight_decay=1e-4,
    )
    params = {n: jnp.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
    state = tx.init(params)
    for k in range(MAX_ITER):
        for i, label in enumerate(("weights", "biases", "norm")):
            lr = float(sgdx.get_hyperparams(state, group=label)["learning_rate"])
            assert lr == pytest.approx(optimizer.param_groups[i]["lr"], rel=tolerance), (k, label)
        torch_step(model, optimizer, k)
        scheduler.step()
        state, params = sgdx_step(tx, state, params, k)
        for name, p in model.named_parameters():
            close(params[name], p.detach().numpy(), tolerance, f"{name} after {k + 1}")
            buffer = optimizer.state[p]["momentum_buffer"].numpy()
            ours = sgdx.momentum_buffers(state)[name]
            close(ours, buffer, tolerance, f"{name} buffer after {k + 1}", terms=10.0)


@pytest.mark.parametrize("main", ["multistep", "cosine"])
def test_detectron2_solver_hand_over_mid_warmup_and_back(main):
    """Its LR multiplier is a Python function JAX cannot trace, so the hand-over takes the
    sgdx schedules in its place; the hand-back still writes the LambdaLR's own state."""
    schedule = detectron2_port(main)
    schedules = [lambda c: schedule(c), lambda c: BIAS_LR_FACTOR * schedule(c), schedule]
    make = functools.partial(detectron2_setup, main=main)
    hand_over_and_back(make, torch.float64, MAX_ITER, 5, 41, frozen_until=7, schedules=schedules)


# ------------------------------------------------------------------- ReduceLROnPlateau


def plateau_metric(epoch):
    return 2.0 / (1 + epoch) if epoch < 4 else 0.5 + 1e-6 * epoch  # then a plateau


def plateau_two_groups(model):
    optimizer = torch.optim.SGD(
        [
            {"params": [model.fc1.weight, model.fc2.weight]},
            {"params": [model.fc1.bias], "lr": 0.05},
        ],
        lr=0.1,
        momentum=0.9,
    )
    return optimizer, lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=1, cooldown=1, min_lr=[0.0, 0.01]
    )


def plateau_group_added_after(model):
    """Built with one min_lr, which torch gives a group added later at its next reduction."""
    optimizer = torch.optim.SGD([model.fc1.weight, model.fc2.weight], lr=0.1, momentum=0.9)
    scheduler = lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=1, cooldown=1, min_lr=0.02
    )
    optimizer.add_param_group({"params": [model.fc1.bias], "lr": 0.05})
    return optimizer, scheduler


@pytest.mark.parametrize("make", [plateau_two_groups, plateau_group_added_after])
def test_plateau_resume_after_reductions_and_back(make):
    """Stepped per epoch with a validation metric, as torch's documentation shows; handed to
    sgdx after two reductions, back to torch after a third, with the cooldown running."""
    per_epoch, epochs = 3, 24

    reference, model = Net(torch.float64), Net(torch.float64)
    (ref_opt, ref_sched), (optimizer, scheduler) = make(reference), make(model)
    handed, back = 10 * per_epoch, 17 * per_epoch
    for k in range(handed):
        for m, o, s in ((reference, ref_opt, ref_sched), (model, optimizer, scheduler)):
            torch_step(m, o, k)
            if (k + 1) % per_epoch == 0:
                s.step(plateau_metric(k // per_epoch))
    assert ref_opt.param_groups[0]["lr"] < 0.05  # reduced twice already
    run = torch_interop.from_torch(optimizer, model, scheduler)
    state, params, plateau_state = run.state, run.params, run.plateau_state
    for k in range(handed, back):
        torch_step(reference, ref_opt, k)
        state, params = sgdx_step(run.tx, state, params, k)
        if (k + 1) % per_epoch == 0:
            ref_sched.step(plateau_metric(k // per_epoch))
            plateau_state, state = run.plateau.step(
                plateau_state, state, plateau_metric(k // per_epoch)
            )
            assert int(plateau_state.num_bad_epochs) == ref_sched.num_bad_epochs
            assert int(plateau_state.cooldown_counter) == ref_sched.cooldown_counter
        for i, group in enumerate(ref_opt.param_groups):
            lr = float(sgdx.get_hyperparams(state, group=str(i))["learning_rate"])
            assert lr == pytest.approx(group["lr"], rel=1e-12)
        for name in ("fc1.weight", "fc2.weight", "fc1.bias"):
            np.testing.assert_allclose(params[name], named_ref(reference)[name], rtol=1e-12)
    checkpoint = torch_interop.to_torch(run, state, params, plateau_state)
    model = Net(torch.float64)
    optimizer, scheduler = make(model)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(checkpoint.parameters[name])
    for k in range(back, epochs * per_epoch):
        for m, o, s in ((reference, ref_opt, ref_sched), (model, optimizer, scheduler)):
            torch_step(m, o, k)
            if (k + 1) % per_epoch == 0:
                s.step(plateau_metric(k // per_epoch))
        for a, b in zip(optimizer.param_groups, ref_opt.param_groups, strict=True):
            assert a["lr"] == b["lr"]
        for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
            close(a.detach().numpy(), b.detach().numpy(), 1e-12, f"{name} after {k + 1}")


def named_ref(model):
    return {n: p.detach().numpy() for n, p in model.named_parameters()}


# --------------------------------------------------------------------- the failures


def test_exported_lr_is_the_next_steps():
    """Written after k updates, a group's lr is the one torch uses for update k + 1 (the
    scheduler has already stepped), not the one of update k."""
    tx = sgdx.inject_hyperparams(sgdx.sgd)(
        sgdx.schedules.sequential(
            [
                sgdx.schedules.linear_lr(0.1, 0.1, 1.0, 5),
                sgdx.schedules.cosine_annealing_lr(0.1, 20),
            ],
            [5],
        ),
        momentum=0.9,
    )
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update({"w": jnp.ones(3)}, state, params)
    written = torch_interop.state_dict(state, params, ["w"], nesterov=False, maximize=False)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    warmup = lr_scheduler.LinearLR(optimizer, 0.1, 1.0, 5)
    scheduler = lr_scheduler.SequentialLR(
        optimizer, [warmup, lr_scheduler.CosineAnnealingLR(optimizer, 20)], [5]
    )
    for _ in range(3):
        w.grad = torch.ones(3, dtype=torch.float64)
        optimizer.step()
        scheduler.step()
    assert written["param_groups"][0]["lr"] == pytest.approx(
        optimizer.param_groups[0]["lr"], rel=1e-12
    )


def _checkpoint(**options):
    model = Net(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **options)
    torch_step(model, optimizer, 0)
    names = [n for n, _ in model.named_parameters()]
    params = {n: jnp.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
    return optimizer.state_dict(), params, names


@pytest.mark.parametrize(
    ("options", "built", "message"),
    [
        ({"momentum": 0.9, "nesterov": True}, {"momentum": 0.9}, "nesterov=True"),
        ({"momentum": 0.9, "maximize": True}, {"momentum": 0.9}, "maximize=True"),
        ({"momentum": 0.9}, {}, "momentum=0.9.*momentum off"),
        ({}, {"momentum": 0.9}, "momentum=0.*momentum on"),
        ({"momentum": 0.9, "dampening": 0.5}, {"momentum": 0.9}, "dampening=0.5"),
        ({"weight_decay": 0.1}, {}, "weight_decay=0.1.*without weight decay"),
    ],
    ids=["nesterov", "maximize", "momentum-off", "momentum-on", "dampening", "weight-decay"],
)
def test_checkpoint_of_another_configuration_raises_naming_the_flag(options, built, message):
    checkpoint, params, names = _checkpoint(**options)
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1, **built)
    state = tx.init(params)
    before = copy.deepcopy(jax.device_get(state))
    with pytest.raises(ValueError, match=rf"param_groups\[0\].*{message}"):
        torch_interop.load_state_dict(
            checkpoint, state, params, names, nesterov=False, maximize=False
        )
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), before)  # unchanged


def test_flags_must_be_given_to_export_and_import():
    checkpoint, params, names = _checkpoint(momentum=0.9, nesterov=True)
    state = sgdx.inject_hyperparams(sgdx.sgd)(0.1, 0.9, nesterov=True).init(params)
    with pytest.raises(TypeError, match="nesterov"):
        torch_interop.state_dict(state, params, names)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="nesterov"):
        torch_interop.load_state_dict(checkpoint, state, params, names)  # type: ignore[call-arg]


def test_older_checkpoints_get_torchs_backfilled_defaults():
    """torch's test_can_load_older_state_dict: param groups written before maximize,
    foreach, fused and differentiable existed (and nesterov, in the oldest)."""
    checkpoint, params, names = _checkpoint(momentum=0.9)
    for group in checkpoint["param_groups"]:
        for key in ("maximize", "foreach", "fused", "differentiable", "nesterov"):
            del group[key]
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1, 0.9)
    state = torch_interop.load_state_dict(
        checkpoint, tx.init(params), params, names, nesterov=False, maximize=False
    )
    assert sgdx.momentum_buffers(state)["fc1.weight"] is not None


def test_per_epoch_scheduler_needs_the_step_within_the_epoch():
    model = Net(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = lr_scheduler.StepLR(optimizer, 2)
    with pytest.raises(ValueError, match="step_in_epoch"):
        torch_interop.from_torch(optimizer, model, scheduler, steps_per_epoch=4)


def test_position_comes_from_the_scheduler():
    """No hand-computed count: after 7 per-iteration updates the run is at update 7."""
    model = Net(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = lr_scheduler.LinearLR(optimizer, 0.1, 1.0, total_iters=10)
    for k in range(7):
        torch_step(model, optimizer, k)
        scheduler.step()
    run = torch_interop.from_torch(optimizer, model, scheduler)
    assert int(run.state.groups["0"].count) == 7
    lr = float(sgdx.get_hyperparams(run.state, group="0")["learning_rate"])
    assert lr == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)


class Halving(lr_scheduler.LRScheduler):
    """A user's own torch scheduler: halves the learning rate every step."""

    def get_lr(self):
        return [
            group["lr"] * (0.5 if self.last_epoch else 1.0) for group in self.optimizer.param_groups
        ]


def test_unconvertible_schedulers_say_what_to_pass():
    model = Net(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    custom = Halving(optimizer)
    with pytest.raises(TypeError, match="schedules="):
        torch_interop.from_torch(optimizer, model, custom)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    python_only = lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 if epoch < 3 else 0.1)
    with pytest.raises(TypeError, match=r"(?s)cannot be traced by JAX.*schedules="):
        torch_interop.from_torch(optimizer, model, python_only)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    traceable = lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    with jax.numpy_dtype_promotion("standard"):  # float ** int, as a user's JAX has it
        run = torch_interop.from_torch(optimizer, model, traceable)
    assert float(sgdx.get_hyperparams(run.state, group="0")["learning_rate"]) == pytest.approx(0.1)


def test_schedules_given_instead_of_the_scheduler():
    """A scheduler sgdx cannot convert is replaced by sgdx schedules; the hand-back still
    writes the scheduler's own state (a copy of it stepped forward)."""

    def make(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return optimizer, lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 if epoch < 3 else 0.1)

    model = Net(torch.float64)
    optimizer, scheduler = make(model)
    torch_step(model, optimizer, 0)
    scheduler.step()
    schedule = lambda count: jnp.where(count < 3, 0.1, 0.01)  # noqa: E731
    run = torch_interop.from_torch(optimizer, model, scheduler, schedules=[schedule])
    state, params = run.state, run.params
    for k in range(1, 5):
        state, params = sgdx_step(run.tx, state, params, k)
    checkpoint = torch_interop.to_torch(run, state, params)
    assert checkpoint.scheduler["last_epoch"] == 5
    assert checkpoint.optimizer["param_groups"][0]["lr"] == pytest.approx(0.01)


SCHEDULERS = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, 3, 0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, [4, 9, 9], 0.3),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, 0.9),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, 0.25, 6),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, 0.1, 0.9, 7),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, 12, 2.0),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, 8, 1e-3),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 4, 2),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, [0.3, 0.6], total_steps=25),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, [0.01, 0.02], [0.3, 0.6], 4, 3),
    "CyclicLR exp_range": lambda o: lr_scheduler.CyclicLR(
        o, 0.01, 0.5, 3, mode="exp_range", gamma=0.97, base_momentum=0.5, max_momentum=0.95
    ),
    "CyclicLR triangular2 no momentum cycle": lambda o: lr_scheduler.CyclicLR(
        o, 0.01, 0.5, 2, 5, mode="triangular2", cycle_momentum=False
    ),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1.0 + e)),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.95),
    "SequentialLR of ChainedScheduler": lambda o: lr_scheduler.SequentialLR(
        o,
        [
            lr_scheduler.ChainedScheduler(
                [lr_scheduler.ConstantLR(o, 0.5, 3), lr_scheduler.ExponentialLR(o, 0.8)]
            ),
            lr_scheduler.CosineAnnealingLR(o, 10),
        ],
        [6],
    ),
}


# torch warns about its own nested schedulers (the inner ones step before their optimizer)
@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_class_hands_over(name):
    """Each scheduler from_torch converts, handed over after 5 updates of a two-group
    optimizer built from named parameters: every later learning rate, momentum (OneCycle's
    cycle) and parameter is torch's."""

    def make(model):
        named = list(model.named_parameters())
        optimizer = torch.optim.SGD(
            [{"params": named[:2], "lr": 0.3}, {"params": named[2:], "lr": 0.6}],
            lr=0.1,
            momentum=0.9,
        )
        return optimizer, SCHEDULERS[name](optimizer)

    with jax.numpy_dtype_promotion("standard"):  # the lambdas' float ** int, as users write
        hand_over_and_back(make, torch.float64, total=24, to_jax=5, to_torch=17)


# ----------------------------------------------- exact or refused: every case says which


def two_groups(model, **options):
    named = list(model.named_parameters())
    return torch.optim.SGD(
        [{"params": [p for _, p in named[:2]], "lr": 0.3}, {"params": [p for _, p in named[2:]]}],
        lr=0.1,
        momentum=0.9,
        **options,
    )


def test_cyclic_momentum_given_as_schedules_travels_with_the_learning_rate():
    """CyclicLR cycles momentum; schedules= without the momentum is refused (the run's
    momentum would stay fixed), and with it the hand-over is torch's, both ways."""
    model = Net(torch.float64)
    optimizer = two_groups(model)
    scheduler = lr_scheduler.CyclicLR(optimizer, 0.01, 0.3, 4)
    lr = sgdx.schedules.cyclic_lr(0.01, 0.3, 4)
    with pytest.raises(ValueError, match="cycles momentum"):
        torch_interop.from_torch(optimizer, model, scheduler, schedules=[lr, lr])

    def make(model):
        optimizer = two_groups(model)
        return optimizer, lr_scheduler.CyclicLR(optimizer, 0.01, 0.3, 4)

    entry = {"learning_rate": lr, "momentum": sgdx.schedules.cyclic_momentum(0.8, 0.9, 4)}
    hand_over_and_back(make, torch.float64, 20, 5, 13, schedules=[entry, entry])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("fractional", "t_mult", "to_jax", "to_torch"),
    [("i", 1, 0, 9), ("i", 2, 6, 17), ("i + 1", 1, 7, 20), ("i + 1", 2, 4, 13), ("i", 3, 8, 8)],
)
def test_fractional_epochs_hand_over_and_back(fractional, t_mult, to_jax, to_torch, dtype):
    """CosineAnnealingWarmRestarts stepped after every update with a fractional epoch (its
    documented scheduler.step(epoch + i / iters), or epoch + (i + 1) / iters), restarts
    included, handed over mid-epoch and back."""

    def make(model):
        optimizer = two_groups(model)
        return optimizer, lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=2, T_mult=t_mult, eta_min=1e-3
        )

    hand_over_and_back(make, dtype, 30, to_jax, to_torch, per_epoch=4, fractional=fractional)


def test_fractional_epochs_must_be_named_and_match_the_run():
    """Stepped with fractional epochs: refused without fractional_epochs, and with a
    steps_per_epoch that no update of the run matches."""
    iters = 4
    model = Net(torch.float64)
    optimizer = two_groups(model)
    scheduler = lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3)
    for k in range(6):
        torch_step(model, optimizer, k)
        scheduler.step(k // iters + (k % iters) / iters)
    with pytest.raises(ValueError, match=r"fractional epoch.*fractional_epochs='i'"):
        torch_interop.from_torch(optimizer, model, scheduler)
    with pytest.raises(ValueError, match=r"no update of a run stepping it with epoch \+ i / 3"):
        torch_interop.from_torch(optimizer, model, scheduler, steps_per_epoch=3,
                                 fractional_epochs="i")  # fmt: skip
    with pytest.raises(ValueError, match="step_in_epoch is read from the scheduler"):
        torch_interop.from_torch(optimizer, model, scheduler, steps_per_epoch=iters,
                                 step_in_epoch=1, fractional_epochs="i")  # fmt: skip
    step_lr = lr_scheduler.StepLR(two_groups(model), 2)
    with pytest.raises(TypeError, match="fractional_epochs is for a CosineAnnealingWarmRestarts"):
        torch_interop.from_torch(step_lr.optimizer, model, step_lr, steps_per_epoch=iters,
                                 fractional_epochs="i")  # fmt: skip


TIMM = "1.0.31"


@pytest.fixture(scope="module")
def timm_cosine(tmp_path_factory):
    """timm's CosineLRScheduler, its real code: the scheduler modules of timm's wheel from
    the package index, imported without timm's ``__init__`` (which imports torchvision for
    timm's models, and no CPU build of torchvision is on the index; its schedulers import
    only torch)."""
    where = tmp_path_factory.mktemp("timm")
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(where),
         f"timm=={TIMM}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if download.returncode:
        pytest.skip(f"timm {TIMM} could not be downloaded: {download.stderr[-300:]}")
    (wheel,) = where.glob("timm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(where, [n for n in archive.namelist() if n.startswith("timm/sched")])
    package = types.ModuleType("timm")
    package.__path__ = [str(where / "timm")]
    sys.modules["timm"] = package
    try:
        return importlib.import_module("timm.scheduler.cosine_lr").CosineLRScheduler
    finally:  # the class keeps its modules; nothing else sees this partial timm
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]


def timm_port(base, scale):
    """The sgdx schedule of timm's CosineLRScheduler(t_initial=12, lr_min=1e-3, warmup_t=4,
    warmup_lr_init=1e-3, warmup_prefix=True) over updates, for a group of lr ``base`` and
    ``lr_scale`` ``scale``: the warmup from its own lr, one cosine cycle, then the floor."""
    cosine = sgdx.schedules.cosine_annealing_lr(base, 12, 1e-3)
    floor = sgdx.schedules.constant_lr(1e-3, factor=1.0, total_iters=1)
    schedule = sgdx.schedules.warmup_from(
        sgdx.schedules.sequential([cosine, floor], [12]), 4, 1e-3, prefix=True
    )
    return lambda count: scale * schedule(count)


@pytest.mark.slow
def test_timms_cosine_scheduler_is_refused_and_continues_with_schedules_and_a_count(
    timm_cosine,
):
    """timm's CosineLRScheduler (a warmup from its own lr as a prefix, a floor after its
    cycle, a group scaled by lr_scale), stepped per update with step_update as timm's train
    loop does: from_torch refuses it by name and says what to pass; schedules= porting it
    with count= continue the run exactly; to_torch hands it back (lr_scale kept) and timm's
    own position is set with step_update(count)."""

    def make(model):
        optimizer = two_groups(model)  # lrs 0.3 and 0.1
        optimizer.param_groups[1]["lr_scale"] = 0.5
        return optimizer, timm_cosine(
            optimizer, t_initial=12, lr_min=1e-3, warmup_t=4, warmup_lr_init=1e-3,
            warmup_prefix=True, t_in_epochs=False,
        )  # fmt: skip

    (model, (optimizer, scheduler)), (reference, (ref_opt, ref_sched)) = [
        (net, make(net)) for net in (Net(torch.float64), Net(torch.float64))
    ]
    for k in range(7):
        for net, opt, sched in ((model, optimizer, scheduler), (reference, ref_opt, ref_sched)):
            torch_step(net, opt, k)
            sched.step_update(k + 1)
    with pytest.raises(TypeError, match=r"CosineLRScheduler is not one.*count="):
        torch_interop.from_torch(optimizer, model, scheduler)
    schedules = [timm_port(0.3, 1.0), timm_port(0.1, 0.5)]
    run = torch_interop.from_torch(optimizer, model, schedules=schedules, count=7)
    state, params = run.state, run.params
    for k in range(7, 20):
        torch_step(reference, ref_opt, k)
        ref_sched.step_update(k + 1)
        state, params = sgdx_step(run.tx, state, params, k)
        assert_same(params, state, reference, ref_opt, 1e-12, f"after update {k + 1}")

    checkpoint = torch_interop.to_torch(run, state, params)
    assert checkpoint.optimizer["param_groups"][1]["lr_scale"] == 0.5
    model = Net(torch.float64)
    optimizer, scheduler = make(model)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.step_update(20)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(checkpoint.parameters[name])
    for k in range(20, 26):
        for net, opt, sched in ((model, optimizer, scheduler), (reference, ref_opt, ref_sched)):
            torch_step(net, opt, k)
            sched.step_update(k + 1)
        for a, b in zip(optimizer.param_groups, ref_opt.param_groups, strict=True):
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
            close(a.detach().numpy(), b.detach().numpy(), 1e-12, f"{name} after {k + 1}")


def hf_linear(warmup, total):
    """transformers' get_linear_schedule_with_warmup factor, written with jax.numpy."""

    def factor(count):
        c = count.astype(jnp.float64)
        decay = jnp.maximum(0.0, (total - c) / max(1, total - warmup))
        return jnp.where(c < warmup, c / max(1, warmup), decay)

    return factor


def hf_cosine(warmup, total, cycles=0.5):
    """transformers' get_cosine_schedule_with_warmup factor, written with jax.numpy."""

    def factor(count):
        c = count.astype(jnp.float64)
        progress = (c - warmup) / max(1, total - warmup)
        cosine = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * cycles * 2.0 * progress)))
        return jnp.where(c < warmup, c / max(1, warmup), cosine)

    return factor


@pytest.mark.parametrize(("name", "port"), [("linear", hf_linear), ("cosine", hf_cosine)])
@pytest.mark.parametrize(("to_jax", "to_torch"), [(3, 9), (8, 17)])
def test_transformers_schedules_are_refused_and_continue_with_schedules(
    name, port, to_jax, to_torch
):
    """transformers' get_{linear,cosine}_schedule_with_warmup (its real code: a LambdaLR
    whose lambda uses math, which JAX cannot trace): from_torch refuses it and says to pass
    schedules=; the same factor written with jax.numpy continues the run exactly, mid-warmup
    and after it, and to_torch hands it back to transformers' scheduler."""
    transformers = pytest.importorskip("transformers")
    make_schedule = getattr(transformers, f"get_{name}_schedule_with_warmup")

    def make(model):
        optimizer = two_groups(model)  # lrs 0.3 and 0.1
        return optimizer, make_schedule(optimizer, num_warmup_steps=5, num_training_steps=20)

    model = Net(torch.float64)
    optimizer, scheduler = make(model)
    with pytest.raises(TypeError, match=r"cannot be traced by JAX.*schedules="):
        torch_interop.from_torch(optimizer, model, scheduler)
    factor = port(5, 20)
    schedules = [sgdx.schedules.lambda_lr(base, factor) for base in (0.3, 0.1)]
    hand_over_and_back(make, torch.float64, 24, to_jax, to_torch, schedules=schedules)


def test_extra_group_keys_go_back_to_torch():
    """timm's lr_scale / layer_decay and a user's key survive the round trip."""
    model = Net(torch.float64)
    optimizer = two_groups(model)
    optimizer.param_groups[0].update(lr_scale=0.445, layer_decay=0.75)
    optimizer.param_groups[1]["my_tag"] = "head"
    torch_step(model, optimizer, 0)
    run = torch_interop.from_torch(optimizer, model)
    state, params = sgdx_step(run.tx, run.state, run.params, 1)
    written = torch_interop.to_torch(run, state, params).optimizer["param_groups"]
    assert written[0]["lr_scale"] == 0.445 and written[0]["layer_decay"] == 0.75
    assert written[1]["my_tag"] == "head" and "lr_scale" not in written[1]
    restored = two_groups(Net(torch.float64))
    restored.load_state_dict(torch_interop.to_torch(run, state, params).optimizer)
    assert restored.param_groups[0]["lr_scale"] == 0.445


CHAINABLE = ["StepLR", "MultiStepLR", "ExponentialLR", "ConstantLR", "LinearLR", "PolynomialLR"]


def group_added_after(name):
    """A recipe that adds a param group after building the scheduler ``name``."""

    def make(model):
        named = list(model.named_parameters())
        optimizer = torch.optim.SGD([p for _, p in named[:2]], lr=0.1, momentum=0.9)
        scheduler = SCHEDULERS[name](optimizer)
        optimizer.add_param_group({"params": [p for _, p in named[2:]], "lr": 0.05})
        return optimizer, scheduler

    return make


@pytest.mark.parametrize("name", CHAINABLE)
def test_a_group_added_after_the_scheduler_hands_over_and_back(name):
    """The schedulers that multiply every group's lr drive a group added with
    add_param_group after they were built, from its own lr: so does sgdx's run."""
    hand_over_and_back(group_added_after(name), torch.float64, 20, 5, 12)


@pytest.mark.parametrize("name", ["CosineAnnealingLR", "LambdaLR", "CyclicLR exp_range"])
def test_a_scheduler_of_another_optimizer_or_one_torch_cannot_step_is_refused(name):
    """A group added after a scheduler that keeps per-group state (torch's own run fails on
    the new group within a cycle), and a scheduler of another optimizer, are refused."""
    model = Net(torch.float64)
    optimizer = two_groups(model)
    other = lr_scheduler.StepLR(two_groups(Net(torch.float64)), 3)
    with pytest.raises(ValueError, match="drives another optimizer"):
        torch_interop.from_torch(optimizer, model, other)
    optimizer, scheduler = group_added_after(name)(model)
    with pytest.raises(ValueError, match=r"add_param_group after the scheduler.*only a sched"):
        torch_interop.from_torch(optimizer, model, scheduler)


def test_to_torch_refuses_parameters_or_a_state_that_are_not_the_runs():
    model = Net(torch.float64)
    optimizer = two_groups(model)
    run = torch_interop.from_torch(optimizer, model)
    transposed = {**run.params, "fc1.weight": run.params["fc1.weight"].T}
    with pytest.raises(ValueError, match=r"'fc1.weight' is of shape \(5, 6\).*\(6, 5\)"):
        torch_interop.to_torch(run, run.state, transposed)
    other = torch_interop.from_torch(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"the state has groups \['0'\], the run \['0', '1'\]"):
        torch_interop.to_torch(run, other.state, run.params)


def test_momentum_buffers_given_as_arrays_or_lists_load():
    model = Net(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch_step(model, optimizer, 0)
    checkpoint = optimizer.state_dict()
    names = [n for n, _ in model.named_parameters()]
    params = {n: jnp.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9)
    flags = {"nesterov": False, "maximize": False}
    expected = torch_interop.load_state_dict(checkpoint, tx.init(params), params, names, **flags)
    for convert in (lambda t: t.numpy(), lambda t: t.numpy().tolist()):
        edited = {
            "state": {k: {"momentum_buffer": convert(v["momentum_buffer"])}
                      for k, v in checkpoint["state"].items()},
            "param_groups": checkpoint["param_groups"],
        }  # fmt: skip
        loaded = torch_interop.load_state_dict(edited, tx.init(params), params, names, **flags)
        chex.assert_trees_all_equal(loaded, expected)


def test_a_sparse_embedding_with_momentum_hands_over():
    """A sparse Embedding's momentum buffer is sparse in torch: handed over dense, with the
    same values, the next steps are torch's."""
    torch.manual_seed(0)
    model = torch.nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ids = [torch.tensor([1, 4, 4, 7]), torch.tensor([0, 4, 9]), torch.tensor([2, 7])]

    def torch_update(batch):
        optimizer.zero_grad()
        model(batch).pow(2).sum().backward()
        grad = model.weight.grad.to_dense().numpy().copy()
        optimizer.step()
        return grad

    torch_update(ids[0])
    run = torch_interop.from_torch(optimizer, model)
    state, params = run.state, run.params
    for batch in ids[1:]:
        grad = torch_update(batch)
        updates, state = run.tx.update({"weight": jnp.asarray(grad)}, state, params)
        params = sgdx.apply_updates(params, updates)
        np.testing.assert_allclose(params["weight"], model.weight.detach().numpy(), rtol=1e-12)


def test_a_parameter_without_requires_grad_stays_frozen_and_keeps_its_buffer():
    """fc1.bias trains for two updates (so it has a momentum buffer), then is frozen with
    requires_grad=False: torch never updates it or its buffer again. Handed over, sgdx
    given gradients for every parameter does the same, and the buffer goes back to torch."""
    model, reference = Net(torch.float64), Net(torch.float64)
    optimizer, ref_opt = two_groups(model), two_groups(reference)
    for k in range(4):
        if k == 2:
            model.fc1.bias.requires_grad_(False)
            reference.fc1.bias.requires_grad_(False)
        for net, opt in ((model, optimizer), (reference, ref_opt)):
            torch_step(net, opt, k, frozen=() if k < 2 else ("fc1.bias",))
    run = torch_interop.from_torch(optimizer, model)
    state, params = run.state, run.params
    for k in range(4, 9):
        torch_step(reference, ref_opt, k, frozen=("fc1.bias",))
        state, params = sgdx_step(run.tx, state, params, k)  # a gradient for every parameter
        assert_same(params, state, reference, ref_opt, 1e-12, f"after update {k + 1}")
    restored = two_groups(Net(torch.float64))
    restored.load_state_dict(torch_interop.to_torch(run, state, params).optimizer)
    buffer = restored.state[restored.param_groups[0]["params"][1]]["momentum_buffer"]
    np.testing.assert_array_equal(
        buffer.numpy(), ref_opt.state[reference.fc1.bias]["momentum_buffer"].numpy()
    )


# ----------------------------------------------- the contract, over random runs


# torch's nested SequentialLR / ChainedScheduler, built on one optimizer, apply their first
# steps twice (0.8 * 0.5 at the start where each child alone gives 0.5): until the first
# milestone no conversion follows it, and from_torch refuses a hand-over there
RANDOM_SCHEDULERS = {  # those of any group count, and two with one rule for all groups
    **{name: make for name, make in SCHEDULERS.items() if name not in ("OneCycleLR", "CyclicLR")},
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, 0.5, total_steps=40, three_phase=True),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.3, 3, 2),
}
_steps, _factors = st.integers(1, 6), st.sampled_from([0.1, 0.5, 0.9, 1.0])
RANDOM_ARGUMENTS = {  # drawn instead of the fixed ones, where a class takes them
    "StepLR": st.fixed_dictionaries({"step_size": _steps, "gamma": _factors}),
    "MultiStepLR": st.fixed_dictionaries(
        {"milestones": st.lists(st.integers(1, 12), max_size=4), "gamma": _factors}
    ),
    "ExponentialLR": st.fixed_dictionaries({"gamma": _factors}),
    "ConstantLR": st.fixed_dictionaries({"factor": _factors, "total_iters": _steps}),
    "LinearLR": st.fixed_dictionaries(
        {"start_factor": _factors, "end_factor": _factors, "total_iters": _steps}
    ),
    "PolynomialLR": st.fixed_dictionaries(
        {"total_iters": _steps, "power": st.sampled_from([0.5, 1.0, 2.0])}
    ),
    "CosineAnnealingLR": st.fixed_dictionaries(
        {"T_max": _steps, "eta_min": st.sampled_from([0.0, 1e-3])}
    ),
    "CosineAnnealingWarmRestarts": st.fixed_dictionaries(
        {"T_0": _steps, "T_mult": st.integers(1, 3), "eta_min": st.sampled_from([0.0, 1e-3])}
    ),
    "OneCycleLR": st.fixed_dictionaries(
        {
            "max_lr": st.sampled_from([0.1, 0.5]),
            "total_steps": st.integers(30, 60),
            "pct_start": st.sampled_from([0.1, 0.3, 0.5]),
            "anneal_strategy": st.sampled_from(["cos", "linear"]),
            "three_phase": st.booleans(),
        }
    ),
    "CyclicLR": st.fixed_dictionaries(
        {
            "base_lr": st.just(0.01),
            "max_lr": st.sampled_from([0.1, 0.3]),
            "step_size_up": _steps,
            "step_size_down": st.none() | _steps,
            "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
            "gamma": st.sampled_from([0.9, 1.0]),
        }
    ),
}


@st.composite
def runs(draw):
    """A torch run: 1-3 groups over Net's parameters with their own hyperparameters (and a
    key that is not SGD's; the last one possibly added after the scheduler), a scheduler
    (stepped per update, per epoch or with fractional epochs), where it is handed over and
    back."""
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    n_groups = draw(st.integers(1, 3))
    owner = [draw(st.integers(0, n_groups - 1)) for _ in range(6)]
    owner[:n_groups] = range(n_groups)  # no group is empty
    groups = []
    for _ in range(n_groups):
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        groups.append(
            {
                "lr": draw(st.sampled_from([0.01, 0.05, 0.2])),
                "momentum": momentum,
                "dampening": 0.0 if nesterov else draw(st.sampled_from([0.0, 0.3])),
                "weight_decay": draw(st.sampled_from([0.0, 1e-2])),
                "nesterov": nesterov,
                # float32 runs descend: an ascent grows the parameters geometrically, and
                # with them every one-ulp rounding difference, past any fixed tolerance
                "maximize": dtype == torch.float64 and draw(st.booleans()),
                "lr_scale": draw(st.sampled_from([0.5, 1.0])),
            }
        )
    to_jax = draw(st.integers(1, 8))
    to_torch = draw(st.integers(to_jax + 1, to_jax + 8))
    scheduler = draw(st.sampled_from(sorted(RANDOM_SCHEDULERS)))
    arguments = draw(RANDOM_ARGUMENTS[scheduler]) if scheduler in RANDOM_ARGUMENTS else None
    fractional = None  # CosineAnnealingWarmRestarts may be stepped with fractional epochs
    if scheduler == "CosineAnnealingWarmRestarts":
        fractional = draw(st.sampled_from([None, "i", "i + 1"]))
    # the last group added after the scheduler was built (those that drive such a group)
    added_late = n_groups > 1 and scheduler in CHAINABLE and draw(st.booleans())
    return dict(
        arguments=arguments,
        added_late=added_late,
        owner=owner,
        groups=groups,
        scheduler=scheduler,
        fractional=fractional,
        per_epoch=3 if fractional else draw(st.sampled_from([None, 3])),
        dtype=dtype,
        to_jax=to_jax,
        to_torch=to_torch,
        frozen_until=draw(st.sampled_from([0, 3])),
    )


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@given(runs())
def test_random_runs_hand_over_both_ways_with_torchs_numbers(run):
    """Every case of the contract: handed to sgdx at a random update and back at another,
    every later parameter, buffer, learning rate and momentum is the uninterrupted torch
    run's (float64 1e-12, float32 1e-6 of each leaf's scale)."""

    def make(model):
        named = list(model.named_parameters())
        param_groups = [
            {"params": [p for (_, p), o in zip(named, run["owner"], strict=True) if o == g], **c}
            for g, c in enumerate(run["groups"])
        ]
        late = param_groups.pop() if run["added_late"] else None
        optimizer = torch.optim.SGD(param_groups, lr=0.1)
        if run["arguments"] is None:
            scheduler = RANDOM_SCHEDULERS[run["scheduler"]](optimizer)
        else:
            kind = getattr(lr_scheduler, run["scheduler"])
            scheduler = kind(optimizer, **run["arguments"])
        if late is not None:
            optimizer.add_param_group(late)
        return optimizer, scheduler

    with jax.numpy_dtype_promotion("standard"):  # the lambdas' float ** int, as users write
        hand_over_and_back(
            make,
            run["dtype"],
            total=run["to_torch"] + 5,
            to_jax=run["to_jax"],
            to_torch=run["to_torch"],
            per_epoch=run["per_epoch"],
            frozen_until=run["frozen_until"],
            fractional=run["fractional"],
        )


def test_a_parameter_in_two_groups_is_refused_with_torchs_words():
    model = Net(torch.float64)
    optimizer = two_groups(model)
    torch_step(model, optimizer, 0)
    checkpoint = optimizer.state_dict()
    checkpoint["param_groups"][1]["params"] = [0, *checkpoint["param_groups"][1]["params"]]
    run = torch_interop.from_torch(optimizer, model)
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=r"more than one parameter group: parameter 0 is in "
                                         r"param_groups\[0\] and param_groups\[1\]"):  # fmt: skip
        torch_interop.load_state_dict(
            checkpoint, run.state, run.params, names, nesterov=False, maximize=False
        )


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize(("to_jax", "to_torch"), [(0, 3), (2, 5), (4, 9), (8, 12)])
def test_nested_schedulers_on_one_optimizer_hand_over_before_and_after_the_milestone(
    to_jax, to_torch
):
    """Schedulers nested on one optimizer take their first steps twice (torch's lr is 0.04,
    not 0.05, after a ChainedScheduler of ConstantLR(0.5) and ExponentialLR(0.8) is built
    inside a SequentialLR), which their state does not show: the multiplying ones go on
    from the group's lr, so the hand-over is exact before the milestone and after it."""

    def make(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return optimizer, SCHEDULERS["SequentialLR of ChainedScheduler"](optimizer)

    hand_over_and_back(make, torch.float64, 16, to_jax, to_torch)


def lr_set_by_hand(scheduler_of):
    """A torch run whose lr was set by hand after 3 updates; a copy of it stepped on."""
    model = Net(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = scheduler_of(optimizer)
    for k in range(5):
        torch_step(model, optimizer, k)
        scheduler.step()
        if k == 2:
            optimizer.param_groups[0]["lr"] = 0.02
    return model, optimizer, scheduler


def test_an_lr_set_by_hand_goes_on_as_torch_takes_it_or_is_refused():
    """A StepLR multiplies the lr it finds, so a hand-set lr goes on as in torch; a
    CosineAnnealingLR's conversion (its closed form) does not see it: checked against
    torch's own scheduler, stepped on a copy, it is refused, naming the group, the step and
    both values."""
    model, optimizer, scheduler = lr_set_by_hand(lambda o: lr_scheduler.StepLR(o, 2, 0.5))
    reference = copy.deepcopy((model, optimizer, scheduler))
    run = torch_interop.from_torch(optimizer, model, scheduler)
    state, params = run.state, run.params
    for k in range(5, 15):
        torch_step(reference[0], reference[1], k)
        reference[2].step()
        state, params = sgdx_step(run.tx, state, params, k)
        assert_same(params, state, reference[0], reference[1], 1e-12, f"after update {k + 1}")

    model, optimizer, scheduler = lr_set_by_hand(lambda o: lr_scheduler.CosineAnnealingLR(o, 8))
    with pytest.raises(
        ValueError,
        match=r"param group 0's lr to 0\.0\d+ at scheduler step 6, where its conversion gives "
        r"0\.0\d+ \(torch's own scheduler, stepped on a copy, is the reference",
    ):
        torch_interop.from_torch(optimizer, model, scheduler)


PLATEAU_X64_OFF = """
import json, warnings
import jax, torch
import sgdx
from sgdx.interop import torch as torch_interop

assert not jax.config.jax_enable_x64  # JAX's default: no float64 arrays
warnings.simplefilter("ignore")  # torch's "scheduler.step() before optimizer.step()"


def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return model, optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=1, threshold=0.0, threshold_mode="abs"
    )


# improvements that float32 cannot see (0.70000001 is 0.7 in float32)
METRICS = [0.6, 0.7, 0.7, 0.70000001, 0.7, 0.7, 0.70000002, 0.7, 0.70000003, 0.7, 0.7]
(model, optimizer, scheduler), (_, ref_opt, ref_sched) = make(), make()
for metric in METRICS[:2]:
    scheduler.step(metric)
    ref_sched.step(metric)
run = torch_interop.from_torch(optimizer, model, scheduler)
state, plateau_state, steps = run.state, run.plateau_state, []
for metric in METRICS[2:]:
    ref_sched.step(metric)
    plateau_state, state = run.plateau.step(plateau_state, state, metric)
    lr = float(sgdx.get_hyperparams(state, group="0")["learning_rate"])
    steps.append([ref_opt.param_groups[0]["lr"], lr, ref_sched.best, float(plateau_state.best)])
back = torch_interop.to_torch(run, state, run.params, plateau_state).scheduler["best"]
print(json.dumps({"steps": steps, "best_back": back, "torch_best": ref_sched.best}))
"""


def test_plateau_compares_in_float64_with_x64_off_as_torch_does():
    """With JAX's x64 off, the plateau stepped between updates keeps torch's Python-float
    best and compares metrics in float64: improvements that float32 would miss cut the lr
    when torch does, and to_torch writes torch's best back unrounded."""
    out = processes.report(["-c", PLATEAU_X64_OFF])
    for torch_lr, lr, torch_best, best in out["steps"]:
        assert lr == np.float32(torch_lr) and best == torch_best
    assert [s[0] for s in out["steps"]].count(0.25) > 0  # a cut happened
    assert out["best_back"] == out["torch_best"] == 0.70000003
