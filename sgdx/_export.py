"""sgdx's state types, registered for ``jax.export`` serialization: an exported step's
inputs and outputs hold them, and a serialized step deserializes where sgdx is imported."""

from __future__ import annotations

from jax import export

from sgdx._base import EmptyState
from sgdx._groups import ParamGroupsState
from sgdx._inject import InjectHyperparamsState
from sgdx._momentum import SutskeverTraceState, TraceState
from sgdx._plateau import ReduceLROnPlateauState
from sgdx._rounding import StochasticRoundingState
from sgdx._sgd_state import SGDState
from sgdx._skip_nonfinite import SkipNonFiniteState
from sgdx._transforms import ScaleByLearningRateState

for _state in (
    EmptyState,
    InjectHyperparamsState,
    ParamGroupsState,
    ReduceLROnPlateauState,
    SGDState,
    ScaleByLearningRateState,
    SkipNonFiniteState,
    StochasticRoundingState,
    SutskeverTraceState,
    TraceState,
):
    export.register_namedtuple_serialization(_state, serialized_name=f"sgdx.{_state.__name__}")
