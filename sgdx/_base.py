"""The gradient-transformation protocol, `chain`, `identity` and `apply_updates`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sgdx import _step, _tree

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = Any

Schedule = Callable[[jax.Array], ArrayLike]
"""A learning-rate schedule: ``count -> lr``, ``count`` = updates already applied."""

ScalarOrSchedule = ArrayLike | Schedule
"""A learning rate: a number, a scalar array (traced) or a :data:`Schedule`."""


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


_DOC = """A pure gradient transformation: a pair of ``init`` and ``update`` functions.

    ``init(params) -> state`` builds the whole state, every leaf with its final shape and
    dtype. ``update(updates, state, params=None, **extra_args) -> (updates, new_state)``
    maps incoming updates (gradients, at the start of a chain) to outgoing updates, the
    *deltas* that :func:`apply_updates` adds to the parameters. ``None`` leaves in
    ``updates`` mark parameters without a gradient in this step; they pass through.
    Keyword ``extra_args`` (a metric for :func:`reduce_lr_on_plateau`, ...) reach every
    transform that takes them.

    When optax is installed this class is a subclass of
    ``optax.GradientTransformationExtraArgs`` (optax is then imported with sgdx), so optax's
    combinators (``optax.chain``, ``MultiSteps``, ``inject_hyperparams``, ...) treat sgdx
    transforms as their own, extra arguments included; without optax it is a plain
    ``NamedTuple`` with the same two fields. Either way optax transforms go inside
    :func:`sgdx.chain` too.
    """


try:  # optax is optional: with it, its combinators must recognise sgdx transforms
    from optax import GradientTransformationExtraArgs as _OptaxExtraArgs
except ImportError:  # pragma: no cover - the library's own tests run both ways
    _OptaxExtraArgs = None

if TYPE_CHECKING or _OptaxExtraArgs is None:

    class GradientTransformation(NamedTuple):
        init: TransformInitFn
        update: TransformUpdateFn

    _ACCEPTS_EXTRA_ARGS: tuple[type, ...] = (GradientTransformation,)
else:

    class GradientTransformation(_OptaxExtraArgs):
        __slots__ = ()

    _ACCEPTS_EXTRA_ARGS = (_OptaxExtraArgs,)
GradientTransformation.__doc__ = _DOC


def accepts_extra_args(transform: Any) -> bool:
    """Whether ``transform.update`` takes keyword extra arguments (as ``optax.chain`` decides:
    an sgdx transform or an ``optax.GradientTransformationExtraArgs`` does)."""
    return isinstance(transform, _ACCEPTS_EXTRA_ARGS)


class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


def identity() -> GradientTransformation:
    """Passes updates through unchanged: :math:`u \\leftarrow g`.

    Returns:
      A :class:`GradientTransformation` with an :class:`EmptyState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.identity()
      >>> updates, _ = tx.update(jnp.array([1.0, 2.0]), tx.init(None))
      >>> print(updates)
      [1. 2.]
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, EmptyState]:
        del params, extra_args
        return updates, state

    return GradientTransformation(init_fn, update_fn)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Applies transforms one after the other; the state is the tuple of their states.

    ``update`` feeds each transform the previous one's output updates, and the same
    ``params``. Keyword ``extra_args`` go to the transforms that take them (sgdx's and
    ``optax.GradientTransformationExtraArgs``), not to plain optax transforms, as under
    ``optax.chain``.

    Args:
      *transforms: the transforms to apply, first to last.

    Returns:
      A :class:`GradientTransformation` whose state is a tuple with one entry per transform.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.chain(sgdx.add_decayed_weights(0.5), sgdx.scale_by_learning_rate(0.1))
      >>> params = jnp.array([2.0])
      >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
      >>> print(updates)  # -0.1 * (1 + 0.5 * 2)
      [-0.2]
    """

    def init_fn(params: Params) -> tuple[OptState, ...]:
        return tuple(t.init(params) for t in transforms)

    def check(state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != len(transforms):
            got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"chain: expected a state tuple of {len(transforms)} entries (one per "
                f"transform), got {got}. {_tree.made_by(state)}Build it with the same "
                "transform's init."
            )

    def through(
        links: tuple[GradientTransformation, ...],
        updates: Updates,
        state: tuple[OptState, ...],
        params: Params | None,
        extra_args: dict[str, Any],
    ) -> tuple[Updates, tuple[OptState, ...]]:
        new_states = []
        for transform, inner in zip(links, state, strict=True):
            extra = extra_args if accepts_extra_args(transform) else {}
            updates, inner = transform.update(updates, inner, params, **extra)
            new_states.append(inner)
        return updates, tuple(new_states)

    def update_fn(
        updates: Updates,
        state: tuple[OptState, ...],
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, tuple[OptState, ...]]:
        check(state)
        return through(transforms, updates, state, params, extra_args)

    if not transforms or _step.step_of(transforms[-1]) is None:
        return GradientTransformation(init_fn, update_fn)

    def step_fn(
        params: Params, grads: Updates, state: tuple[OptState, ...]
    ) -> tuple[Params, tuple[OptState, ...]]:
        """The transforms before the last one, then the last one's step."""
        check(state)
        updates, new_first = through(transforms[:-1], grads, state[:-1], params, {})
        params, new_last = _step.run(transforms[-1], params, updates, state[-1])
        return params, (*new_first, new_last)

    return _step.with_step(init_fn, update_fn, step_fn)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Adds updates to parameters, keeping each parameter's dtype: :math:`p \\leftarrow p + u`.

    A ``None`` update leaves its parameter unchanged. An update of another dtype is cast to
    the parameter's dtype before the addition, and under explicit sharding an update laid
    out differently (a ZeRO-1 sharded one) is resharded like its parameter, so parameters
    keep their dtype and sharding.

    Args:
      params: the parameters.
      updates: deltas with the structure of ``params`` (``None`` allowed at leaves).

    Returns:
      The updated parameters, each leaf with its original dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> p = sgdx.apply_updates(jnp.ones(2, jnp.bfloat16), jnp.array([0.5, 1.0]))
      >>> print(p, p.dtype)
      [1.5 2] bfloat16
    """

    if params is None:  # no parameters (optax's empty tree), nothing to update
        return None

    def add(u: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        p = jnp.asarray(p)
        return u, p + _tree.match_sharding(u.astype(p.dtype), p)

    _, new_params = _tree.map_updates(add, updates, params, names=("parameters",), same_shape_as=0)
    return new_params
