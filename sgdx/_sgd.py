"""`sgd`: torch.optim.SGD as a chain of sgdx primitives."""

from __future__ import annotations

from typing import Any, Literal

from jax.typing import ArrayLike, DTypeLike

from sgdx import _hyperparams, _kernel_sgd, _rounding, _sgd_state, _step, _transforms, _tree
from sgdx._base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
)
from sgdx._kernel import native_status
from sgdx._momentum import sutskever_trace, trace

Convention = Literal["pytorch", "sutskever"]
_CONVENTIONS = ("pytorch", "sutskever")


def _checked(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` whose ``update`` and step, given the parameters, first check that each gradient
    has its parameter's dtype."""

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        if params is not None:
            _tree.check_gradient_dtypes(updates, params, "sgd")
        return tx.update(updates, state, params, **extra_args)

    def step_fn(params: Params, grads: Updates, state: OptState) -> tuple[Params, OptState]:
        _tree.check_gradient_dtypes(grads, params, "sgd")
        return _step.run(tx, params, grads, state)

    if _step.step_of(tx) is None:
        return GradientTransformation(tx.init, update_fn)
    return _step.with_step(tx.init, update_fn, step_fn)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ArrayLike | None = None,
    dampening: ArrayLike = 0.0,
    weight_decay: ArrayLike | None = None,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    convention: Convention = "pytorch",
    decoupled_weight_decay: bool = False,
    momentum_correction: bool = False,
    accumulator_dtype: DTypeLike | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    fused: bool | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent exactly as ``torch.optim.SGD`` computes it.

    For each parameter :math:`p` with a gradient :math:`g`, in this order:

    .. math::

      g &\leftarrow -g \quad \text{if maximize} \\
      g &\leftarrow g + \lambda p \\
      b &\leftarrow \begin{cases} g & \text{first update of } p \\
                                  \mu b + (1 - \tau) g & \text{afterwards} \end{cases} \\
      g &\leftarrow \begin{cases} g + \mu b & \text{nesterov} \\ b & \text{otherwise} \end{cases}\\
      p &\leftarrow p - \eta_t g

    where momentum (the buffer :math:`b`) is skipped when :math:`\mu = 0` and weight decay
    when :math:`\lambda = 0`. With ``convention="sutskever"`` the last three lines become
    Sutskever's velocity :math:`v \leftarrow \mu v - \eta_t (1-\tau) g` (:math:`-\eta_t g`
    on the first update) and :math:`p \leftarrow p + v` (nesterov:
    :math:`p \leftarrow p + \mu v - \eta_t g`); see :func:`sutskever_trace`. With
    ``decoupled_weight_decay`` the second line is dropped and :math:`p \leftarrow p - \eta_t
    \lambda p` is applied beside the step instead (Keras's ``weight_decay``; see
    :func:`add_decoupled_weight_decay`).

    A ``None`` gradient leaf skips its parameter for the step (parameter and buffer
    unchanged). Structure is decided at construction: momentum or weight decay given as
    ``None`` (the default, optax's spelling) or a Python ``0`` (torch's) is off, so there is
    no buffer and ``update`` needs no ``params``, as in torch; a value given as an array is
    always traced, so it can be changed or differentiated without rebuilding, and ``0``
    still behaves as torch's ``0``.

    The state is an :class:`~sgdx.SGDState`: the momentum state
    (:class:`~sgdx.TraceState`, or :class:`~sgdx.SutskeverTraceState` for
    ``convention="sutskever"``), the learning rate's (a count for a schedule), the decoupled
    decay's and the rounding key, each ``None`` where the options leave it out. Read the
    buffers by parameter name with :func:`sgdx.momentum_buffers`.

    Args:
      learning_rate: :math:`\eta \ge 0`: a float, a scalar array, or a schedule
        ``count -> lr`` where ``count`` is the number of updates already applied.
      momentum: :math:`\mu \ge 0`; ``None`` or ``0``: no momentum.
      dampening: :math:`\tau`, applied from a parameter's second update on.
      weight_decay: :math:`\lambda \ge 0`, coupled L2 (added to the gradient); ``None``
        or ``0``: no weight decay.
      nesterov: Nesterov momentum; needs :math:`\mu > 0` and :math:`\tau = 0`.
      maximize: ascend instead of descend.
      convention: ``"pytorch"`` (the learning rate scales the step) or ``"sutskever"`` (the
        learning rate scales each gradient as it enters the velocity).
      decoupled_weight_decay: decay the parameters directly, :math:`p \leftarrow p -
        \eta_t \lambda p`, outside momentum (Keras, SGDW), instead of torch's coupled L2.
      momentum_correction: with ``convention="sutskever"``, rescale the velocity by
        :math:`\eta_t / \eta_{t-1}` when the learning rate changes, which reproduces
        PyTorch's trajectory under any schedule.
      accumulator_dtype: dtype of the momentum buffers (e.g. ``jnp.float32`` for
        bfloat16 parameters); ``None`` keeps each parameter's dtype.
      stochastic_rounding: round each bfloat16 / float16 parameter's new value
        :math:`p - \eta_t g`, computed in float32, up or down at random so that it is
        right on average, instead of to nearest (see :func:`sgdx.stochastic_rounding`):
        low-precision training without float32 master weights, where round to nearest
        would drop every step below half a unit in the last place. With float32 master
        weights (float32 parameters cast down for the forward pass) it is not needed.
        Float32 and wider parameters are unaffected.
      seed: the seed of the rounding noise (``stochastic_rounding`` only).
      fused: torch's ``fused``. ``None`` (the default): where the native CPU kernel can
        run (PyTorch convention, momentum on, float32 or float64 leaves of one dtype, on
        CPU devices: on each device's shards), :func:`sgdx.step` takes one in-place pass of
        it over parameters and buffers, also through sgdx's wrappers; elsewhere the
        pure-JAX path runs (the same numbers; one warning if the kernel is missing, or if a
        wrapper that is not sgdx's hides the step). ``True``: raise instead of running
        without the kernel in :func:`sgdx.step`. ``False``: always the pure-JAX path.
        ``update`` is always pure JAX, which XLA fuses best where the updates are wanted.

    Returns:
      A :class:`~sgdx.GradientTransformation`; its ``update`` needs ``params`` when weight
      decay is on.

    Raises:
      TypeError: for a hyperparameter that is not a real number (a bool in a numeric
        position: the positional order is torch's, pass ``nesterov=True`` by keyword), or a
        flag that is not a bool.
      RuntimeError: ``fused=True`` where the native kernel is not available (its reason).
      ValueError: with torch's messages, ``Invalid learning rate: {lr}``, ``Invalid momentum
        value: {momentum}``, ``Invalid weight_decay value: {weight_decay}``, ``Nesterov
        momentum requires a momentum and zero dampening``; and for an unknown
        ``convention``, a non-scalar learning rate, or ``momentum_correction`` without
        ``convention="sutskever"``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = sgdx.sgd(0.25, momentum=0.5, nesterov=True)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)  # [2, -4]
      >>> updates, state = tx.update(grads, state, params)  # -0.25 * (g + 0.5 * g)
      >>> params = sgdx.apply_updates(params, updates)
      >>> print(params["w"])
      [ 0.25 -0.5 ]
    """
    if convention not in _CONVENTIONS:
        raise ValueError(
            f"Unknown convention {convention!r}: expected one of {_CONVENTIONS}. 'pytorch' "
            "is torch.optim.SGD's p -= lr * buf; 'sutskever' is Keras's v = m*v - lr*g; p += v."
        )
    _hyperparams.check_learning_rate(learning_rate)
    _hyperparams.check_switch(momentum, "momentum")
    _hyperparams.check_hyperparameter(dampening, "dampening")
    _hyperparams.check_switch(weight_decay, "weight_decay")
    for flag, name in (
        (nesterov, "nesterov"),
        (maximize, "maximize"),
        (decoupled_weight_decay, "decoupled_weight_decay"),
        (momentum_correction, "momentum_correction"),
        (stochastic_rounding, "stochastic_rounding"),
    ):
        _hyperparams.check_flag(flag, name)
    if fused is not None:
        _hyperparams.check_flag(fused, "fused")
    _tree.check_accumulator_dtype(accumulator_dtype, "sgd")
    momentum_on = momentum is not None and not _hyperparams.is_off(momentum)
    mu: ArrayLike = 0.0 if momentum is None else momentum
    if nesterov:
        mu_value = _hyperparams.concrete(mu)
        tau = _hyperparams.concrete(dampening)
        if (mu_value is not None and mu_value <= 0) or (tau is not None and tau != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    if momentum_correction and convention != "sutskever":
        raise ValueError(
            "momentum_correction applies to convention='sutskever' only: PyTorch's buffer "
            "holds no learning rate, so its trajectory needs no correction."
        )

    decay = 0.0 if weight_decay is None else weight_decay
    links: dict[str, GradientTransformation | None] = dict.fromkeys(
        ("maximize", "weight_decay", *_sgd_state.SGDState._fields)
    )
    if maximize:
        links["maximize"] = _transforms.maximize()
    if decoupled_weight_decay:
        links["decoupled_weight_decay"] = _transforms.add_decoupled_weight_decay(
            decay, learning_rate
        )
    else:
        links["weight_decay"] = _transforms.add_decayed_weights(decay)
    if momentum_on and convention == "sutskever":
        links["momentum"] = sutskever_trace(
            learning_rate,
            mu,
            dampening=dampening,
            nesterov=nesterov,
            momentum_correction=momentum_correction,
            accumulator_dtype=accumulator_dtype,
        )
    else:
        links["learning_rate"] = _transforms.scale_by_learning_rate(learning_rate)
    if momentum_on and convention == "pytorch":
        links["momentum"] = trace(
            mu, dampening=dampening, nesterov=nesterov, accumulator_dtype=accumulator_dtype
        )
    rounding = _rounding.stochastic_rounding(seed)  # validates the seed either way
    if stochastic_rounding:
        links["stochastic_rounding"] = rounding
    reference = _sgd_state.chain(**links)
    kernel_fits = (
        convention == "pytorch"
        and momentum_on
        and not decoupled_weight_decay
        and accumulator_dtype is None
        and not stochastic_rounding
    )
    if fused is True:
        if not kernel_fits:
            raise ValueError(
                "fused=True needs what the native kernel computes: convention='pytorch', "
                "momentum on, no decoupled_weight_decay, accumulator_dtype or "
                "stochastic_rounding; use fused=None (the default) to take it where it fits."
            )
        status = native_status()
        if not status.available:
            raise RuntimeError(
                f"fused=True, but the native kernel is not available: {status.reason}"
            )
    if fused is False or not kernel_fits:
        return _checked(reference)
    return _checked(
        _kernel_sgd.with_kernel(
            reference,
            learning_rate,
            {"momentum": mu, "dampening": dampening, "weight_decay": decay},
            nesterov=nesterov,
            maximize=maximize,
            required=fused is True,
        )
    )
