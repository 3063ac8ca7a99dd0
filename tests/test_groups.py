"""Param groups and hyperparameters in state, against torch.optim.SGD's param_groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx

torch = pytest.importorskip("torch")

SHAPES = {
    "head": {"w": (3, 2), "b": (2,)},
    "body": {"w": (4, 3), "b": (3,)},
    "norm": {"scale": (3,)},
}
STEPS = 16


def init_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {
        m: {k: rng.normal(size=s).astype(dtype) for k, s in leaves.items()}
        for m, leaves in SHAPES.items()
    }


def grads_for(params, k):
    """Parameter-dependent gradients, computed in NumPy from each side's own parameters."""
    return jax.tree.map(lambda p: (np.cos(k + p) + 0.5 * p).astype(p.dtype), params)


def label_fn(params):
    """No weight decay on biases and norms; the head in its own group."""
    return {
        module: {
            name: "head"
            if module == "head"
            else ("no_decay" if name in ("b", "scale") else "decay")
            for name in leaves
        }
        for module, leaves in params.items()
    }


def run_torch_groups(init, torch_groups, defaults, lr_changes):
    params = jax.tree.map(lambda v: torch.tensor(v), init)
    groups = [
        {"params": [params[m][n] for m, n in members], **overrides}
        for members, overrides in torch_groups
    ]
    opt = torch.optim.SGD(groups, **defaults)
    history = []
    for k in range(STEPS):
        for index, lr in lr_changes.get(k, {}).items():
            opt.param_groups[index]["lr"] = lr
        numpy_params = jax.tree.map(lambda t: t.detach().numpy().copy(), params)
        grads = grads_for(numpy_params, k)
        for m in SHAPES:
            for n in SHAPES[m]:
                params[m][n].grad = torch.tensor(grads[m][n])
        opt.step()
        history.append(
            (
                jax.tree.map(lambda t: t.detach().numpy().copy(), params),
                jax.tree.map(
                    lambda t: (
                        opt.state[t]["momentum_buffer"].numpy().copy() if t in opt.state else None
                    ),
                    params,
                ),
            )
        )
    return history


