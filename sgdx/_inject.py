"""Hyperparameters held in the optimizer state: changeable between steps without retracing."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from sgdx import _hyperparams, _step, _tree
from sgdx._base import GradientTransformation, OptState, Params, Updates


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`."""

    count: jax.Array  # type: ignore[assignment]  # optax's name, shadowing tuple.count
    """Updates applied so far (int32, saturating); the schedules' argument."""
    hyperparams: dict[str, jax.Array]
    """The numeric hyperparameters as scalars; a scheduled one holds its latest value."""
    inner_state: OptState
    """The state of the wrapped transform."""


def _is_numeric(name: str, value: Any) -> bool:
    if isinstance(value, bool | str | np.dtype | type) or value is None:
        return False
    if name in _STRUCTURAL:
        return False
    if name in _SWITCHES and _hyperparams.is_off(value):
        return False  # momentum or weight decay off by construction: no buffer, no params
    return _hyperparams.is_number(value)


# Numbers that shape the computation rather than scale it: never held as floats.
_STRUCTURAL = ("seed",)

# Arguments that switch a part of sgd off when given as None or a Python 0.
_SWITCHES = ("momentum", "weight_decay")


def inject_hyperparams(
    factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: DTypeLike | None = None,
) -> Callable[..., GradientTransformation]:
    """Wraps a transform factory so that its numeric hyperparameters live in the state.

    ``inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9)`` is ``sgdx.sgd(0.1, momentum=0.9)``
    with ``learning_rate``, ``momentum``, ``dampening`` and ``weight_decay`` held as scalars
    in :class:`InjectHyperparamsState` ``.hyperparams``: the functional
    ``optimizer.param_groups[0]["lr"] = x``. Change them between steps with
    :func:`set_hyperparams` (no recompilation: the state keeps its structure and dtypes),
    read them with :func:`get_hyperparams`. The state holds the values the *next* update
    uses, as torch's ``param_groups`` do between steps: a hyperparameter given as a
    schedule ``count -> value`` is evaluated at ``init`` (count 0) and after every update
    (at the new count), as torch's scheduler writes ``group["lr"]`` after each
    ``optimizer.step()``; a value set in between is used by the next update and then
    replaced by the schedule's next value (torch's chainable schedulers, such as
    ``StepLR``, would instead go on from the value set). ``optax.inject_hyperparams``
    stores the value of the update just taken instead. Boolean and string arguments (``nesterov``,
    ``maximize``, ``convention``) and ``seed`` stay fixed at construction.

    Every numeric hyperparameter may be a schedule (``momentum=sgdx.schedules.
    one_cycle_momentum(...)``). ``momentum`` and ``weight_decay`` given as ``None`` or a
    Python ``0`` stay off and fixed, as in :func:`sgdx.sgd`: no buffer, no ``params``
    needed, not in ``hyperparams``. Given any other value they are injected, always in the
    computation (the value may become non-zero later), so the buffer exists and ``update``
    needs ``params``.
    Hyperparameters are stored in ``hyperparam_dtype``, by default JAX's default float dtype
    (float64 when x64 is on), and cast to each parameter's dtype when used, as torch casts
    its Python floats.

    Args:
      factory: a function returning a :class:`~sgdx.GradientTransformation`, such as
        :func:`sgdx.sgd`.
      static_args: names of ``factory``'s arguments that stay fixed at construction, as in
        ``optax.inject_hyperparams``: a number among them is not held in the state, and a
        callable among them is passed to ``factory`` as it is instead of being evaluated as a
        schedule.
      hyperparam_dtype: the floating dtype of the held hyperparameters (e.g. ``jnp.float32``
        to keep them float32 with x64 on); ``None``: JAX's default float dtype.

    Returns:
      A factory with the same arguments, whose transform has an
      :class:`InjectHyperparamsState`.

    Raises:
      ValueError: ``static_args`` naming an argument ``factory`` does not have.
      TypeError: a ``hyperparam_dtype`` that is not a floating dtype; arguments that do not
        fit ``factory``'s signature (said with ``factory``'s name, and for torch's ``lr``,
        that sgdx calls it ``learning_rate``).

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.inject_hyperparams(sgdx.sgd)(0.5, momentum=0.5)
      >>> params = jnp.zeros(1)
      >>> state = sgdx.set_hyperparams(tx.init(params), learning_rate=0.25)
      >>> updates, state = tx.update(jnp.ones(1), state, params)
      >>> print(updates, float(sgdx.get_hyperparams(state)["learning_rate"]))
      [-0.25] 0.25
    """
    signature = inspect.signature(factory)
    factory_name = getattr(factory, "__name__", repr(factory))
    static_names = {static_args} if isinstance(static_args, str) else set(static_args)
    if not static_names <= set(signature.parameters):
        raise ValueError(
            f"inject_hyperparams: static_args {sorted(static_names)} must name arguments of "
            f"{factory_name}, which takes {list(signature.parameters)}."
        )
    kind = None if hyperparam_dtype is None else _tree.as_dtype(hyperparam_dtype)
    if hyperparam_dtype is not None and (kind is None or not jnp.issubdtype(kind, jnp.floating)):
        raise TypeError(
            f"inject_hyperparams: hyperparam_dtype must be a real floating dtype (e.g. "
            f"jnp.float32), got {hyperparam_dtype!r}."
        )

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            hint = ""
            if "lr" in kwargs and "lr" not in signature.parameters:
                hint = " torch's lr is called learning_rate here: pass learning_rate=..."
            raise TypeError(f"inject_hyperparams({factory_name}): {error}.{hint}") from None
        bound.apply_defaults()
        return bound

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        dtype = np.dtype(hyperparam_dtype or _hyperparams.default_float())

        def evaluate(count: jax.Array, hyperparams: dict[str, jax.Array]) -> dict[str, jax.Array]:
            values = dict(hyperparams)
            for name, schedule in schedules.items():
                value = _hyperparams.scheduled(schedule, count, name)
                values[name] = value.astype(dtype)
            return values

        arguments = bind(args, kwargs).arguments
        dynamic = {k: v for k, v in arguments.items() if k not in static_names}
        schedules = {k: v for k, v in dynamic.items() if callable(v)}
        numeric = {k: v for k, v in dynamic.items() if _is_numeric(k, v)}
        static = {k: v for k, v in arguments.items() if k not in schedules | numeric}
        first = evaluate(jnp.zeros((), jnp.int32), {}) if schedules else {}
        factory(**static, **numeric, **first)  # construction-time validation, torch's messages

        def build(hyperparams: Mapping[str, jax.Array]) -> GradientTransformation:
            return factory(**static, **hyperparams)

        def init_fn(params: Params) -> InjectHyperparamsState:
            count = jnp.zeros((), jnp.int32)
            hyperparams = evaluate(count, {k: jnp.asarray(v, dtype) for k, v in numeric.items()})
            return InjectHyperparamsState(count, hyperparams, build(hyperparams).init(params))

        def update_fn(
            updates: Updates,
            state: InjectHyperparamsState,
            params: Params | None = None,
            **extra_args: Any,
        ) -> tuple[Updates, InjectHyperparamsState]:
            _tree.check_state(state, InjectHyperparamsState, "inject_hyperparams")
            updates, inner = build(state.hyperparams).update(
                updates, state.inner_state, params, **extra_args
            )
            return updates, advanced(state, inner)

        def advanced(state: InjectHyperparamsState, inner: OptState) -> InjectHyperparamsState:
            count = _tree.safe_increment(state.count)
            # as torch's scheduler.step() after optimizer.step(): the next update's values
            return InjectHyperparamsState(count, evaluate(count, state.hyperparams), inner)

        def step_fn(
            params: Params, grads: Updates, state: InjectHyperparamsState
        ) -> tuple[Params, InjectHyperparamsState]:
            _tree.check_state(state, InjectHyperparamsState, "inject_hyperparams")
            inner_tx = build(state.hyperparams)
            params, inner = _step.run(inner_tx, params, grads, state.inner_state)
            return params, advanced(state, inner)

        return _step.with_step(init_fn, update_fn, step_fn)

    return wrapped
