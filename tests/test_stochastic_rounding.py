"""Stochastic rounding of low-precision parameters: unbiased, progress where round to nearest
stalls, reproducible from its seed, and the same under jit, vmap and sharding."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx
from tests import processes


def _spacing(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The neighbours lo <= x < hi of float32 values ``x`` in ``dtype``, found in numpy."""
    nearest = x.astype(dtype)
    below = nearest.astype(np.float64) > x
    other = np.nextafter(nearest, np.where(below, -np.inf, np.inf).astype(dtype))
    lo = np.where(below, other, nearest).astype(np.float64)
    hi = np.where(below, nearest, other).astype(np.float64)
    return lo, hi


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_rounding_is_unbiased(dtype):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(16) * 10.0 ** rng.integers(-3, 3, 16)).astype(np.float32)
    draws = 20_000
    x = jnp.asarray(np.repeat(values[:, None], draws, axis=1))
    rounded = np.asarray(sgdx.round_stochastically(x, dtype, jax.random.key(1)), np.float64)
    lo, hi = _spacing(values.astype(np.float64), np.dtype(dtype))
    assert np.all((rounded == lo[:, None]) | (rounded == hi[:, None]))  # only the neighbours
    p = (values - lo) / (hi - lo)
    standard_error = (hi - lo) * np.sqrt(p * (1 - p) / draws)
    error = np.abs(rounded.mean(axis=1) - values)
    assert np.all(error <= 5 * standard_error + 1e-12), (error, standard_error)


def test_values_of_the_dtype_and_non_finite_values_are_kept():
    exact = jnp.asarray([1.0, -0.5, 0.0, 3.0, jnp.inf, -jnp.inf, jnp.nan, 3.4e38], jnp.float32)
    rounded = sgdx.round_stochastically(exact, jnp.bfloat16, jax.random.key(0))
    np.testing.assert_array_equal(
        np.asarray(rounded, np.float32), np.asarray(exact.astype(jnp.bfloat16), np.float32)
    )


def _run(tx, params, grad, steps):
    @jax.jit
    def run(params, state):
        def body(carry, _):
            params, state = carry
            grads = jax.tree.map(lambda p: jnp.full_like(p, grad), params)
            return sgdx.step(tx, params, grads, state), None

        return jax.lax.scan(body, (params, state), None, length=steps)[0]

    return run(params, tx.init(params))


def test_progress_where_round_to_nearest_stalls():
    """lr * grad = 1e-4 is a 40th of bfloat16's spacing below 1 (2**-8): nearest rounding
    never moves the weight; stochastic rounding follows float32 (0.9 after 1000 steps)."""
    steps, lr = 1000, 1e-4
    w = jnp.ones(4096, jnp.bfloat16)
    reference, _ = _run(sgdx.sgd(lr), jnp.ones(4096, jnp.float32), 1.0, steps)
    nearest, _ = _run(sgdx.sgd(lr), w, 1.0, steps)
    stochastic, _ = _run(sgdx.sgd(lr, stochastic_rounding=True), w, 1.0, steps)
    assert np.all(np.asarray(nearest, np.float32) == 1.0)
    target = float(reference[0])
    assert abs(target - 0.9) < 1e-4  # float32 accumulates its own rounding
    mean = float(np.asarray(stochastic, np.float64).mean())
    assert abs(mean - target) < 2e-3, mean  # the spacing is 2**-8 (3.9e-3) here
    # with momentum and float32 buffers too
    tx = sgdx.sgd(lr, momentum=0.5, accumulator_dtype=jnp.float32, stochastic_rounding=True)
    with_momentum, _ = _run(tx, w, 1.0, steps)
    reference, _ = _run(sgdx.sgd(lr, momentum=0.5), jnp.ones(4096, jnp.float32), 1.0, steps)
    assert abs(float(np.asarray(with_momentum, np.float64).mean()) - float(reference[0])) < 2e-3


def test_reproducible_from_the_seed_and_resumable():
    params = {"w": jnp.ones((8, 8), jnp.bfloat16), "b": jnp.zeros(8, jnp.float16)}
    tx = sgdx.sgd(1e-3, momentum=0.9, stochastic_rounding=True, seed=7)
    first, state = _run(tx, params, 0.3, 20)
    again, _ = _run(tx, params, 0.3, 20)
    other, _ = _run(sgdx.sgd(1e-3, momentum=0.9, stochastic_rounding=True, seed=8), params, 0.3, 20)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(np.asarray(first["w"]), np.asarray(other["w"]))
    # 10 steps, then 10 more from the state: the same as 20 at once
    half, half_state = _run(tx, params, 0.3, 10)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    step = jax.jit(sgdx.step, static_argnums=0)
    for _ in range(10):
        half, half_state = step(tx, half, grads, half_state)
    jax.tree.map(np.testing.assert_array_equal, first, half)
    jax.tree.map(np.testing.assert_array_equal, state, half_state)


