"""Momentum in both conventions: `trace` (PyTorch's buffer) and `sutskever_trace`
(Sutskever's / Keras's velocity, with the learning rate inside)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from sgdx import _hyperparams, _tree
from sgdx._base import GradientTransformation, Params, PyTree, ScalarOrSchedule, Updates


def _zeros_and_flags(
    params: Params, accumulator_dtype: DTypeLike | None, who: str
) -> tuple[PyTree, jax.Array]:
    _tree.check_inexact(params, who)
    buffers = jax.tree.map(lambda p: _tree.zeros_like(p, accumulator_dtype), params)
    return buffers, _tree.host_array(np.zeros(len(jax.tree.leaves(buffers)), np.bool_), params)


class TraceState(NamedTuple):
    """State of :func:`trace`: PyTorch's ``momentum_buffer`` per parameter."""

    momentum_buffer: PyTree
    """One buffer per parameter, in the parameter's dtype or ``accumulator_dtype``."""
    initialized: jax.Array
    """Boolean, shape ``(number of buffers,)``, in ``jax.tree.leaves(momentum_buffer)`` order:
    has that buffer received a gradient yet? One array, not a tree of scalars, so that
    sharding recipes that give every parameter-shaped tree the parameters' shardings
    (``optax.tree.map_params``) leave it replicated."""


