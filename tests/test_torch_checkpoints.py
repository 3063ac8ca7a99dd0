"""torch.optim.SGD state_dict <-> sgdx state: resume either way, round trip, bad checkpoints."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx
from sgdx.interop import torch as torch_interop

torch = pytest.importorskip("torch")

# the optimizers below are plain momentum SGD (no nesterov, no maximize), as they are built
load = functools.partial(torch_interop.load_state_dict, nesterov=False, maximize=False)
dump = functools.partial(torch_interop.state_dict, nesterov=False, maximize=False)

# torch's parameter order: named_parameters() of Linear(3, 4) -> Linear(4, 2)
NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
LABELS = {
    "fc1": {"weight": "first", "bias": "first"},
    "fc2": {"weight": "second", "bias": "second"},
}
SGDX_GROUPS = {"first": {"learning_rate": 0.1}, "second": {}}
DEFAULTS = {"learning_rate": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3}
TORCH_DEFAULTS = {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3}


def make_model(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(3, 4, dtype=torch.float64))
    model.add_module("fc2", torch.nn.Linear(4, 2, dtype=torch.float64))
    return model


def to_tree(model):
    return {
        name: {
            "weight": jnp.asarray(layer.weight.detach().numpy()),
            "bias": jnp.asarray(layer.bias.detach().numpy()),
        }
        for name, layer in model.named_children()
    }


def gradients(tree_or_model, k):
    """The same parameter-dependent gradients for a torch model or an sgdx tree."""
    tree = to_tree(tree_or_model) if isinstance(tree_or_model, torch.nn.Module) else tree_or_model
    return jax.tree.map(lambda p: np.sin(np.asarray(p) * (k + 1)) + 0.1 * np.asarray(p), tree)


def torch_optimizer(model, named=False):
    first = [(n, p) for n, p in model.named_parameters() if n.startswith("fc1")]
    second = [(n, p) for n, p in model.named_parameters() if n.startswith("fc2")]
    pick = (lambda ps: ps) if named else (lambda ps: [p for _, p in ps])
    return torch.optim.SGD(
        [{"params": pick(first), "lr": 0.1}, {"params": pick(second)}], **TORCH_DEFAULTS
    )


def torch_steps(model, optimizer, ks, frozen=()):
    for k in ks:
        grads = gradients(model, k)
        for name, layer in model.named_children():
            for pname in ("weight", "bias"):
                param = getattr(layer, pname)
                param.grad = (
                    None
                    if f"{name}.{pname}" in frozen
                    else torch.tensor(np.asarray(grads[name][pname]))
                )
        optimizer.step()


def sgdx_steps(tx, params, state, ks, frozen=()):
    """Updates ``ks``, the first in a jit that donates the state (a state whose leaves share
    a buffer cannot be donated: a loaded one must be)."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return sgdx.apply_updates(params, updates), state

    for i, k in enumerate(ks):
        grads = gradients(params, k)
        grads = {
            m: {n: (None if f"{m}.{n}" in frozen else jnp.asarray(g)) for n, g in leaves.items()}
            for m, leaves in grads.items()
        }
        params, state = (jax.jit(step, donate_argnums=1) if i == 0 else step)(params, state, grads)
    return params, state


def tx_groups():
    return sgdx.param_groups(LABELS, SGDX_GROUPS, **DEFAULTS)


def assert_params_equal(tree, model, rtol=1e-12):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14), tree, to_tree(model)
    )


@pytest.mark.parametrize("named", [False, True], ids=["names-given", "param_names-in-dict"])
def test_resume_torch_checkpoint_in_sgdx(named):
    k, n = 4, 5
    reference = make_model()
    reference_opt = torch_optimizer(reference)
    torch_steps(reference, reference_opt, range(k + n))

    model = make_model()
    optimizer = torch_optimizer(model, named=named)
    torch_steps(model, optimizer, range(k))
    checkpoint = optimizer.state_dict()

    tx = tx_groups()
    params = to_tree(model)
    state = load(checkpoint, tx.init(params), params, names=None if named else NAMES, count=k)
    params, state = sgdx_steps(tx, params, state, range(k, k + n))
    assert_params_equal(params, reference)
    for label, layer in (("first", "fc1"), ("second", "fc2")):
        trace = state.groups[label].inner_state.momentum
        for pname in ("weight", "bias"):
            buffer = reference_opt.state[getattr(getattr(reference, layer), pname)][
                "momentum_buffer"
            ]
            np.testing.assert_allclose(
                trace.momentum_buffer[layer][pname], buffer.numpy(), rtol=1e-12
            )


def test_resume_with_a_parameter_that_never_had_a_gradient():
    """torch keeps no buffer for it; sgdx starts it from its first gradient, as torch does."""
    k, n = 3, 4
    reference = make_model()
    reference_opt = torch_optimizer(reference)
    torch_steps(reference, reference_opt, range(k), frozen={"fc2.bias"})
    torch_steps(reference, reference_opt, range(k, k + n))

    model = make_model()
    optimizer = torch_optimizer(model)
    torch_steps(model, optimizer, range(k), frozen={"fc2.bias"})
    checkpoint = optimizer.state_dict()
    assert len(checkpoint["state"]) == 3

    tx = tx_groups()
    params = to_tree(model)
    state = load(checkpoint, tx.init(params), params, NAMES)
    assert sgdx.momentum_buffers(state)["fc2.bias"] is None
    params, state = sgdx_steps(tx, params, state, range(k, k + n))
    assert_params_equal(params, reference)