TORCH_GROUPS = [
    ([("head", "w"), ("head", "b")], {"lr": 0.1}),
    ([("body", "w")], {}),
    ([("body", "b"), ("norm", "scale")], {"weight_decay": 0.0}),
]
DEFAULTS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.05, "nesterov": True}
SGDX_GROUPS = {"head": {"learning_rate": 0.1}, "decay": {}, "no_decay": {"weight_decay": 0.0}}
SGDX_DEFAULTS = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.05, "nesterov": True}
# torch group index -> sgdx label, for the mid-run learning-rate changes
LR_CHANGES = {6: {0: 0.05}, 10: {1: 0.001, 2: 0.02}}
INDEX_TO_LABEL = {0: "head", 1: "decay", 2: "no_decay"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_param_groups_match_torch_at_every_step(dtype):
    init = init_params(dtype)
    expected = run_torch_groups(init, TORCH_GROUPS, DEFAULTS, LR_CHANGES)

    tx = sgdx.param_groups(label_fn, SGDX_GROUPS, **SGDX_DEFAULTS)
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    traces = 0

    @jax.jit
    def step(params, grads, state):
        nonlocal traces
        traces += 1
        updates, state = tx.update(grads, state, params)
        return sgdx.apply_updates(params, updates), state

    rtol = 1e-12 if dtype == np.float64 else 1e-6
    for k in range(STEPS):
        for index, lr in LR_CHANGES.get(k, {}).items():
            state = sgdx.set_hyperparams(state, group=INDEX_TO_LABEL[index], learning_rate=lr)
        params, state = step(params, grads_for(jax.tree.map(np.asarray, params), k), state)
        torch_params, torch_buffers = expected[k]
        labels = label_fn(params)
        for m in SHAPES:
            for n in SHAPES[m]:
                np.testing.assert_allclose(params[m][n], torch_params[m][n], rtol=rtol, atol=rtol)
                buffer = state.groups[labels[m][n]].inner_state.momentum.momentum_buffer
                np.testing.assert_allclose(buffer[m][n], torch_buffers[m][n], rtol=rtol, atol=rtol)
    assert traces == 1  # set_hyperparams between steps does not retrace


def test_tiny_learning_rate_leaves_parameter_bitwise_unchanged():
    init = init_params(np.float32)
    torch_groups = [
        ([("head", "w"), ("head", "b")], {"lr": 1e-30}),
        ([("body", "w"), ("body", "b"), ("norm", "scale")], {}),
    ]
    expected = run_torch_groups(init, torch_groups, {"lr": 0.01, "momentum": 0.9}, {})
    labels = {
        m: {n: "tiny" if m == "head" else "rest" for n in leaves} for m, leaves in SHAPES.items()
    }
    tx = sgdx.param_groups(
        labels, {"tiny": {"learning_rate": 1e-30}, "rest": {}}, learning_rate=0.01, momentum=0.9
    )
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    for k in range(STEPS):
        updates, state = tx.update(grads_for(jax.tree.map(np.asarray, params), k), state, params)
        params = sgdx.apply_updates(params, updates)
    for n in SHAPES["head"]:
        np.testing.assert_array_equal(params["head"][n], init["head"][n])
        np.testing.assert_array_equal(expected[-1][0]["head"][n], init["head"][n])
    np.testing.assert_allclose(params["body"]["w"], expected[-1][0]["body"]["w"], rtol=1e-6)


def test_unfreezing_a_group_mid_run_matches_torch_add_param_group():
    dtype = np.float64
    init = init_params(dtype)
    switch = 5
    # torch: head and norm train; body is frozen, then added as a new group
    params_t = jax.tree.map(lambda v: torch.tensor(v), init)
    opt = torch.optim.SGD(
        [params_t["head"]["w"], params_t["head"]["b"], params_t["norm"]["scale"]],
        lr=0.05,
        momentum=0.9,
    )
    labels = {
        m: {n: "backbone" if m == "body" else "top" for n in leaves} for m, leaves in SHAPES.items()
    }
    tx = sgdx.param_groups(labels, {"top": {}, "backbone": None}, learning_rate=0.05, momentum=0.9)
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    assert set(state.groups) == {"top"}
    for k in range(STEPS):
        if k == switch:
            opt.add_param_group(
                {
                    "params": [params_t["body"]["w"], params_t["body"]["b"]],
                    "lr": 0.01,
                    "dampening": 0.2,
                }
            )
            tx = sgdx.param_groups(
                labels,
                {"top": {}, "backbone": {"learning_rate": 0.01, "dampening": 0.2}},
                learning_rate=0.05,
                momentum=0.9,
            )
            state = sgdx.add_param_groups(state, tx, params)
        numpy_params = jax.tree.map(lambda t: t.detach().numpy().copy(), params_t)
        grads = grads_for(numpy_params, k)
        for m in SHAPES:
            for n in SHAPES[m]:
                frozen = m == "body" and k < switch
                params_t[m][n].grad = None if frozen else torch.tensor(grads[m][n])
        opt.step()
        jax_grads = grads_for(jax.tree.map(np.asarray, params), k)
        if k < switch:
            jax_grads["body"] = {n: None for n in SHAPES["body"]}
        updates, state = tx.update(jax_grads, state, params)
        params = sgdx.apply_updates(params, updates)
        for m in SHAPES:
            for n in SHAPES[m]:
                np.testing.assert_allclose(
                    params[m][n], params_t[m][n].detach().numpy(), rtol=1e-12
                )


def test_inject_hyperparams_is_sgd_with_settable_values():
    params = {"w": jnp.linspace(-1, 1, 5)}
    grads = {"w": jnp.linspace(0.5, 1.5, 5)}
    plain = sgdx.sgd(0.1, momentum=0.9, weight_decay=0.01)
    injected = sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9, weight_decay=0.01)
    s1, s2, p1, p2 = plain.init(params), injected.init(params), params, params
    for _ in range(3):
        u1, s1 = plain.update(grads, s1, p1)
        u2, s2 = injected.update(grads, s2, p2)
        p1, p2 = sgdx.apply_updates(p1, u1), sgdx.apply_updates(p2, u2)
    np.testing.assert_array_equal(p1["w"], p2["w"])
    hyper = sgdx.get_hyperparams(s2)
    assert set(hyper) == {"learning_rate", "momentum", "dampening", "weight_decay"}
    assert all(v.shape == () for v in hyper.values())


