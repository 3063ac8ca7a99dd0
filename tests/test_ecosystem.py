"""sgdx inside optax, Flax and Equinox training loops, and orbax checkpoints.

Each interop run is compared against the plain sgdx run on the same data (itself checked
against torch in test_parity_torch.py), or against torch directly where the interop adds
maths (gradient clipping).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx

optax = pytest.importorskip("optax")

STEPS = 6
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(32, 5)))
Y = jnp.asarray(RNG.normal(size=(32, 3)))
INIT = {"w": jnp.asarray(RNG.normal(size=(5, 3))), "b": jnp.zeros(3, jnp.float64)}
HYPER = {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}


def loss_fn(params, x=X, y=Y):
    return jnp.mean((x @ params["w"] + params["b"][None] - y) ** 2)


def plain_gradients(params, k):
    del k
    return jax.grad(loss_fn)(params)


def run(tx, steps=STEPS, grad_fn=plain_gradients, params=INIT):
    state = tx.init(params)
    for k in range(steps):
        updates, state = tx.update(grad_fn(params, k), state, params)
        params = optax.apply_updates(params, updates)
    return params


REFERENCE = run(sgdx.sgd(0.05, **HYPER))


def test_sgdx_inside_optax_chain_matches_torch_with_gradient_clipping():
    """optax.clip_by_global_norm scales by max_norm / norm (torch's clip_grad_norm_ adds 1e-6
    to the norm, a 2e-7 relative difference); the torch side clips the same way by hand."""
    torch = pytest.importorskip("torch")
    params = run(optax.chain(optax.clip_by_global_norm(0.5), sgdx.sgd(0.05, **HYPER)))
    w = torch.tensor(np.asarray(INIT["w"]), requires_grad=True)
    b = torch.tensor(np.asarray(INIT["b"]), requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.05, **HYPER)
    x, y = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(Y))
    for _ in range(STEPS):
        opt.zero_grad()
        ((x @ w + b - y) ** 2).mean().backward()
        norm = torch.sqrt(w.grad.square().sum() + b.grad.square().sum())
        if norm > 0.5:
            w.grad.mul_(0.5 / norm)
            b.grad.mul_(0.5 / norm)
        opt.step()
    np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(params["b"], b.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_optax_transform_inside_sgdx_chain():
    ours = run(sgdx.chain(optax.clip_by_global_norm(0.5), sgdx.sgd(0.05, **HYPER)))
    theirs = run(optax.chain(optax.clip_by_global_norm(0.5), sgdx.sgd(0.05, **HYPER)))
    chex.assert_trees_all_equal(ours, theirs)


def test_optax_inject_hyperparams_of_sgdx_sgd():
    tx = optax.inject_hyperparams(sgdx.sgd)(learning_rate=0.05, **HYPER)
    chex.assert_trees_all_close(
        run(tx), REFERENCE, rtol=1e-7
    )  # optax stores hyperparameters in float32
    state = tx.init(INIT)
    state.hyperparams["learning_rate"] = jnp.asarray(0.01)
    updates, _ = tx.update(jax.grad(loss_fn)(INIT), state, INIT)
    expected, _ = sgdx.sgd(0.01, **HYPER).update(
        jax.grad(loss_fn)(INIT), sgdx.sgd(0.01, **HYPER).init(INIT), INIT
    )
    chex.assert_trees_all_close(updates, expected, rtol=1e-7)


def test_optax_multisteps_accumulates_like_a_full_batch():
    """Four micro-batches of 8 through MultiSteps == one step on the batch of 32."""
    tx = optax.MultiSteps(sgdx.sgd(0.05, **HYPER), every_k_schedule=4)
    params, state = INIT, tx.init(INIT)
    with jax.numpy_dtype_promotion("standard"):  # MultiSteps mixes float32 counters in
        for _ in range(STEPS):
            for i in range(4):
                grads = jax.grad(loss_fn)(params, X[8 * i : 8 * i + 8], Y[8 * i : 8 * i + 8])
                updates, state = tx.update(grads, state, params)
                params = optax.apply_updates(params, updates)
    # MultiSteps keeps a running mean of the micro-batch gradients with a float32 step count
    chex.assert_trees_all_close(params, REFERENCE, rtol=1e-6)


def test_optax_apply_if_finite_skips_a_nan_step():
    def grads_with_nan(params, k):
        g = jax.grad(loss_fn)(params)
        return jax.tree.map(lambda x: x * jnp.nan, g) if k == 2 else g

    guarded = run(optax.apply_if_finite(sgdx.sgd(0.05, **HYPER), 3), STEPS + 1, grads_with_nan)
    chex.assert_trees_all_close(guarded, REFERENCE, rtol=1e-12)


def test_flax_train_state():
    train_state = pytest.importorskip("flax.training.train_state")
    state = train_state.TrainState.create(apply_fn=None, params=INIT, tx=sgdx.sgd(0.05, **HYPER))
    for _ in range(STEPS):
        state = state.apply_gradients(grads=jax.grad(loss_fn)(state.params))
    chex.assert_trees_all_close(state.params, REFERENCE, rtol=1e-12)


def nnx_linear(nnx):
    """The plain run's linear model as an nnx module."""

    class Linear(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(INIT["w"])
            self.b = nnx.Param(INIT["b"])

        def __call__(self, x):
            return x @ self.w[...] + self.b[...][None]

    return Linear()


def test_flax_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    model = nnx_linear(nnx)
    optimizer = nnx.Optimizer(model, sgdx.sgd(0.05, **HYPER), wrt=nnx.Param)
    for _ in range(STEPS):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)
    np.testing.assert_allclose(model.w[...], REFERENCE["w"], rtol=1e-12)
    np.testing.assert_allclose(model.b[...], REFERENCE["b"], rtol=1e-12, atol=1e-15)


