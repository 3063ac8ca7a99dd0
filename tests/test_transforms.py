"""Hand-worked expected values for each primitive, computed on paper from the update rules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import sgdx


def run(tx, grads, params=None, dtype=jnp.float64):
    """Updates for a sequence of scalar gradients, params fixed (pure transform check)."""
    p = jnp.asarray(0.0 if params is None else params, dtype)
    state = tx.init(p)
    out = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, dtype), state, p)
        out.append(float(updates))
    return out, state


def descend(tx, grads, p0):
    """Parameters after each step, the gradient sequence given up front."""
    p = jnp.asarray(p0, jnp.float64)
    state = tx.init(p)
    out = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float64), state, p)
        p = sgdx.apply_updates(p, updates)
        out.append(float(p))
    return out


def test_maximize_negates():
    assert run(sgdx.maximize(), [1.5, -2.0])[0] == [-1.5, 2.0]


def test_add_decayed_weights():
    # g + wd * p = 1 + 0.5 * 4
    assert run(sgdx.add_decayed_weights(0.5), [1.0], params=4.0)[0] == [3.0]


def test_add_decayed_weights_mask_function_and_zero_decay_keeps_inf():
    params = {"w": jnp.array([jnp.inf]), "b": jnp.array([2.0])}
    grads = {"w": jnp.array([1.0]), "b": jnp.array([1.0])}
    tx = sgdx.add_decayed_weights(jnp.asarray(0.0))  # traced 0: skipped, so no 0 * inf = NaN
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(updates["w"][0]) == 1.0
    tx = sgdx.add_decayed_weights(0.25, mask=lambda p: {"w": False, "b": True})
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(updates["w"][0]) == 1.0 and float(updates["b"][0]) == 1.5


def test_trace_first_step_copies_gradient_then_dampens():
    # buf = 2 (first update: no dampening), then 0.9 * 2 + (1 - 0.5) * 4 = 3.8,
    # then 0.9 * 3.8 + 0.5 * 0 = 3.42
    updates, state = run(sgdx.trace(0.9, dampening=0.5), [2.0, 4.0, 0.0])
    np.testing.assert_allclose(updates, [2.0, 3.8, 3.42], rtol=1e-15)
    assert state.initialized.tolist() == [True]


def test_trace_nesterov():
    # buf = 1, u = 1 + 0.5 * 1 = 1.5; buf = 0.5 * 1 + 2 = 2.5, u = 2 + 0.5 * 2.5 = 3.25
    updates, _ = run(sgdx.trace(0.5, nesterov=True), [1.0, 2.0])
    np.testing.assert_allclose(updates, [1.5, 3.25], rtol=1e-15)


def test_traced_zero_momentum_is_torch_no_momentum():
    # torch skips the momentum branch for momentum == 0: no dampening, no buffer
    updates, state = run(sgdx.trace(jnp.asarray(0.0), dampening=0.5), [2.0, 4.0])
    assert updates == [2.0, 4.0]
    assert state.initialized.tolist() == [False]


def test_sgd_maximize_with_weight_decay():
    # step 1: -1 + 0.5 * 2 = 0 -> p stays 2; step 2: -3 + 0.5 * 2 = -2 -> p = 2 + 0.1 * 2 = 2.2
    np.testing.assert_allclose(
        descend(sgdx.sgd(0.1, weight_decay=0.5, maximize=True), [1.0, 3.0], 2.0),
        [2.0, 2.2],
        rtol=1e-15,
    )


def test_sgd_nesterov_steps():
    # p = 1 - 0.1 * 1.5 = 0.85, then 0.85 - 0.1 * 3.25 = 0.525
    np.testing.assert_allclose(
        descend(sgdx.sgd(0.1, momentum=0.5, nesterov=True), [1.0, 2.0], 1.0),
        [0.85, 0.525],
        rtol=1e-15,
    )


def test_two_conventions_closed_form():
    """g = 1, momentum 0.9, lr 0.1 then 0.01. PyTorch: buf = 1, 1.9, so p = -0.1, then
    -0.1 - 0.01 * 1.9 = -0.119. Sutskever: v = -0.1, then 0.9 * -0.1 - 0.01 = -0.1,
    so p = -0.2."""
    schedule = lambda count: jnp.where(count == 0, 0.1, 0.01)  # noqa: E731
    pytorch = descend(sgdx.sgd(schedule, momentum=0.9), [1.0, 1.0], 0.0)
    sutskever = descend(sgdx.sgd(schedule, momentum=0.9, convention="sutskever"), [1.0, 1.0], 0.0)
    np.testing.assert_allclose(pytorch, [-0.1, -0.119], rtol=1e-14)
    np.testing.assert_allclose(sutskever, [-0.1, -0.2], rtol=1e-14)


def test_sutskever_dampening_and_nesterov():
    # lr 0.1, m 0.5, d 0.5: v = -0.1 * 2 = -0.2; v = 0.5 * -0.2 - 0.1 * 0.5 * 4 = -0.3
    updates, _ = run(sgdx.sutskever_trace(0.1, 0.5, dampening=0.5), [2.0, 4.0])
    np.testing.assert_allclose(updates, [-0.2, -0.3], rtol=1e-15)
    # nesterov: v = -0.1, u = 0.5 * -0.1 - 0.1 = -0.15; v = -0.05 - 0.2 = -0.25,
    # u = 0.5 * -0.25 - 0.2 = -0.325
    updates, _ = run(sgdx.sutskever_trace(0.1, 0.5, nesterov=True), [1.0, 2.0])
    np.testing.assert_allclose(updates, [-0.15, -0.325], rtol=1e-15)


def test_scale_by_learning_rate_schedule_sees_updates_applied():
    seen = []
    tx = sgdx.scale_by_learning_rate(lambda count: seen.append(int(count)) or 0.5)
    updates, state = run(tx, [1.0, 1.0, 1.0])
    assert seen == [0, 1, 2] and updates == [-0.5] * 3 and int(state.count) == 3


def test_count_saturates_instead_of_wrapping():
    tx = sgdx.scale_by_learning_rate(lambda count: 0.1)
    state = sgdx.ScaleByLearningRateState(count=jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    _, state = tx.update(jnp.ones(1), state)
    assert int(state.count) == np.iinfo(np.int32).max


@pytest.mark.parametrize("lr", [0.1, jnp.asarray(0.1), jnp.asarray([0.1])])
def test_learning_rate_forms(lr):
    updates, _ = run(sgdx.scale_by_learning_rate(lr), [2.0])
    np.testing.assert_allclose(updates, [-0.2], rtol=1e-7)


def test_a_fixed_learning_rate_keeps_no_count_and_a_schedule_one():
    """As optax's scale / scale_by_schedule: the count is the schedule's, so a wrapper that
    schedules (inject_hyperparams) holds the only one."""
    params = jnp.zeros(1)
    assert sgdx.scale_by_learning_rate(0.1).init(params) == sgdx.EmptyState()
    state = sgdx.scale_by_learning_rate(lambda count: 0.1).init(params)
    assert isinstance(state, sgdx.ScaleByLearningRateState) and int(state.count) == 0
