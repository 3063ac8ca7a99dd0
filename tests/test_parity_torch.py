"""Live parity with the real torch.optim.SGD: every configuration, traced hyperparameters,
a hypothesis search, None gradients and complex parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sgdx
from tests import oracle

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("name", "kwargs"), oracle.CONFIGS, ids=[n for n, _ in oracle.CONFIGS])
def test_every_config_matches_torch(name, kwargs, dtype):
    problem = oracle.make_problem(1, dtype, maximize=kwargs.get("maximize", False))
    expected = oracle.run_torch(kwargs, problem, dtype)
    actual = oracle.run_sgdx(oracle.sgdx_optimizer(kwargs, oracle.learning_rates(kwargs)), problem)
    oracle.assert_trajectories_close(actual, expected, kwargs.get("momentum", 0.0))


@pytest.mark.parametrize(
    ("name", "kwargs"), [c for c in oracle.CONFIGS if "momentum" in c[1] or "weight_decay" in c[1]]
)
def test_hyperparameters_given_as_arrays_match_torch(name, kwargs):
    """Array hyperparameters are traced (momentum and weight decay are always in the chain)."""
    dtype = np.float64
    problem = oracle.make_problem(2, dtype, maximize=kwargs.get("maximize", False))
    as_arrays = {
        k: (jnp.asarray(v, jnp.float64) if k in ("momentum", "dampening", "weight_decay") else v)
        for k, v in kwargs.items()
    }
    tx = oracle.sgdx_optimizer(as_arrays, oracle.learning_rates(kwargs))
    oracle.assert_trajectories_close(
        oracle.run_sgdx(tx, problem),
        oracle.run_torch(kwargs, problem, dtype),
        kwargs.get("momentum", 0.0),
    )


@st.composite
def sgd_kwargs(draw):
    momentum = draw(st.sampled_from([0.0, 0.5]) | st.floats(0.0, 0.99))
    nesterov = momentum > 0 and draw(st.booleans())
    return {
        "lr": draw(st.floats(1e-4, 0.2)),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
        "weight_decay": draw(st.sampled_from([0.0]) | st.floats(0.0, 0.2)),
        "nesterov": nesterov,
        "maximize": draw(st.booleans()),
    }


@given(
    kwargs=sgd_kwargs(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    traced=st.booleans(),
)
def test_hypothesis_search_matches_torch(kwargs, dtype, seed, traced):
    problem = oracle.make_problem(seed, dtype, maximize=kwargs["maximize"])
    expected = oracle.run_torch(kwargs, problem, dtype)
    momentum = kwargs["momentum"]
    if traced:  # every numeric hyperparameter as an array: the same chain for any value
        kwargs = {
            k: jnp.asarray(v) if k in ("momentum", "dampening", "weight_decay") else v
            for k, v in kwargs.items()
        }
    tx = oracle.sgdx_optimizer(kwargs, oracle.learning_rates(kwargs))
    oracle.assert_trajectories_close(oracle.run_sgdx(tx, problem), expected, momentum)


FREEZE_CONFIGS = [c for c in oracle.CONFIGS if c[1].get("momentum")]


@pytest.mark.parametrize("convention", ["pytorch", "sutskever"])
@pytest.mark.parametrize(("name", "kwargs"), FREEZE_CONFIGS, ids=[n for n, _ in FREEZE_CONFIGS])
def test_none_gradients_match_torch_frozen_layer(name, kwargs, convention):
    """A step with no gradients at all, then layer2 frozen for two steps, then unfrozen.

    torch leaves a parameter without .grad (and its buffer) untouched and creates the
    buffer from the first real gradient; sgdx gets None leaves at those places. The
    Sutskever run keeps a constant learning rate here, where it equals torch's.
    """
    lr = kwargs.get("lr", 0.01)
    options = {k: v for k, v in kwargs.items() if k != "lr"}
    rng = np.random.default_rng(3)
    init = {
        "layer1": {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))},
        "layer2": {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=(2,))},
    }
    schedule = [(), (), ("layer1",), ("layer1",), ("layer1", "layer2"), ("layer1", "layer2")]
    grads_at = [
        {
            layer: {k: rng.normal(size=v.shape) for k, v in leaves.items()}
            for layer, leaves in init.items()
        }
        for _ in schedule
    ]

    params_t = {
        layer: {k: torch.tensor(v) for k, v in leaves.items()} for layer, leaves in init.items()
    }
    flat_t = [p for leaves in params_t.values() for p in leaves.values()]
    opt = torch.optim.SGD(flat_t, lr=lr, **options)

    tx = sgdx.sgd(lr, **options, convention=convention)
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    for k, trainable in enumerate(schedule):
        for layer, leaves in params_t.items():
            for name_, p in leaves.items():
                p.grad = torch.tensor(grads_at[k][layer][name_]) if layer in trainable else None
        opt.step()
        grads = {
            layer: {
                name_: (jnp.asarray(g) if layer in trainable else None)
                for name_, g in leaves.items()
            }
            for layer, leaves in grads_at[k].items()
        }
        updates, state = tx.update(grads, state, params)
        params = sgdx.apply_updates(params, updates)
        for layer, leaves in params_t.items():
            for name_, p in leaves.items():
                np.testing.assert_allclose(
                    params[layer][name_],
                    p.detach().numpy(),
                    rtol=1e-12,
                    atol=1e-13,
                    err_msg=f"{layer}/{name_} after step {k + 1}",
                )
                torch_buf = opt.state[p].get("momentum_buffer")
                if convention == "pytorch":
                    ours = sgdx.momentum_buffers(state)[f"{layer}.{name_}"]
                    assert (ours is not None) == (torch_buf is not None)
                    if torch_buf is not None:
                        np.testing.assert_allclose(ours, torch_buf.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128], ids=lambda d: np.dtype(d).name)
def test_complex_parameters_match_torch_with_conjugated_jax_gradients(dtype):
    """JAX's gradient of a real loss w.r.t. complex z is the conjugate of torch's .grad:
    feeding sgdx jnp.conj(grads) reproduces torch's trajectory."""
    rng = np.random.default_rng(4)
    z0 = (rng.normal(size=5) + 1j * rng.normal(size=5)).astype(dtype)
    target = (rng.normal(size=5) + 1j * rng.normal(size=5)).astype(dtype)

    def loss_np(z, lib):
        d = z - lib(target)
        return (d * d.conj()).real.sum() + 0.1 * ((z * z.conj()).real ** 2).sum()

    kwargs = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
    z_t = torch.tensor(z0, requires_grad=True)
    opt = torch.optim.SGD([z_t], lr=0.02, **kwargs)
    tx = sgdx.sgd(0.02, **kwargs)
    z = jnp.asarray(z0)
    state = tx.init(z)
    grad = jax.jit(jax.grad(lambda z: loss_np(z, jnp.asarray)))
    rtol = 1e-5 if dtype == np.complex64 else 1e-12
    for k in range(15):
        opt.zero_grad()
        loss_np(z_t, torch.tensor).backward()
        opt.step()
        g = grad(z)
        np.testing.assert_allclose(np.conj(g), z_t.grad.numpy(), rtol=rtol)
        updates, state = tx.update(jnp.conj(g), state, z)
        z = sgdx.apply_updates(z, updates)
        assert z.dtype == dtype
        np.testing.assert_allclose(z, z_t.detach().numpy(), rtol=rtol, err_msg=f"step {k + 1}")


def test_sutskever_equals_pytorch_convention_while_lr_is_constant():
    dtype = np.float64
    kwargs = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True}
    problem = oracle.make_problem(5, dtype)
    options = {k: v for k, v in kwargs.items() if k != "lr"}
    torch_run = oracle.run_torch({**kwargs}, problem, dtype, steps=oracle.LR_SWITCH)
    sutskever_run = oracle.run_sgdx(
        sgdx.sgd(0.05, **options, convention="sutskever"), problem, steps=oracle.LR_SWITCH
    )
    for key in (k for k in torch_run if k.startswith("param/")):
        np.testing.assert_allclose(sutskever_run[key], torch_run[key], rtol=1e-12, atol=1e-12)
