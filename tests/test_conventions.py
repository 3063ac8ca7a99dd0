"""The Sutskever convention against real Keras 3 (JAX backend), exact conversion between
the conventions, and momentum correction."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sgdx
from sgdx import conventions
from tests import oracle


def keras_run(problem, lrs, dtype, *, momentum, nesterov, weight_decay, steps=oracle.STEPS):
    """Steps keras.optimizers.SGD (JAX backend) through the oracle problem."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")

    class Table(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.take(jnp.asarray(lrs), step)

    variables = {
        k: keras.Variable(v, dtype=np.dtype(dtype).name) for k, v in problem["params"].items()
    }
    optimizer = keras.optimizers.SGD(
        learning_rate=Table(),
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay or None,
    )
    optimizer.build(list(variables.values()))
    out = {f"param/{k}": [] for k in variables}
    for k in range(steps):
        current = {name: np.asarray(v.value) for name, v in variables.items()}
        grads = oracle.gradient(problem, current, k)
        optimizer.apply([jnp.asarray(grads[name]) for name in variables], list(variables.values()))
        for name, v in variables.items():
            out[f"param/{name}"].append(np.asarray(v.value))
    return {key: np.stack(value) for key, value in out.items()}


def sgdx_params_run(tx, problem, steps=oracle.STEPS):
    run = oracle.run_sgdx(tx, problem, steps)
    return {k: v for k, v in run.items() if k.startswith("param/")}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05], ids=["no-decay", "decoupled-decay"])
def test_sutskever_matches_keras(dtype, nesterov, weight_decay):
    problem = oracle.make_problem(6, dtype)
    lrs = oracle.learning_rates({"lr": 0.05})  # 0.05, then 0.005 from step 12
    expected = keras_run(
        problem, lrs, dtype, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay
    )
    tx = sgdx.sgd(
        lambda count: jnp.asarray(lrs)[count],
        momentum=0.9,
        nesterov=nesterov,
        weight_decay=weight_decay,
        decoupled_weight_decay=True,
        convention="sutskever",
    )
    oracle.assert_trajectories_close(sgdx_params_run(tx, problem), expected)


def pytorch_and_sutskever(lr, **kwargs):
    return (
        sgdx.sgd(lr, convention="pytorch", **kwargs),
        sgdx.sgd(lr, convention="sutskever", **kwargs),
    )


def steps(tx, params, state, grads):
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = sgdx.apply_updates(params, updates)
    return params, state


def gradient_sequence(n, seed=7):
    rng = np.random.default_rng(seed)
    return [
        {"w": jnp.asarray(rng.normal(size=(3, 2))), "b": jnp.asarray(rng.normal(size=2))}
        for _ in range(n)
    ]


PARAMS = {"w": jnp.ones((3, 2), jnp.float64), "b": jnp.zeros(2, jnp.float64)}


@pytest.mark.parametrize("lr", [0.25, 0.1])
def test_conversion_round_trips(lr):
    """Bitwise when lr is a power of two; otherwise within one rounding of the division."""
    pytorch, _ = pytorch_and_sutskever(lr, momentum=0.9, weight_decay=0.01)
    _, state = steps(pytorch, PARAMS, pytorch.init(PARAMS), gradient_sequence(3))
    back = conventions.sutskever_to_pytorch(conventions.pytorch_to_sutskever(state, lr), lr)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        if lr == 0.25:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=2 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("nesterov", [False, True])
def test_switching_convention_mid_run_continues_the_trajectory(nesterov):
    lr, grads = 0.05, gradient_sequence(10)
    pytorch, sutskever = pytorch_and_sutskever(lr, momentum=0.9, nesterov=nesterov)
    reference, _ = steps(pytorch, PARAMS, pytorch.init(PARAMS), grads)

    halfway, state = steps(pytorch, PARAMS, pytorch.init(PARAMS), grads[:5])
    switched, _ = steps(sutskever, halfway, conventions.pytorch_to_sutskever(state, lr), grads[5:])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13), switched, reference)

    halfway, state = steps(sutskever, PARAMS, sutskever.init(PARAMS), grads[:5])
    switched, _ = steps(pytorch, halfway, conventions.sutskever_to_pytorch(state, lr), grads[5:])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13), switched, reference)


def test_conversion_keeps_unstarted_buffers_and_rejects_other_states():
    pytorch, _ = pytorch_and_sutskever(0.1, momentum=0.9)
    grads = {"w": jnp.ones((3, 2), jnp.float64), "b": None}
    _, state = steps(pytorch, PARAMS, pytorch.init(PARAMS), [grads])
    converted = conventions.pytorch_to_sutskever(state, 0.1)
    assert converted.momentum.initialized.tolist() == [False, True]  # leaves "b", "w"
    np.testing.assert_array_equal(converted.momentum.velocity["w"], -0.1 * np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"convention='pytorch'\) with momentum"):
        conventions.pytorch_to_sutskever(sgdx.sgd(0.1).init(PARAMS), 0.1)
    with pytest.raises(ValueError, match=r"convention='sutskever'\) with momentum"):
        conventions.sutskever_to_pytorch(state, 0.1)
    with pytest.raises(TypeError, match=r"expected the state of sgdx\.sgd"):
        conventions.sutskever_to_pytorch(state.momentum, 0.1)


