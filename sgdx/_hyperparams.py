"""Hyperparameter handling: construction-time validation and learning-rate evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


def is_off(value: Any) -> bool:
    """Whether a switch hyperparameter (momentum, weight decay) turns its part off by
    construction: ``None`` (optax's spelling) or a Python ``0`` (torch's). An array, even a
    zero one, is traced: its part stays in the computation and may become non-zero."""
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    )


def is_number(value: Any) -> bool:
    """Whether ``value`` is a Python number, a numpy scalar or an array (of any dtype:
    :func:`is_real_dtype` tells which hold real numbers)."""
    return isinstance(value, int | float | np.generic | np.ndarray | jax.Array)


def is_real_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` holds real numbers: any integer or real floating dtype, bfloat16,
    float16 and float8 included (``np.number`` leaves out JAX's extra floating types)."""
    return (
        bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
        and np.dtype(dtype) != np.bool_
    )


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def check_hyperparameter(value: Any, name: str) -> None:
    """Checks that ``value`` is a real scalar (a Python number or a 0-d real array, concrete or
    traced) and, for the names in ``NEGATIVE_MESSAGES``, not concretely negative (raising
    torch's message). ``NaN`` passes, as it does in ``torch.optim.SGD``.

    Raises:
      TypeError: for a bool (a flag in a numeric position: sgdx's positional order is
        torch's), a function, ``None``, a string or other non-number, or a complex value.
      ValueError: for an array that is not a scalar, or a negative value.
    """
    expected = "a real number (a Python float or a 0-d real array)"
    if name == "learning_rate":
        expected += " or a schedule count -> lr"
    dtype = getattr(value, "dtype", None)
    if isinstance(value, bool | np.bool_) or (dtype is not None and np.dtype(dtype) == np.bool_):
        raise TypeError(
            f"{name} must be {expected}, got the bool {value!r}. sgdx.sgd takes torch's "
            "positional order (learning_rate, momentum, dampening, weight_decay, nesterov); "
            "pass flags by keyword, e.g. sgdx.sgd(0.1, 0.9, nesterov=True)."
        )
    if callable(value):
        raise TypeError(
            f"{name} must be {expected}, got a function. Here only learning_rate takes a "
            f"schedule; sgdx.inject_hyperparams(sgdx.sgd) takes a schedule for {name} too."
        )
    if not is_number(value):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}.")
    dtype = value.dtype if isinstance(value, np.ndarray | np.generic | jax.Array) else None
    dtype = jnp.result_type(value) if dtype is None else dtype
    if not is_real_dtype(dtype):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)} of dtype {dtype}.")
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be {expected}, got an array of shape {jnp.shape(value)}.")
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
    shape = getattr(learning_rate, "shape", ())
    if isinstance(learning_rate, np.ndarray | jax.Array) and math.prod(shape) != 1:
        raise ValueError(
            f"Tensor lr must be 1-element: learning_rate is an array of shape {shape}; pass a "
            "float, a one-element array or a schedule count -> lr. For different learning "
            "rates on different parameters use param groups (sgdx.param_groups)."
        )
    if isinstance(learning_rate, np.ndarray | jax.Array) and learning_rate.ndim:
        learning_rate = jnp.reshape(learning_rate, ())
    check_hyperparameter(learning_rate, "learning_rate")
    return learning_rate


def check_switch(value: Any, name: str) -> None:
    """:func:`check_hyperparameter`, with ``None`` allowed (the part switched off)."""
    if value is not None:
        check_hyperparameter(value, name)


def check_flag(value: Any, name: str) -> None:
    """Raises a ``TypeError`` unless ``value`` is a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} must be a bool (True or False), got {_describe(value)}. Structural "
            "options are fixed when the optimizer is built; numbers go in the numeric "
            "arguments (momentum, dampening, weight_decay)."
        )


def learning_rate_at(
    learning_rate: ScalarOrSchedule, scalar: ArrayLike | None, count: jax.Array
) -> jax.Array:
    """The learning rate for the update with ``count`` updates before it, as a 0-d array."""
    if scalar is not None:
        return jnp.asarray(scalar)
    assert callable(learning_rate)
    return scheduled(learning_rate, count, "learning_rate")


def scheduled(schedule: Callable[[jax.Array], Any], count: jax.Array, name: str) -> jax.Array:
    """``schedule(count)``, the value of hyperparameter ``name``, checked to be a real
    scalar, as a 0-d array."""
    value = schedule(count)
    if isinstance(value, bool) or not is_number(value):
        raise TypeError(
            f"The {name} schedule returned {_describe(value)} for count {count}; a "
            "schedule must return a real scalar (a float or a 0-d array)."
        )
    value = jnp.asarray(value)
    if not is_real_dtype(value.dtype):
        raise TypeError(
            f"The {name} schedule returned an array of dtype {value.dtype}; a schedule "
            "must return a real scalar."
        )
    if value.shape != ():
        raise ValueError(
            f"The {name} schedule returned an array of shape {value.shape} for count "
            f"{count}; a schedule must return a scalar {name}."
        )
    return value


def cast(value: ArrayLike, like: jax.Array) -> jax.Array:
    """``value`` as an array of ``like``'s dtype (explicit, never implicit promotion)."""
    return jnp.asarray(value, dtype=like.dtype)


def select(condition: Any, on_true: jax.Array, on_false: jax.Array) -> jax.Array:
    """``jnp.where(condition, on_true, on_false)`` for a scalar ``condition`` and two arrays of
    one shape and dtype, as one ``select``: a Python (or NumPy) bool picks its branch while
    tracing, and no nested ``jit`` is traced per leaf (2000 leaves: seconds of compile time)."""
    if isinstance(condition, bool | np.bool_):
        return on_true if condition else on_false
    return jax.lax.select(jnp.asarray(condition), on_true, on_false)