def test_scheduled_hyperparameter_is_the_next_steps_as_in_torch():
    """Between steps the state holds the learning rate of the next update, as torch's
    param_groups[0]["lr"] does after scheduler.step()."""
    tx = sgdx.inject_hyperparams(sgdx.sgd)(sgdx.schedules.step_lr(0.5, 2, 0.5))
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)
    params = jnp.zeros(1)
    state = tx.init(params)
    for _ in range(6):
        assert (
            float(sgdx.get_hyperparams(state)["learning_rate"]) == optimizer.param_groups[0]["lr"]
        )
        updates, state = tx.update(jnp.ones(1), state, params)
        w.grad = torch.ones(1, dtype=torch.float64)
        before = w.detach().clone()
        optimizer.step()
        scheduler.step()
        np.testing.assert_allclose(updates, (w.detach() - before).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: sgdx.param_groups({"w": "a"}, {"a": {"lr": 0.1}}, learning_rate=0.1),
            ValueError,
            "'lr' is 'learning_rate'",
        ),
        (lambda: sgdx.param_groups({"w": "a"}, {"a": {}}), ValueError, "no learning_rate"),
        (
            lambda: sgdx.param_groups({"w": "a"}, {"a": {"momentum": -0.5}}, learning_rate=0.1),
            ValueError,
            "Invalid momentum value: -0.5",
        ),
        (
            lambda: sgdx.param_groups({"w": "b"}, {"a": {}}, learning_rate=0.1).init(
                {"w": jnp.ones(1)}
            ),
            ValueError,
            r"\['w'\] has label 'b'",
        ),
        (
            lambda: sgdx.param_groups({"w": "a", "x": "a"}, {"a": {}}, learning_rate=0.1).init(
                {"w": jnp.ones(1)}
            ),
            ValueError,
            "labels must have the parameters' tree structure",
        ),
    ],
)
def test_group_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_set_hyperparams_errors():
    tx = sgdx.param_groups({"w": "a", "v": "f"}, {"a": {}, "f": None}, learning_rate=0.1)
    state = tx.init({"w": jnp.ones(1), "v": jnp.ones(1)})
    with pytest.raises(KeyError, match="pass group="):
        sgdx.set_hyperparams(state, learning_rate=0.2)
    with pytest.raises(KeyError, match="'f'"):
        sgdx.set_hyperparams(state, group="f", learning_rate=0.2)
    with pytest.raises(KeyError, match="'lr' is not a hyperparameter"):
        sgdx.set_hyperparams(state, group="a", lr=0.2)
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0\.2"):
        sgdx.set_hyperparams(state, group="a", learning_rate=-0.2)
    with pytest.raises(ValueError, match="group 'a' covers different parameters"):
        other = sgdx.param_groups({"w": "a", "v": "a"}, {"a": {}}, learning_rate=0.1)
        sgdx.add_param_groups(state, other, {"w": jnp.ones(1), "v": jnp.ones(1)})


def test_frozen_parameters_keep_their_group_and_buffer_in_update_and_step():
    """frozen= is torch's requires_grad=False: the gradient is ignored, the parameter and
    its buffer stay as they are, in update + apply_updates and in the in-place step."""
    params = {"w": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)}
    grads = {"w": jnp.full(3, 0.5, jnp.float32), "b": jnp.full(2, 0.5, jnp.float32)}
    trained = sgdx.param_groups(
        {"w": "all", "b": "all"}, {"all": {}}, learning_rate=0.1, momentum=0.9
    )
    state = trained.init(params)
    _, state = trained.update(grads, state, params)  # b has a buffer now
    tx = sgdx.param_groups(
        {"w": "all", "b": "all"}, {"all": {}}, frozen={"w": False, "b": True},
        learning_rate=0.1, momentum=0.9,
    )  # fmt: skip
    updates, by_update = tx.update(grads, state, params)
    assert updates["b"] is None
    stepped, by_step = jax.jit(sgdx.step, static_argnums=0)(tx, params, grads, state)
    np.testing.assert_array_equal(stepped["b"], params["b"])
    for new in (by_update, by_step):
        np.testing.assert_array_equal(
            sgdx.momentum_buffers(new)["b"], sgdx.momentum_buffers(state)["b"]
        )
    np.testing.assert_allclose(stepped["w"], sgdx.apply_updates(params, updates)["w"])
    with pytest.raises(TypeError, match="frozen must be a pytree of Python bools"):
        bad = sgdx.param_groups({"w": "all", "b": "all"}, {"all": {}}, frozen={"w": 0, "b": 1},
                                learning_rate=0.1)  # fmt: skip
        bad.update(grads, bad.init(params), params)