def closed_form(lrs, grad, momentum):
    """Both conventions' positions for a constant gradient g from p = 0, in float64.

    PyTorch: b_k = g * (1 + m + ... + m^(k-1)); p_N = -sum_k lr_k b_k.
    Sutskever: v_k = -g * sum_{j<=k} m^(k-j) lr_j; p_N = sum_k v_k.
    """
    pytorch, sutskever, p_pt, p_sk = [], [], 0.0, 0.0
    for k in range(1, len(lrs) + 1):
        p_pt -= lrs[k - 1] * grad * sum(momentum**j for j in range(k))
        p_sk -= grad * sum(momentum ** (k - j) * lrs[j - 1] for j in range(1, k + 1))
        pytorch.append(p_pt)
        sutskever.append(p_sk)
    return np.asarray(pytorch), np.asarray(sutskever)


def test_two_conventions_follow_their_closed_forms_under_a_schedule():
    lrs = np.asarray([0.1, 0.1, 0.1, 0.01, 0.01, 0.05, 0.05, 0.001])
    pytorch, sutskever = pytorch_and_sutskever(lambda c: jnp.asarray(lrs)[c], momentum=0.9)
    expected_pt, expected_sk = closed_form(lrs, 1.0, 0.9)
    for tx, expected in ((pytorch, expected_pt), (sutskever, expected_sk)):
        p, state, path = jnp.zeros((), jnp.float64), tx.init(jnp.zeros((), jnp.float64)), []
        for _ in lrs:
            updates, state = tx.update(jnp.ones((), jnp.float64), state, p)
            p = sgdx.apply_updates(p, updates)
            path.append(float(p))
        np.testing.assert_allclose(path, expected, rtol=1e-13)
    assert closed_form([0.1, 0.01], 1.0, 0.9)[0][-1] == pytest.approx(-0.119)
    assert closed_form([0.1, 0.01], 1.0, 0.9)[1][-1] == pytest.approx(-0.2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05, "maximize": True},
    ],
    ids=["momentum", "nesterov", "dampening"],
)
def test_momentum_correction_reproduces_torch_under_a_step_schedule(kwargs, dtype):
    """With correction the Sutskever run is torch's; without it, it is not."""
    pytest.importorskip("torch")
    problem = oracle.make_problem(8, dtype, maximize=kwargs.get("maximize", False))
    lrs = oracle.learning_rates({"lr": 0.05})
    schedule = lambda count: jnp.asarray(lrs)[count]  # noqa: E731
    torch_run = oracle.run_torch({"lr": 0.05, **kwargs}, problem, dtype)
    torch_params = {k: v for k, v in torch_run.items() if k.startswith("param/")}
    corrected = sgdx.sgd(schedule, **kwargs, convention="sutskever", momentum_correction=True)
    oracle.assert_trajectories_close(sgdx_params_run(corrected, problem), torch_params)

    uncorrected = sgdx_params_run(sgdx.sgd(schedule, **kwargs, convention="sutskever"), problem)
    after_switch = oracle.LR_SWITCH + 1
    gap = max(
        np.max(np.abs(uncorrected[k][after_switch:] - torch_params[k][after_switch:]))
        for k in torch_params
    )
    assert gap > 1e-3


def test_momentum_correction_needs_the_sutskever_convention():
    with pytest.raises(ValueError, match="momentum_correction applies to convention='sutskever'"):
        sgdx.sgd(0.1, 0.9, momentum_correction=True)


@given(
    lrs=st.lists(st.floats(1e-3, 0.5), min_size=2, max_size=12),
    momentum=st.floats(0.05, 0.99),
    dampening=st.sampled_from([0.0, 0.3]),
    nesterov=st.booleans(),
)
def test_momentum_correction_follows_pytorch_under_any_schedule(lrs, momentum, dampening, nesterov):
    nesterov = nesterov and dampening == 0
    schedule = lambda count: jnp.asarray(lrs)[count]  # noqa: E731
    kwargs = {"momentum": momentum, "dampening": dampening, "nesterov": nesterov}
    pytorch = sgdx.sgd(schedule, **kwargs)
    corrected = sgdx.sgd(schedule, **kwargs, convention="sutskever", momentum_correction=True)
    grads = gradient_sequence(len(lrs), seed=len(lrs))
    expected, _ = steps(pytorch, PARAMS, pytorch.init(PARAMS), grads)
    actual, _ = steps(corrected, PARAMS, corrected.init(PARAMS), grads)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), actual, expected
    )
