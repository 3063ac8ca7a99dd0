"""JAX behaviour over every configuration: jit without retracing, stable state under
lax.scan, vmap, abstract init, gradients through hyperparameters, dtypes, convergence."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx
from tests import oracle
from tests.compiles import counted

CONVENTIONS = ["pytorch", "sutskever"]
CONFIG_IDS = [n for n, _ in oracle.CONFIGS]


def make_sgd(kwargs, convention="pytorch", **extra):
    options = {k: v for k, v in kwargs.items() if k != "lr"}
    lr = kwargs.get("lr", oracle.TORCH_DEFAULT_LR)
    lr = float(lr.split(":")[1]) if isinstance(lr, str) else lr
    return sgdx.sgd(lr, **options, convention=convention, **extra)


def params_tree(dtype=jnp.float32):
    return {
        "w": jnp.ones((3, 2), dtype),
        "b": jnp.full((2,), 0.5, dtype),
        "s": jnp.asarray(2.0, dtype),
    }


def quadratic_grad(params):
    return jax.grad(lambda p: sum(jnp.sum((x - 0.25) ** 2) for x in jax.tree.leaves(p)))(params)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize(("name", "kwargs"), oracle.CONFIGS, ids=CONFIG_IDS)
def test_jit_compiles_once_and_state_is_stable(name, kwargs, convention):
    tx = make_sgd(kwargs, convention)
    params = params_tree()
    state = tx.init(params)
    traces = 0

    @jax.jit
    def step(params, state):
        nonlocal traces
        traces += 1
        updates, state = tx.update(quadratic_grad(params), state, params)
        return sgdx.apply_updates(params, updates), state

    for _ in range(4):
        new_params, new_state = step(params, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        params, state = new_params, new_state
    assert traces == 1

    def body(carry, _):
        return step.__wrapped__(*carry), None

    (scanned, _), _ = jax.lax.scan(body, (params_tree(), tx.init(params_tree())), length=4)
    chex.assert_trees_all_close(scanned, params, rtol=1e-6)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize(("name", "kwargs"), oracle.CONFIGS, ids=CONFIG_IDS)
def test_init_on_shape_dtype_structs(name, kwargs, convention):
    tx = make_sgd(kwargs, convention)
    params = params_tree()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(tx.init(abstract), tx.init(params))
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(tx.init, abstract), tx.init(params)
    )


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_init_compiles_nothing_per_leaf_and_places_state_like_params(convention):
    """Eager ``jnp.zeros_like`` compiles one XLA program per new shape (for 2000 shapes:
    minutes and gigabytes); ``init`` makes its zeros in host memory instead."""
    tx = make_sgd({"momentum": 0.9}, convention)
    tx.init({"warm": jnp.ones(1)})  # the scalars every init makes (counts, flags)
    device = jax.devices()[0]
    params = {f"l{i}": jnp.asarray(np.ones((i + 1, 89), np.float32)) for i in range(40)}
    params["committed"] = jax.device_put(np.ones((7, 89), np.float64), device)
    with counted() as compiles:
        state = tx.init(params)
    assert compiles == []
    buffers = state.momentum.momentum_buffer if convention == "pytorch" else state.momentum.velocity
    expected = jax.tree.map(lambda p: np.zeros(p.shape, p.dtype), params)
    chex.assert_trees_all_equal(buffers, expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(buffers, params)
    # placed as jnp.zeros_like places them: committed where the parameter is, else default
    assert (
        buffers["committed"].committed
        and buffers["committed"].sharding == params["committed"].sharding
    )
    assert not buffers["l0"].committed and not jnp.zeros_like(params["l0"]).committed


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_vmap_over_independent_runs(convention):
    tx = sgdx.sgd(0.1, momentum=0.9, weight_decay=0.01, nesterov=True, convention=convention)
    batch = jnp.stack([jnp.linspace(-1, 1, 4) * (i + 1) for i in range(3)])

    def run(p):
        state = tx.init(p)
        for _ in range(3):
            updates, state = tx.update(quadratic_grad(p), state, p)
            p = sgdx.apply_updates(p, updates)
        return p

    chex.assert_trees_all_close(jax.vmap(run)(batch), jnp.stack([run(p) for p in batch]))


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("wrt", ["learning_rate", "momentum", "dampening", "weight_decay"])
def test_gradient_through_hyperparameters_matches_finite_differences(wrt, convention):
    values = {"learning_rate": 0.05, "momentum": 0.8, "dampening": 0.2, "weight_decay": 0.03}
    target = jnp.asarray([0.5, -1.0, 2.0], jnp.float64)

    def loss_after_steps(h):
        hyper = {k: (h if k == wrt else jnp.asarray(v, jnp.float64)) for k, v in values.items()}
        tx = sgdx.sgd(**hyper, convention=convention)
        p = jnp.asarray([1.0, 1.0, 1.0], jnp.float64)
        state = tx.init(p)
        for k in range(6):
            g = jax.grad(lambda p, k=k: jnp.sum(jnp.sin(p - target) ** 2 * (k + 1)))(p)
            updates, state = tx.update(g, state, p)
            p = sgdx.apply_updates(p, updates)
        return jnp.sum((p - target) ** 2)

    h0 = jnp.asarray(values[wrt], jnp.float64)
    eps = 1e-6
    fd = (loss_after_steps(h0 + eps) - loss_after_steps(h0 - eps)) / (2 * eps)
    analytic = jax.grad(loss_after_steps)(h0)
    assert abs(float(analytic)) > 1e-4
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(loss_after_steps))(h0), analytic, rtol=1e-12)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_bfloat16_parameters_keep_their_dtype(convention):
    params = params_tree(jnp.bfloat16)
    reference = params_tree(jnp.float32)
    for accumulator_dtype in (None, jnp.float32):
        tx = sgdx.sgd(
            0.1, 0.9, weight_decay=0.01, convention=convention, accumulator_dtype=accumulator_dtype
        )
        tx32 = sgdx.sgd(0.1, 0.9, weight_decay=0.01, convention=convention)
        p, p32 = params, reference
        state, state32 = tx.init(p), tx32.init(p32)
        buffers = jax.tree.leaves(state.momentum[0])
        assert all(b.dtype == (accumulator_dtype or jnp.bfloat16) for b in buffers)
        for _ in range(5):
            updates, state = tx.update(quadratic_grad(p), state, p)
            assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
            p = sgdx.apply_updates(p, updates)
            updates32, state32 = tx32.update(quadratic_grad(p32), state32, p32)
            p32 = sgdx.apply_updates(p32, updates32)
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p))
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x.astype(jnp.float32), p), p32, atol=3e-2
        )


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_complex_parameters_keep_their_dtype(dtype, convention):
    z = jnp.asarray([1 + 2j, -0.5j], dtype)
    tx = sgdx.sgd(0.1, 0.9, weight_decay=0.1, nesterov=True, convention=convention)
    state = tx.init(z)
    for _ in range(3):
        g = jnp.conj(jax.grad(lambda z: jnp.sum(jnp.abs(z) ** 2))(z))
        updates, state = tx.update(g, state, z)
        z = sgdx.apply_updates(z, updates)
        assert z.dtype == dtype
    assert float(jnp.max(jnp.abs(z))) < 1.0


def rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def quadratic(p):
    return jnp.sum(jnp.asarray([1.0, 10.0]) * (p["xy"] - 1) ** 2)


# dampening 1 makes the buffer ignore every gradient after the first: it cannot converge.
LEARNING_CONFIGS = [c for c in oracle.CONFIGS if c[1].get("dampening", 0.0) < 1]


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize(("name", "kwargs"), LEARNING_CONFIGS, ids=[n for n, _ in LEARNING_CONFIGS])
@pytest.mark.parametrize("problem", [quadratic, rosenbrock], ids=lambda f: f.__name__)
def test_converges(problem, name, kwargs, convention):
    """Every configuration descends a quadratic and Rosenbrock (ascends their negation)."""
    sign = -1.0 if kwargs.get("maximize") else 1.0
    objective = lambda p: sign * problem(p)  # noqa: E731
    kwargs = {**kwargs, "lr": 1e-3 if problem is rosenbrock else 0.02}
    kwargs["weight_decay"] = min(kwargs.get("weight_decay", 0.0), 1e-3)
    tx = make_sgd(kwargs, convention)
    params = {"xy": jnp.asarray([-1.0, 1.5], jnp.float64)}

    def body(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(objective)(p), state, p)
        return (sgdx.apply_updates(p, updates), state), None

    (final, _), _ = jax.lax.scan(body, (params, tx.init(params)), length=3000)
    reduction = 1e-2 if problem is rosenbrock else 1e-3  # plain SGD crawls along the valley
    assert float(problem(final)) < reduction * float(problem(params))


def test_init_of_an_empty_tree_inside_jit_under_a_mesh():
    """No leaf to trace, inside jit, with a mesh set: the flags are made inside the trace."""
    if not hasattr(jax, "set_mesh"):
        pytest.skip("this jax has no jax.set_mesh")
    mesh = jax.make_mesh((1,), ("x",))
    with jax.set_mesh(mesh):
        state = jax.jit(sgdx.sgd(0.1, momentum=0.9).init)({})
    assert state.momentum.initialized.shape == (0,)
