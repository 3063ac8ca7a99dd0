"""`chain`, `identity` and `apply_updates`."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import pytest

import sgdx


def test_chain_applies_in_order_and_keeps_one_state_per_transform():
    tx = sgdx.chain(sgdx.maximize(), sgdx.trace(0.5), sgdx.scale_by_learning_rate(0.1))
    params = jnp.zeros(2)
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 3
    updates, state = tx.update(jnp.asarray([1.0, 2.0]), state, params)
    chex.assert_trees_all_close(updates, jnp.asarray([0.1, 0.2]))
    _, trace_state, _ = state
    chex.assert_trees_all_close(trace_state.momentum_buffer, jnp.asarray([-1.0, -2.0]))


def test_chain_forwards_extra_args_only_when_given():
    seen = []

    def update(updates, state, params=None, **extra):
        seen.append(extra)
        return updates, state

    tx = sgdx.chain(sgdx.GradientTransformation(lambda p: (), update))
    tx.update(jnp.ones(1), tx.init(None))
    tx.update(jnp.ones(1), tx.init(None), value=jnp.ones(()))
    assert seen == [{}, {"value": jnp.ones(())}]


def test_empty_chain_and_identity_pass_updates_through():
    for tx in (sgdx.chain(), sgdx.identity()):
        updates, _ = tx.update({"a": jnp.ones(2), "b": None}, tx.init(None))
        assert updates["b"] is None
        chex.assert_trees_all_equal(updates["a"], jnp.ones(2))


def test_apply_updates_skips_none_and_keeps_dtype():
    params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
    new = sgdx.apply_updates(params, {"a": jnp.full(2, 0.5, jnp.float32), "b": None})
    assert new["a"].dtype == jnp.bfloat16
    chex.assert_trees_all_equal(new["a"], jnp.full(2, 1.5, jnp.bfloat16))
    assert new["b"] is params["b"]


@pytest.mark.parametrize(
    "tx",
    [sgdx.maximize(), sgdx.trace(0.9), sgdx.sgd(0.1, 0.9, weight_decay=0.1)],
    ids=["maximize", "trace", "sgd"],
)
def test_none_gradient_leaves_pass_through(tx):
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = tx.init(params)
    updates, new_state = tx.update({"a": None, "b": jnp.ones(3)}, state, params)
    assert updates["a"] is None
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
