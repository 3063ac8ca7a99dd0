"""Bad input raises a clear error: torch's wording for hyperparameters, the path for trees."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import sgdx

# (kwargs for sgd and torch.optim.SGD, message); torch raises the same ValueError.
ERROR_CONFIGS = [
    ({"lr": -0.1}, "Invalid learning rate: -0.1"),
    ({"lr": 1e-2, "momentum": -0.5}, "Invalid momentum value: -0.5"),
    ({"lr": 1e-2, "weight_decay": -1}, "Invalid weight_decay value: -1"),
    ({"lr": 1e-2, "nesterov": True}, "Nesterov momentum requires a momentum and zero dampening"),
    (
        {"lr": 1e-2, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        "Nesterov momentum requires a momentum and zero dampening",
    ),
]


def sgd_from_torch_kwargs(kwargs):
    kwargs = dict(kwargs)
    return sgdx.sgd(kwargs.pop("lr"), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), ERROR_CONFIGS)
def test_invalid_hyperparameters_raise_torch_message(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sgd_from_torch_kwargs(kwargs)


@pytest.mark.parametrize(("kwargs", "message"), ERROR_CONFIGS)
def test_torch_raises_the_same_message(kwargs, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: sgdx.sgd(0.1, convention="keras"), "Unknown convention 'keras'"),
        (lambda: sgdx.sgd(jnp.ones(3)), r"learning_rate must be a scalar .* shape \(3,\)"),
        (lambda: sgdx.sgd(jnp.asarray(-0.5)), "Invalid learning rate: -0.5"),
        (lambda: sgdx.sgd(0.1, momentum=jnp.asarray(-0.5)), "Invalid momentum value: -0.5"),
        (
            lambda: sgdx.sgd(0.1, 0.9, convention="sutskever", nesterov=True, dampening=0.5),
            "Nesterov momentum requires",
        ),
        (lambda: sgdx.trace(-0.1), "Invalid momentum value: -0.1"),
        (lambda: sgdx.add_decayed_weights(-2), "Invalid weight_decay value: -2"),
        (lambda: sgdx.scale_by_learning_rate(-1.0), "Invalid learning rate: -1.0"),
        (lambda: sgdx.sutskever_trace(-1.0, 0.9), "Invalid learning rate: -1.0"),
    ],
)
def test_invalid_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_keyword_argument_is_rejected():
    with pytest.raises(TypeError, match="lr"):
        sgdx.sgd(lr=0.1)  # torch's name; sgdx follows optax: learning_rate


def test_schedule_returning_non_scalar():
    tx = sgdx.sgd(lambda count: jnp.ones(2))
    with pytest.raises(ValueError, match="schedule must return a scalar"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_weight_decay_without_params():
    tx = sgdx.sgd(0.1, weight_decay=1e-4)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_gradient_tree_mismatch_names_the_path():
    params = {"encoder": {"w": jnp.ones(2), "b": jnp.ones(2)}}
    tx = sgdx.sgd(0.1, momentum=0.9)
    grads = {"encoder": {"w": jnp.ones(2), "bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"\['encoder'\]\['bias'\].*\['encoder'\]\['b'\]"):
        tx.update(grads, tx.init(params), params)


def test_gradient_shape_mismatch_names_the_path():
    params = {"w": jnp.ones((2, 3))}
    tx = sgdx.sgd(0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(3, 2\).*\(2, 3\)"):
        tx.update({"w": jnp.ones((3, 2))}, tx.init(params), params)


def test_integer_parameters_are_rejected_at_init():
    with pytest.raises(TypeError, match=r"\['step'\] has dtype int32"):
        sgdx.sgd(0.1).init({"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)})


def test_integer_gradients_are_rejected():
    tx = sgdx.sgd(0.1)
    with pytest.raises(TypeError, match=r"update at \['w'\] has dtype int32"):
        tx.update({"w": jnp.ones(2, jnp.int32)}, tx.init({"w": jnp.ones(2)}))


def test_state_from_another_configuration():
    params = jnp.ones(2)
    with_momentum = sgdx.sgd(0.1, momentum=0.9)
    plain = sgdx.sgd(0.1)
    with pytest.raises(ValueError, match=r"state tuple of 2 entries .* got a tuple of 3"):
        plain.update(params, with_momentum.init(params))
    nesterov = sgdx.sgd(0.1, 0.9, weight_decay=0.1)
    with pytest.raises(TypeError, match="trace: expected sgdx's TraceState"):
        nesterov.update(
            params, (sgdx.EmptyState(), *reversed(with_momentum.init(params)[1:])), params
        )


def test_errors_raise_at_trace_time_under_jit():
    tx = sgdx.sgd(0.1, momentum=0.9)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"\['w'\]"):
        jax.jit(tx.update)({"w": jnp.ones(3)}, tx.init(params), params)