def trace(
    momentum: ArrayLike,
    *,
    dampening: ArrayLike = 0.0,
    nesterov: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""PyTorch's momentum buffer, with dampening, its first-step rule and nesterov.

    For each parameter with a gradient :math:`g`, with momentum :math:`\mu` and dampening
    :math:`\tau`:

    .. math::

      b \leftarrow \begin{cases} g & \text{on the parameter's first update} \\
                                 \mu b + (1 - \tau) g & \text{afterwards} \end{cases}
      \qquad
      u \leftarrow \begin{cases} g + \mu b & \text{nesterov} \\ b & \text{otherwise.}
      \end{cases}

    A parameter's first update is the first step in which its gradient is not ``None``;
    a ``None`` gradient leaves its buffer untouched. When :math:`\mu = 0` the update is
    :math:`g` and the buffer is left alone, exactly as ``torch.optim.SGD`` skips its
    momentum branch.

    Note:
      Unlike ``optax.trace``, the buffer is *not* zero-initialised: the first gradient is
      copied in (so with dampening the first step is not damped), and the trace is
      :math:`\mu b + (1-\tau) g`, not :math:`g + \mu b`.

    Args:
      momentum: :math:`\mu \ge 0`, a float or scalar array (traceable).
      dampening: :math:`\tau`, a float or scalar array (traceable).
      nesterov: use Nesterov momentum.
      accumulator_dtype: dtype of the buffers; ``None`` keeps each parameter's dtype.
        Gradients are cast to it, and the update is cast back to the gradient's dtype.

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`TraceState`.

    Raises:
      ValueError: ``Invalid momentum value: {momentum}`` for a negative value.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.trace(0.9, dampening=0.5)
      >>> state = tx.init(jnp.zeros(1))
      >>> for g in (1.0, 1.0):
      ...     updates, state = tx.update(jnp.array([g]), state)
      ...     print(updates)  # 1, then 0.9 * 1 + 0.5 * 1
      [1.]
      [1.4]

    References:
      ``torch.optim.SGD`` (PyTorch >= 1.13), https://pytorch.org/docs/stable/generated/torch.optim.SGD.html
    """
    _hyperparams.check_hyperparameter(momentum, "momentum")
    _hyperparams.check_hyperparameter(dampening, "dampening")
    _tree.check_accumulator_dtype(accumulator_dtype, "trace")
    _hyperparams.check_flag(nesterov, "nesterov")

    def init_fn(params: Params) -> TraceState:
        buffers, flags = _zeros_and_flags(params, accumulator_dtype, "trace")
        return TraceState(momentum_buffer=buffers, initialized=flags)

    undamped = _hyperparams.concrete(dampening) == 0  # (1 - 0) * g is g, exactly

    def leaf(g: jax.Array, buf: jax.Array, *initialized: jax.Array) -> tuple[Any, ...]:
        acc = _tree.match_sharding(g.astype(buf.dtype), buf)
        mu = _hyperparams.cast(momentum, buf)
        if undamped:  # a buffer that has not started is zero: mu * 0 + g is torch's copy of g
            new_buf = mu * buf + acc
        else:
            damped = _hyperparams.cast(1 - dampening, buf) * acc
            new_buf = _hyperparams.select(initialized[0], mu * buf + damped, acc)
        direction = acc + mu * new_buf if nesterov else new_buf
        active = momentum != 0  # in the given precision, as torch tests it
        return (
            _hyperparams.select(active, direction, acc).astype(g.dtype),
            _hyperparams.select(active, new_buf, buf),
            *initialized,  # the flags are updated all at once, below
        )

    def update_fn(
        updates: Updates, state: TraceState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, TraceState]:
        del params, extra_args
        _tree.check_state(state, TraceState, "trace")
        trees = [state.momentum_buffer]
        if not undamped:  # only dampening tells a started buffer from one that is not
            trees.append(_tree.per_leaf(state.initialized, state.momentum_buffer, "momentum flags"))
        new_updates, buffers, *_ = _tree.map_updates(
            leaf,
            updates,
            *trees,
            names=("momentum buffers", "momentum flags")[: len(trees)],
            same_shape_as=0,
        )
        # a buffer starts at its parameter's first gradient (with momentum on): one `or`
        # over the flag vector, not one per leaf
        started = np.zeros(state.initialized.shape, np.bool_)
        for g, k in zip(
            jax.tree.leaves(updates, is_leaf=_tree.is_none),
            _tree.positions(state.momentum_buffer),
            strict=True,
        ):
            if g is not None and k is not None:
                started[k] = True
        active = momentum != 0
        if isinstance(active, bool | np.bool_):
            initialized = state.initialized | started if active else state.initialized
        else:
            initialized = state.initialized | (jnp.asarray(started) & active)
        return new_updates, TraceState(buffers, initialized)

    return GradientTransformation(init_fn, update_fn)


class SutskeverTraceState(NamedTuple):
    """State of :func:`sutskever_trace`: the velocity per parameter."""

    velocity: PyTree
    """One velocity per parameter, in the parameter's dtype or ``accumulator_dtype``."""
    initialized: PyTree
    """One boolean scalar per parameter: has its velocity received a gradient yet?"""
    learning_rate: PyTree
    """One scalar per parameter (velocity dtype): the learning rate of its last update, the
    scale of its velocity (``v = -lr_last * buf`` in PyTorch's terms)."""
    count: jax.Array  # type: ignore[assignment]  # optax's name, shadowing tuple.count
    """Updates applied so far (int32, saturating); the schedule's argument."""


def sutskever_trace(
    learning_rate: ScalarOrSchedule,
    momentum: ArrayLike,
    *,
    dampening: ArrayLike = 0.0,
    nesterov: bool = False,
    momentum_correction: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Sutskever's (Keras's, TensorFlow's) momentum, with the learning rate inside.

    For each parameter with a gradient :math:`g`, learning rate :math:`\eta_t`, momentum
    :math:`\mu` and dampening :math:`\tau`:

    .. math::

      v \leftarrow \begin{cases} -\eta_t g & \text{on the parameter's first update} \\
                                 \mu c v - \eta_t (1 - \tau) g & \text{afterwards} \end{cases}
      \qquad
      u \leftarrow \begin{cases} \mu v - \eta_t g & \text{nesterov} \\ v & \text{otherwise,}
      \end{cases}

    where :math:`c = 1`, or with ``momentum_correction`` :math:`c = \eta_t / \eta_{\text{last}}`,
    the ratio of this learning rate to the one of the parameter's previous update (1 when
    that was 0).

    With a constant learning rate this is :func:`trace` followed by
    :func:`scale_by_learning_rate`, with :math:`v = -\eta b`. When :math:`\eta` changes the
    two differ: here past gradients keep the learning rate they were taken with. Momentum
    correction rescales the velocity to the new learning rate, which makes the trajectory
    PyTorch's again under any schedule (the large-batch training recipe of Goyal et al.).
    When :math:`\mu = 0` the update is :math:`-\eta_t g` and the velocity is left alone.
    This transform produces the final update: do not follow it with
    :func:`scale_by_learning_rate`.

    Args:
      learning_rate: :math:`\eta \ge 0`: a float, a scalar array, or a schedule
        ``count -> lr`` (``count`` = updates already applied).
      momentum: :math:`\mu \ge 0`, a float or scalar array (traceable).
      dampening: :math:`\tau`, a float or scalar array (traceable).
      nesterov: use Nesterov momentum.
      momentum_correction: rescale the velocity by :math:`\eta_t / \eta_{\text{last}}`.
      accumulator_dtype: dtype of the velocities; ``None`` keeps each parameter's dtype.

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`SutskeverTraceState`.

    Raises:
      ValueError: ``Invalid learning rate: {lr}`` or ``Invalid momentum value: {momentum}``
        for negative values; a non-scalar learning rate.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.sutskever_trace(lambda count: jnp.where(count == 0, 0.5, 0.25), 0.5)
      >>> state = tx.init(jnp.zeros(1))
      >>> for _ in range(2):
      ...     updates, state = tx.update(jnp.array([1.0]), state)
      ...     print(updates)  # -0.5, then 0.5 * -0.5 - 0.25 (PyTorch's: -0.25 * 1.5)
      [-0.5]
      [-0.5]

    References:
      Sutskever, Martens, Dahl, Hinton, "On the importance of initialization and momentum
      in deep learning", ICML 2013; ``keras.optimizers.SGD``; Goyal et al., "Accurate,
      Large Minibatch SGD: Training ImageNet in 1 Hour", 2017 (momentum correction).
    """
    scalar = _hyperparams.check_learning_rate(learning_rate)
    _hyperparams.check_hyperparameter(momentum, "momentum")
    _hyperparams.check_hyperparameter(dampening, "dampening")
    _tree.check_accumulator_dtype(accumulator_dtype, "sutskever_trace")
    _hyperparams.check_flag(nesterov, "nesterov")
    _hyperparams.check_flag(momentum_correction, "momentum_correction")

    def init_fn(params: Params) -> SutskeverTraceState:
        velocity, flags = _zeros_and_flags(params, accumulator_dtype, "sutskever_trace")
        last_lr = _tree.host_array(np.zeros(flags.shape, _hyperparams.default_float()), params)
        return SutskeverTraceState(velocity, flags, last_lr, count=jnp.zeros((), jnp.int32))

    def update_fn(
        updates: Updates,
        state: SutskeverTraceState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SutskeverTraceState]:
        del params, extra_args
        _tree.check_state(state, SutskeverTraceState, "sutskever_trace")
        lr_t = _hyperparams.learning_rate_at(learning_rate, scalar, state.count)

        def leaf(
            g: jax.Array, v: jax.Array, initialized: jax.Array, last_lr: jax.Array
        ) -> tuple[Any, ...]:
            acc = _tree.match_sharding(g.astype(v.dtype), v)
            lr = _hyperparams.cast(lr_t, v)
            mu = _hyperparams.cast(momentum, v)
            last_lr = last_lr.astype(v.dtype)
            carried = v
            if momentum_correction:
                has_last = last_lr != 0
                carried = v * jnp.where(has_last, lr / jnp.where(has_last, last_lr, 1), 1)
            damped_lr = lr * _hyperparams.cast(1 - dampening, v)
            new_v = jnp.where(initialized, mu * carried - damped_lr * acc, -lr * acc)
            direction = mu * new_v - lr * acc if nesterov else new_v
            active = momentum != 0  # in the given precision, as torch tests it
            return (
                jnp.where(active, direction, -lr * acc).astype(g.dtype),
                jnp.where(active, new_v, v),
                initialized | active,
                jnp.where(active, lr, last_lr),
            )

        updates, velocity, flags, last_lr = _tree.map_updates(
            leaf,
            updates,
            state.velocity,
            _tree.per_leaf(state.initialized, state.velocity, "momentum flags"),
            _tree.per_leaf(state.learning_rate, state.velocity, "learning rates"),
            names=("velocities", "momentum flags", "learning rates"),
            same_shape_as=0,
        )
        return updates, SutskeverTraceState(
            velocity,
            _tree.stack(flags, jnp.bool_),
            _tree.stack(jax.tree.map(jnp.real, last_lr), state.learning_rate.dtype),
            _tree.safe_increment(state.count),
        )

    return GradientTransformation(init_fn, update_fn)
