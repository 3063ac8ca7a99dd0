"""sgdx: PyTorch's SGD, exactly, as composable JAX gradient transformations."""

from sgdx import conventions
from sgdx._alias import sgd
from sgdx._base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    apply_updates,
    chain,
    identity,
)
from sgdx._momentum import SutskeverTraceState, TraceState, sutskever_trace, trace
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
    "ScalarOrSchedule",
    "ScaleByLearningRateState",
    "Schedule",
    "SutskeverTraceState",
    "TraceState",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "apply_updates",
    "chain",
    "conventions",
    "identity",
    "maximize",
    "scale_by_learning_rate",
    "sgd",
    "sutskever_trace",
    "trace",
]
