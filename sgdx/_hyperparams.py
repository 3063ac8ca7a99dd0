"""Hyperparameter handling: construction-time validation and learning-rate evaluation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sgdx._base import ScalarOrSchedule


def default_float() -> np.dtype:
    """JAX's default float dtype: float64 with x64 on, float32 otherwise."""
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def concrete(value: ArrayLike) -> float | None:
    """The Python number held by ``value``, or ``None`` when it is a tracer."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, int | float):
        return value
    number: float = np.asarray(value).reshape(()).item()
    return number


# torch.optim's ValueError messages for negative values, by argument name.
NEGATIVE_MESSAGES = {
    "learning_rate": "Invalid learning rate: {}",
    "base_lr": "Invalid learning rate: {}",
    "momentum": "Invalid momentum value: {}",
    "weight_decay": "Invalid weight_decay value: {}",
    "gamma": "Invalid gamma value: {}",
}


def check_hyperparameter(value: ArrayLike, name: str) -> None:
    """Checks that ``value`` is a real scalar and, for the names in ``NEGATIVE_MESSAGES``,
    not concretely negative (raising torch's message).

    ``NaN`` passes, as it does in ``torch.optim.SGD``.
    """
    if callable(value) or jnp.ndim(value) != 0 or jnp.iscomplexobj(value):
        shape = "a function" if callable(value) else f"shape {jnp.shape(value)}"
        raise ValueError(f"{name} must be a real scalar (a float or 0-d array), got {shape}.")
    number = concrete(value)
    if name in NEGATIVE_MESSAGES and number is not None and number < 0:
        raise ValueError(NEGATIVE_MESSAGES[name].format(number))


def check_learning_rate(learning_rate: ScalarOrSchedule) -> ArrayLike | None:
    """Validates a learning rate given as a number or array; schedules are checked per call.

    Returns the learning rate as a scalar (a one-element array becomes a 0-d array, as
    ``torch.optim.SGD`` accepts a one-element tensor), or ``None`` for a schedule.
    """
    if callable(learning_rate):
        return None
    if math.prod(jnp.shape(learning_rate)) != 1:
        raise ValueError(
            f"learning_rate must be a scalar (a float, a one-element array or a schedule "
            f"count -> lr), got an array of shape {jnp.shape(learning_rate)}. For different "
            "learning rates on different parameters use separate transforms or param groups."
        )
    learning_rate = jnp.reshape(learning_rate, ()) if jnp.ndim(learning_rate) else learning_rate
    check_hyperparameter(learning_rate, "learning_rate")
    return learning_rate


def learning_rate_at(
    learning_rate: ScalarOrSchedule, scalar: ArrayLike | None, count: jax.Array
) -> jax.Array:
    """The learning rate for the update with ``count`` updates before it, as a 0-d array."""
    if scalar is not None:
        return jnp.asarray(scalar)
    assert callable(learning_rate)
    value = jnp.asarray(learning_rate(count))
    if value.shape != ():
        raise ValueError(
            f"The learning-rate schedule returned an array of shape {value.shape} for count "
            f"{count}; a schedule must return a scalar learning rate."
        )
    return value


def cast(value: ArrayLike, like: jax.Array) -> jax.Array:
    """``value`` as an array of ``like``'s dtype (explicit, never implicit promotion)."""
    return jnp.asarray(value, dtype=like.dtype)