def eqx_linear(eqx):
    """The plain run's linear model as an Equinox module, with non-array leaves."""

    class Model(eqx.Module):
        w: jax.Array
        b: jax.Array
        activation: object = eqx.field(static=False, default=lambda z: z)
        name: str = "linear"

        def __call__(self, x):
            return self.activation(x @ self.w + self.b[None])

    return Model(INIT["w"], INIT["b"])


def test_equinox_filter_loop_with_non_array_leaves():
    eqx = pytest.importorskip("equinox")

    model = eqx_linear(eqx)
    tx = sgdx.sgd(0.05, **HYPER)
    state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        grads = eqx.filter_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        assert grads.activation is None and grads.name is None  # non-arrays: None gradients
        updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state

    for _ in range(STEPS):
        model, state = step(model, state)
    np.testing.assert_allclose(model.w, REFERENCE["w"], rtol=1e-12)
    np.testing.assert_allclose(model.b, REFERENCE["b"], rtol=1e-12, atol=1e-15)


def kernel_in(fn, *args):
    return "sgdx_sgd_step" in str(jax.make_jaxpr(fn)(*args))


def test_flax_train_state_with_the_in_place_step():
    """TrainState's apply_gradients replaced by sgdx.step: the kernel, the same numbers."""
    train_state = pytest.importorskip("flax.training.train_state")
    state = train_state.TrainState.create(apply_fn=None, params=INIT, tx=sgdx.sgd(0.05, **HYPER))

    @jax.jit
    def train_step(state):
        grads = jax.grad(loss_fn)(state.params)
        params, opt_state = sgdx.step(state.tx, state.params, grads, state.opt_state)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

    assert kernel_in(train_step, state)
    for _ in range(STEPS):
        state = train_step(state)
    chex.assert_trees_all_close(state.params, REFERENCE, rtol=1e-12)


def test_flax_nnx_with_the_in_place_step():
    nnx = pytest.importorskip("flax.nnx")

    model = nnx_linear(nnx)
    tx = sgdx.sgd(0.05, **HYPER)
    opt_state = tx.init(nnx.state(model, nnx.Param))

    @nnx.jit
    def train_step(model, opt_state):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        params, opt_state = sgdx.step(tx, nnx.state(model, nnx.Param), grads, opt_state)
        nnx.update(model, params)
        return opt_state

    for _ in range(STEPS):
        opt_state = train_step(model, opt_state)
    np.testing.assert_allclose(model.w[...], REFERENCE["w"], rtol=1e-12)
    np.testing.assert_allclose(model.b[...], REFERENCE["b"], rtol=1e-12, atol=1e-15)


