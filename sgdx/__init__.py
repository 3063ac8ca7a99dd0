"""sgdx: PyTorch's SGD, exactly, as composable JAX gradient transformations."""

from sgdx import (
    _export,  # noqa: F401  (registers the state types for jax.export)
    conventions,
    schedules,
    sharding,
)
from sgdx._base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    apply_updates,
    chain,
    identity,
)
from sgdx._groups import (
    ParamGroupsState,
    add_param_groups,
    get_hyperparams,
    param_groups,
    set_hyperparams,
)
from sgdx._inject import InjectHyperparamsState, inject_hyperparams
from sgdx._kernel import NativeStatus, native_status
from sgdx._momentum import SutskeverTraceState, TraceState, sutskever_trace, trace
from sgdx._plateau import ReduceLROnPlateau, ReduceLROnPlateauState, reduce_lr_on_plateau
from sgdx._rounding import (
    StochasticRoundingState,
    round_stochastically,
    stochastic_rounding,
)
from sgdx._sgd import sgd
from sgdx._sgd_state import SGDState, momentum_buffers
from sgdx._skip_nonfinite import SkipNonFiniteState, skip_nonfinite
from sgdx._step import step
from sgdx._transforms import (
    ScaleByLearningRateState,
    add_decayed_weights,
    add_decoupled_weight_decay,
    maximize,
    scale_by_learning_rate,
)

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "NativeStatus",
    "ParamGroupsState",
    "ReduceLROnPlateau",
    "ReduceLROnPlateauState",
    "SGDState",
    "ScalarOrSchedule",
    "ScaleByLearningRateState",
    "Schedule",
    "SkipNonFiniteState",
    "StochasticRoundingState",
    "SutskeverTraceState",
    "TraceState",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "add_param_groups",
    "apply_updates",
    "chain",
    "conventions",
    "get_hyperparams",
    "identity",
    "inject_hyperparams",
    "maximize",
    "momentum_buffers",
    "native_status",
    "param_groups",
    "reduce_lr_on_plateau",
    "round_stochastically",
    "scale_by_learning_rate",
    "schedules",
    "set_hyperparams",
    "sgd",
    "sharding",
    "skip_nonfinite",
    "step",
    "stochastic_rounding",
    "sutskever_trace",
    "trace",
]
