"""Counting XLA compilations: what "compiles nothing" tests listen to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import pytest


@contextlib.contextmanager
def counted() -> Iterator[list[float]]:
    """The durations of the backend compilations inside the block, as they happen."""
    if not hasattr(jax.monitoring, "unregister_event_duration_listener"):
        pytest.skip("this jax cannot unregister a monitoring listener")
    compiles: list[float] = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