def test_resume_sgdx_state_in_torch():
    k, n = 4, 5
    tx = tx_groups()
    params = to_tree(make_model())
    reference, _ = sgdx_steps(tx, params, tx.init(params), range(k + n))

    params, state = sgdx_steps(tx, params, tx.init(params), range(k))
    checkpoint = dump(state, params, NAMES)
    model = make_model()
    with torch.no_grad():
        for name, layer in model.named_children():
            layer.weight.copy_(torch.tensor(np.asarray(params[name]["weight"])))
            layer.bias.copy_(torch.tensor(np.asarray(params[name]["bias"])))
    optimizer = torch_optimizer(model)
    optimizer.load_state_dict(checkpoint)
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[1]["dampening"] == 0.1
    torch_steps(model, optimizer, range(k, k + n))
    assert_params_equal(reference, model)


def test_round_trip_is_bitwise():
    tx = tx_groups()
    params = to_tree(make_model())
    params, state = sgdx_steps(tx, params, tx.init(params), range(3), frozen={"fc1.bias"})
    state = sgdx.set_hyperparams(state, group="first", learning_rate=0.0123456789)
    checkpoint = dump(state, params, NAMES, initial_lr={"first": 0.1, "second": 0.01})
    assert checkpoint["param_groups"][0]["initial_lr"] == 0.1
    back = load(checkpoint, tx.init(params), params, count=3)
    chex.assert_trees_all_equal(back, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(back, state)


def test_single_group_inject_hyperparams_state():
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.05, momentum=0.9, nesterov=True)
    params = to_tree(make_model())
    params, state = sgdx_steps(tx, params, tx.init(params), range(2))
    checkpoint = dump(state, params, NAMES, nesterov=True)
    assert [g["nesterov"] for g in checkpoint["param_groups"]] == [True]
    optimizer = torch.optim.SGD(make_model().parameters(), lr=1.0, momentum=0.9, nesterov=True)
    optimizer.load_state_dict(checkpoint)
    chex.assert_trees_all_equal(
        load(checkpoint, tx.init(params), params, nesterov=True, count=2), state
    )


def checkpoint_after_steps():
    model = make_model()
    optimizer = torch_optimizer(model)
    torch_steps(model, optimizer, range(2))
    return optimizer.state_dict(), to_tree(model)


def test_bad_checkpoints_raise_and_change_nothing():
    checkpoint, params = checkpoint_after_steps()
    tx = tx_groups()
    state = tx.init(params)
    before = jax.tree.map(np.array, state)

    one_group = sgdx.param_groups(
        {m: {n: "all" for n in leaves} for m, leaves in LABELS.items()}, {"all": {}}, **DEFAULTS
    )
    with pytest.raises(ValueError, match="2 param groups, the sgdx optimizer 1"):
        load(checkpoint, one_group.init(params), params, NAMES)

    wrong_shape = {
        **checkpoint,
        "state": {**checkpoint["state"], 0: {"momentum_buffer": torch.zeros(2, 2)}},
    }
    with pytest.raises(ValueError, match=r"'fc1.weight' has shape \(2, 2\)"):
        load(wrong_shape, state, params, NAMES)

    with pytest.raises(ValueError, match=r"names not in the tree: \['fc3.weight'\]"):
        load(checkpoint, state, params, ["fc3.weight", *NAMES[1:]])
    with pytest.raises(ValueError, match="3 names for 4 parameters"):
        load(checkpoint, state, params, NAMES[:3])
    with pytest.raises(ValueError, match="has no 'param_names': pass names="):
        load(checkpoint, state, params)

    regrouped = sgdx.param_groups(
        {
            "fc1": {"weight": "first", "bias": "second"},
            "fc2": {"weight": "second", "bias": "second"},
        },
        SGDX_GROUPS,
        **DEFAULTS,
    )
    with pytest.raises(ValueError, match=r"param_groups\[0\] .* matches no sgdx group"):
        load(checkpoint, regrouped.init(params), params, NAMES)

    model = make_model()
    adam = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    adam.step()
    with pytest.raises(ValueError, match=r"not a torch\.optim\.SGD state_dict"):
        load(adam.state_dict(), state, params, NAMES)
    with pytest.raises(TypeError, match="hyperparameters"):
        load(checkpoint, sgdx.sgd(0.1).init(params), params, NAMES)

    chex.assert_trees_all_equal(jax.tree.map(np.array, state), before)


def test_imported_state_does_not_alias_the_checkpoint():
    """torch updates momentum buffers in place; the sgdx state must hold copies."""
    checkpoint, params = checkpoint_after_steps()
    tx = tx_groups()
    state = load(checkpoint, tx.init(params), params, NAMES)
    before = jax.tree.map(np.array, state)
    for entry in checkpoint["state"].values():
        entry["momentum_buffer"].mul_(0.5).add_(1.0)
    chex.assert_trees_all_equal(jax.tree.map(np.array, state), before)
