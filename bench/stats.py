"""Percentiles and the few summaries the report needs."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values_ns: list[int]) -> dict:
    """p50/p99/max in milliseconds of nanosecond samples."""
    ms = [v / 1e6 for v in values_ns]
    return {
        "n": len(ms),
        "p50": _round(percentile(ms, 50)),
        "p99": _round(percentile(ms, 99)),
        "max": _round(max(ms)) if ms else None,
    }


def added(app: dict, direct: dict) -> dict:
    """What the app adds: its percentile minus the same percentile of direct reads."""
    return {
        q: _round(app[q] - direct[q]) if app.get(q) is not None and direct.get(q) is not None else None
        for q in ("p50", "p99")
    }


def median(values: list[float]) -> float | None:
    return percentile(values, 50)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
