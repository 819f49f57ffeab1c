"""Input validation that runs before anything is traced.

Every check names the parameter and its valid range. Values that are JAX tracers (a module built
inside a user's own jit) cannot be inspected and are let through: validation is the job of the
Python layer, which always sees concrete numbers.
"""

from __future__ import annotations

import numpy as np
import jax


def _concrete(value):
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=np.float64)


def check_range(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                allow_inf=False):
    """Raise ValueError unless every element of `value` lies in the stated interval."""
    v = _concrete(value)
    if v is None:
        return
    if not allow_inf and not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {_show(v[~np.isfinite(v)])}")
    bad = np.isnan(v)
    if low is not None:
        bad |= (v <= low) if low_open else (v < low)
    if high is not None:
        bad |= (v >= high) if high_open else (v > high)
    if np.any(bad):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {lo}{lo_s}, {hi_s}{hi}, got {_show(v[bad])}")


def check_positive(name: str, value):
    check_range(name, value, low=0.0, low_open=True, high=np.inf)


def check_nonnegative(name: str, value):
    check_range(name, value, low=0.0, high=np.inf)


def check_count(name: str, value, low: int):
    """Raise ValueError unless `value` is a Python or numpy integer (not a bool) >= low."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def _show(v: np.ndarray) -> str:
    flat = np.ravel(v)
    if flat.size == 1:
        return f"{flat[0]:g}"
    head = ", ".join(f"{x:g}" for x in flat[:4])
    return f"[{head}{', ...' if flat.size > 4 else ''}]"