def test_eager_jit_step_and_update_agree():
    params = {"w": jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16), "f": jnp.ones(3, jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    tx = sgdx.sgd(0.1, momentum=0.9, weight_decay=1e-2, stochastic_rounding=True)
    state = tx.init(params)
    updates, eager_state = tx.update(grads, state, params)
    eager = sgdx.apply_updates(params, updates)
    jitted, jit_state = jax.jit(sgdx.step, static_argnums=0)(tx, params, grads, state)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)
    jax.tree.map(np.testing.assert_array_equal, eager_state, jit_state)
    # float32 parameters are not touched by the rounding
    plain = sgdx.sgd(0.1, momentum=0.9, weight_decay=1e-2)
    expected, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_array_equal(updates["f"], expected["f"])
    # every bfloat16 result is one of the two neighbours of the float32 value
    x = np.asarray(params["w"], np.float32) + np.asarray(expected["w"], np.float32)
    lo, hi = _spacing(x, np.dtype(jnp.bfloat16))
    got = np.asarray(eager["w"], np.float64)
    assert np.all((got == lo) | (got == hi))


def test_vmap_over_a_batch_of_models():
    params = jnp.ones((4, 32), jnp.bfloat16)
    grads = jnp.full((4, 32), 0.3, jnp.bfloat16)
    tx = sgdx.sgd(1e-3, stochastic_rounding=True)
    states = jax.vmap(tx.init)(params)
    batched, _ = jax.vmap(lambda p, g, s: sgdx.step(tx, p, g, s))(params, grads, states)
    single, _ = sgdx.step(tx, params[0], grads[0], tx.init(params[0]))
    for row in batched:  # the same seed in each model: the same noise
        np.testing.assert_array_equal(row, single)


def test_misuse():
    with pytest.raises(TypeError, match="seed must be an integer"):
        sgdx.sgd(0.1, stochastic_rounding=True, seed=0.5)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
        sgdx.sgd(0.1, stochastic_rounding=True, seed=-1)
    with pytest.raises(TypeError, match="stochastic_rounding must be a bool"):
        sgdx.sgd(0.1, stochastic_rounding=1)
    tx = sgdx.stochastic_rounding()
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    with pytest.raises(ValueError, match="fused=True needs"):
        sgdx.sgd(0.1, 0.9, stochastic_rounding=True, fused=True)


def test_inject_hyperparams_keeps_the_seed_fixed():
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9, stochastic_rounding=True, seed=3)
    params = jnp.ones(8, jnp.bfloat16)
    state = tx.init(params)
    assert "seed" not in state.hyperparams
    direct = sgdx.sgd(0.1, momentum=0.9, stochastic_rounding=True, seed=3)
    got, _ = sgdx.step(tx, params, jnp.full(8, 0.01, jnp.bfloat16), state)
    want, _ = sgdx.step(direct, params, jnp.full(8, 0.01, jnp.bfloat16), direct.init(params))
    np.testing.assert_array_equal(got, want)


SHARDED = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np, sgdx
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((4,), ("data",))
    params = jnp.linspace(-1, 1, 64 * 8, dtype=jnp.float32).reshape(64, 8).astype(jnp.bfloat16)
    grads = jnp.full((64, 8), 0.01, jnp.bfloat16)
    tx = sgdx.sgd(1e-2, momentum=0.9, accumulator_dtype=jnp.float32, stochastic_rounding=True)
    step = jax.jit(sgdx.step, static_argnums=0)
    single, state = params, tx.init(params)
    for _ in range(5):
        single, state = step(tx, single, grads, state)
    sharded = jax.device_put(params, NamedSharding(mesh, P("data")))
    g = jax.device_put(grads, NamedSharding(mesh, P("data")))
    s = tx.init(sharded)
    for _ in range(5):
        sharded, s = step(tx, sharded, g, s)
    print(json.dumps({
        "equal": bool(np.array_equal(np.asarray(single), np.asarray(sharded))),
        "sharded": sharded.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2),
        "moved": bool((np.asarray(single) != np.asarray(params)).any()),
    }))
    """
)


def test_sharded_parameters_round_as_unsharded_ones():
    found = processes.report(["-c", SHARDED], processes.environment(4))
    assert found == {"equal": True, "sharded": True, "moved": True}
