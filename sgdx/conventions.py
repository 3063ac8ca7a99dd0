"""PyTorch's and Sutskever's momentum conventions: exact state conversion and comparison.

PyTorch keeps a learning-rate-free buffer and scales the step, ``buf = m*buf + g;
p -= lr*buf``. Sutskever (Keras, TensorFlow, the 2013 paper) keeps the learning rate inside
the velocity, ``v = m*v - lr*g; p += v``. With a constant learning rate they are the same
trajectory, related by ``v = -lr * buf``; when the learning rate changes, Sutskever's past
gradients keep the learning rate they were taken with, PyTorch's take the new one.
``sgd(..., convention="sutskever", momentum_correction=True)`` rescales the velocity by
``lr_new / lr_old`` and so follows PyTorch's trajectory under any schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _hyperparams, _sgd_state, _tree
from sgdx._base import EmptyState, OptState, Params, ScalarOrSchedule, apply_updates
from sgdx._groups import ParamGroupsState
from sgdx._inject import InjectHyperparamsState
from sgdx._momentum import SutskeverTraceState, TraceState
from sgdx._sgd import sgd
from sgdx._sgd_state import SGDState
from sgdx._transforms import ScaleByLearningRateState

__all__ = ["compare", "pytorch_to_sutskever", "sutskever_to_pytorch"]


def pytorch_to_sutskever(state: OptState, learning_rate: ScalarOrSchedule) -> OptState:
    """Converts an ``sgd(convention="pytorch")`` state into the ``"sutskever"`` state that
    continues the same trajectory.

    Each velocity is :math:`v = -\\eta b`, where :math:`\\eta` is the learning rate of the
    next update (a schedule is evaluated at the state's count); parameters whose buffer
    has not started yet keep a zero velocity. Everything else (the step count, other
    transforms' states) carries over. Every sgd state inside ``state`` is converted, so the
    state of a wrapper such as :func:`sgdx.skip_nonfinite` converts whole.

    Args:
      state: the state of ``sgd(..., convention="pytorch")`` with momentum.
      learning_rate: the learning rate (or the schedule) of the run.

    Returns:
      The state for the same ``sgd(...)`` arguments with ``convention="sutskever"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> from sgdx import conventions
      >>> pytorch, sutskever = sgdx.sgd(0.5, 0.9), sgdx.sgd(0.5, 0.9, convention="sutskever")
      >>> state = pytorch.init(jnp.zeros(1))
      >>> _, state = pytorch.update(jnp.array([1.0]), state)  # buf = 1
      >>> print(conventions.pytorch_to_sutskever(state, 0.5).momentum.velocity)
      [-0.5]
    """
    scalar = _hyperparams.check_learning_rate(learning_rate)

    def convert(sgd_state: SGDState) -> SGDState:
        trace_state = sgd_state.momentum
        if not isinstance(trace_state, TraceState):
            raise ValueError(
                "pytorch_to_sutskever expects the state of sgd(..., convention='pytorch') "
                f"with momentum (a TraceState); this one holds {type(trace_state).__name__}: "
                "without momentum both conventions share one state and nothing needs "
                "converting."
            )
        count = _sgd_state.count(sgd_state)
        count = jnp.zeros((), jnp.int32) if count is None else count
        lr = _hyperparams.learning_rate_at(learning_rate, scalar, count)

        def velocity(buf: jax.Array, initialized: jax.Array) -> jax.Array:
            return jnp.where(initialized, -_hyperparams.cast(lr, buf) * buf, 0).astype(buf.dtype)

        def scale(buf: jax.Array, initialized: jax.Array) -> jax.Array:
            return jnp.real(jnp.where(initialized, _hyperparams.cast(lr, buf), 0))

        buffers = trace_state.momentum_buffer
        flags = _tree.per_leaf(trace_state.initialized, buffers, "momentum flags")
        converted = SutskeverTraceState(
            velocity=jax.tree.map(velocity, buffers, flags),
            initialized=trace_state.initialized,
            learning_rate=_tree.stack(
                jax.tree.map(scale, buffers, flags), _hyperparams.default_float()
            ),
            count=count,
        )
        return sgd_state._replace(momentum=converted, learning_rate=None)

    return _sgd_state.replace(_states(state, "pytorch_to_sutskever"), convert)


def sutskever_to_pytorch(state: OptState, learning_rate: ScalarOrSchedule) -> OptState:
    """Converts an ``sgd(convention="sutskever")`` state into the ``"pytorch"`` state that
    continues the same trajectory.

    Each buffer is :math:`b = -v / \\eta_{\\text{last}}`, with the learning rate the velocity
    was last scaled by (held per parameter in the state). Under a constant learning rate
    the two runs then continue identically; :func:`pytorch_to_sutskever` inverts this up to
    one rounding (bitwise when the learning rate is a power of two).

    Args:
      state: the state of ``sgd(..., convention="sutskever")`` with momentum.
      learning_rate: the learning rate (or the schedule) of the run: whether the PyTorch
        state keeps a count (a schedule) or not, as ``sgd`` builds it.

    Returns:
      The state for the same ``sgd(...)`` arguments with ``convention="pytorch"``.

    Raises:
      ValueError: when a started velocity was last scaled by a learning rate of 0 (its
        buffer cannot be recovered).
    """

    def convert(sgd_state: SGDState) -> SGDState:
        inner = sgd_state.momentum
        if not isinstance(inner, SutskeverTraceState):
            raise ValueError(
                "sutskever_to_pytorch expects the state of sgd(..., convention='sutskever') "
                f"with momentum (a SutskeverTraceState); this one holds {type(inner).__name__}:"
                " without momentum both conventions share one state and nothing needs "
                "converting."
            )
        started_at_zero = inner.initialized & (inner.learning_rate == 0)
        if not isinstance(started_at_zero, jax.core.Tracer) and bool(started_at_zero.any()):
            raise ValueError(
                "sutskever_to_pytorch: a velocity was last updated with learning rate 0, "
                "so v = -lr * buf holds no trace of the buffer; convert at a step with a "
                "positive learning rate."
            )

        def buffer(v: jax.Array, flag: jax.Array, lr: jax.Array) -> jax.Array:
            lr = lr.astype(v.dtype)
            return jnp.where(flag, -v / jnp.where(flag, lr, 1), 0).astype(v.dtype)

        trace_state = TraceState(
            momentum_buffer=jax.tree.map(
                buffer,
                inner.velocity,
                _tree.per_leaf(inner.initialized, inner.velocity, "momentum flags"),
                _tree.per_leaf(inner.learning_rate, inner.velocity, "learning rates"),
            ),
            initialized=inner.initialized,
        )
        schedule = (
            EmptyState()
            if _hyperparams.check_learning_rate(learning_rate) is not None
            else ScaleByLearningRateState(count=inner.count)
        )
        return sgd_state._replace(momentum=trace_state, learning_rate=schedule)

    return _sgd_state.replace(_states(state, "sutskever_to_pytorch"), convert)


def _states(state: OptState, who: str) -> OptState:
    """``state``, checked to hold sgd states outside any hyperparameter wrapper."""
    if isinstance(state, InjectHyperparamsState | ParamGroupsState):
        raise TypeError(
            f"{who}: expected the state of sgdx.sgd(...), got an {type(state).__name__}: "
            "convert the sgd state inside it, e.g. state._replace(inner_state=conventions."
            "pytorch_to_sutskever(state.inner_state, state.hyperparams['learning_rate'])) for "
            "inject_hyperparams (each group's for param_groups), and build the optimizer again "
            "with the other convention."
        )
    if not _sgd_state.states(state):
        raise TypeError(
            f"{who}: expected the state of sgdx.sgd(...) (an SGDState), got "
            f"{type(state).__name__}. {_tree.made_by(state)}"
        )
    return state


def compare(
    loss: Callable[[Params], jax.Array],
    params: Params,
    learning_rate: ScalarOrSchedule,
    steps: int,
    *,
    momentum_correction: bool = False,
    callback: Callable[[int], None] | None = None,
    **sgd_kwargs: Any,
) -> dict[str, np.ndarray]:
    """Runs full-batch gradient descent on ``loss`` under both conventions, side by side.

    Args:
      loss: a scalar function of the parameters.
      params: the initial parameters.
      learning_rate: a float or a schedule ``count -> lr``, shared by both runs.
      steps: number of updates.
      momentum_correction: apply it on the Sutskever side.
      callback: called with the step index after each step (e.g. a progress bar).
      **sgd_kwargs: the other :func:`sgdx.sgd` arguments (momentum, nesterov, ...).

    Returns:
      Arrays of length ``steps + 1`` (entry 0 is the initial point): ``lr`` (the learning
      rate of the step that led there; entry 0 is NaN), ``loss_pytorch``,
      ``loss_sutskever``, ``norm_pytorch``, ``norm_sutskever`` (parameter L2 norms) and
      ``divergence`` (L2 norm of the difference between the two runs' parameters).
    """
    runs = {
        name: sgd(
            learning_rate,
            convention=name,
            momentum_correction=momentum_correction and name == "sutskever",
            fused=False,  # both conventions in the same (pure-JAX) arithmetic
            **sgd_kwargs,
        )
        for name in ("pytorch", "sutskever")
    }
    value_and_grad = jax.value_and_grad(loss)

    def norm(tree: Params) -> jax.Array:
        return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree.leaves(tree)))

    @jax.jit
    def step(both: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, tx in runs.items():
            p, s = both[name]
            _, grads = value_and_grad(p)
            updates, s = tx.update(grads, s, p)
            out[name] = (apply_updates(p, updates), s)
        return out

    @jax.jit
    def measure(pt: Params, sk: Params) -> tuple[jax.Array, ...]:
        difference = jax.tree.map(jnp.subtract, pt, sk)
        return loss(pt), loss(sk), norm(pt), norm(sk), norm(difference)

    scalar = _hyperparams.check_learning_rate(learning_rate)
    both = {name: (params, tx.init(params)) for name, tx in runs.items()}
    rows = [(np.nan, *measure(params, params))]
    for k in range(steps):
        both = step(both)
        lr = _hyperparams.learning_rate_at(learning_rate, scalar, jnp.asarray(k, jnp.int32))
        rows.append((float(lr), *measure(both["pytorch"][0], both["sutskever"][0])))
        if callback is not None:
            callback(k)
    columns = np.asarray(rows, dtype=np.float64).T
    names = ("lr", "loss_pytorch", "loss_sutskever", "norm_pytorch", "norm_sutskever", "divergence")
    return dict(zip(names, columns, strict=True))