def test_equinox_with_the_in_place_step():
    eqx = pytest.importorskip("equinox")

    model = eqx_linear(eqx)
    tx = sgdx.sgd(0.05, **HYPER)
    state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, state):
        grads = eqx.filter_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        params, state = sgdx.step(tx, eqx.filter(model, eqx.is_array), grads, state)
        return eqx.combine(params, model), state

    params = eqx.filter(model, eqx.is_array)
    grads = jax.tree.map(jnp.ones_like, params)
    assert kernel_in(lambda p, g, s: sgdx.step(tx, p, g, s), params, grads, state)
    for _ in range(STEPS):
        model, state = train_step(model, state)
    np.testing.assert_allclose(model.w, REFERENCE["w"], rtol=1e-12)
    np.testing.assert_allclose(model.b, REFERENCE["b"], rtol=1e-12, atol=1e-15)


def test_optax_tree_get_finds_the_one_count_of_an_injected_sgd():
    """optax.tree_utils.tree_get(state, "count"), as for optax.sgd: one count, the
    wrapper's (sgd's fixed learning rate keeps none)."""
    params = {"w": jnp.ones(2)}
    for injected in (sgdx.inject_hyperparams(sgdx.sgd), optax.inject_hyperparams(sgdx.sgd)):
        tx = injected(learning_rate=0.1, momentum=0.9)
        state = tx.init(params)
        for _ in range(3):
            _, state = tx.update({"w": jnp.ones(2)}, state, params)
        assert int(optax.tree_utils.tree_get(state, "count")) == 3
    theirs = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    assert int(optax.tree_utils.tree_get(theirs.init(params), "count")) == 0


ORBAX_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    import orbax.checkpoint as ocp
    import sgdx
    jax.config.update("jax_enable_x64", True)
    mode, path = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(32, 5))), jnp.asarray(rng.normal(size=(32, 3)))
    params = {"w": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.zeros(3, jnp.float64)}
    tx = sgdx.sgd(sgdx.schedules.step_lr(0.05, 3, 0.5), momentum=0.9, nesterov=True)
    grad = jax.jit(jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"][None] - y) ** 2)))
    def steps(params, state, n):
        for _ in range(n):
            updates, state = tx.update(grad(params), state, params)
            params = sgdx.apply_updates(params, updates)
        return params, state
    checkpointer = ocp.StandardCheckpointer()
    if mode == "save":
        params, state = steps(params, tx.init(params), 4)
        checkpointer.save(path, {"params": params, "opt_state": state})
    else:
        template = {"params": params, "opt_state": tx.init(params)}
        restored = checkpointer.restore(path, template)
        params, _ = steps(restored["params"], restored["opt_state"], 5)
    checkpointer.wait_until_finished()
    np.save(path + f".{mode}.npy", np.asarray(params["w"]))
    """
)


def test_orbax_checkpoint_resumes_in_a_new_process(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    script = tmp_path / "orbax_run.py"
    script.write_text(ORBAX_SCRIPT)
    path = str(tmp_path / "ckpt")
    for mode in ("save", "restore"):
        result = subprocess.run(
            [sys.executable, str(script), mode, path], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
    # the uninterrupted run: 9 steps in this process
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(32, 5))), jnp.asarray(rng.normal(size=(32, 3)))
    params = {"w": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.zeros(3, jnp.float64)}
    tx = sgdx.sgd(sgdx.schedules.step_lr(0.05, 3, 0.5), momentum=0.9, nesterov=True)
    grad = jax.jit(jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"][None] - y) ** 2)))
    state = tx.init(params)
    for _ in range(9):
        updates, state = tx.update(grad(params), state, params)
        params = sgdx.apply_updates(params, updates)
    np.testing.assert_array_equal(np.load(path + ".restore.npy"), np.asarray(params["w"]))
