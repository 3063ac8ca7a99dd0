"""Hyperparameter handling: concrete-value validation and learning-rate evaluation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sgdx._base import ScalarOrSchedule


def concrete(value: ArrayLike) -> float | complex | None:
    """The Python number held by ``value``, or ``None`` when it is a tracer."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, int | float):
        return value
    return np.asarray(value).reshape(()).item()


def check_nonnegative(value: ArrayLike, message: str) -> None:
    """Raises ``ValueError(message.format(value))`` when ``value`` is concretely negative.

    ``NaN`` passes, as it does in ``torch.optim.SGD``.
    """
    number = concrete(value)
    if number is not None and number < 0:
        raise ValueError(message.format(number))


def check_learning_rate(learning_rate: ScalarOrSchedule) -> ArrayLike | None:
    """Validates a learning rate given as a number or array; schedules are checked per call.

    Returns the learning rate as a scalar (a one-element array becomes a 0-d array, as
    ``torch.optim.SGD`` accepts a one-element tensor), or ``None`` for a schedule.
    """
    if callable(learning_rate):
        return None
    size = math.prod(jnp.shape(learning_rate))
    if size != 1:
        raise ValueError(
            f"learning_rate must be a scalar (a float, a one-element array or a schedule "
            f"count -> lr), got an array of shape {jnp.shape(learning_rate)}. For different "
            "learning rates on different parameters use separate transforms or param groups."
        )
    if jnp.ndim(learning_rate):
        learning_rate = jnp.reshape(learning_rate, ())
    check_nonnegative(learning_rate, "Invalid learning rate: {}")
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
