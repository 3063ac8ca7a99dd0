"""Warnings attributed to the caller's line, not to sgdx's (or JAX's) internals."""

from __future__ import annotations

import sys
import warnings

# Frames of these packages are skipped: a warning raised while JAX traces a user's
# function names the user's line inside it.
_INTERNAL = ("sgdx", "jax", "jaxlib", "optax", "flax", "equinox")


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` at the first frame outside :data:`_INTERNAL`."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INTERNAL:
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level + 1)
