"""Parameter sweeps: the shifts, scales and angles a protocol evaluates, and their neighbours.

Builders (`line`, `diagonal`, `grid`, `random_offsets`) return numpy arrays [T, P] (int32
for integer steps, float32 otherwise); `shift_sweep` names the integer shift sweeps of the
protocols, `lattice_pairs` gives the sweep entries one (or d) steps apart along each axis.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.core import transforms
from models.layers.conv import check_choice, is_int

SWEEPS = ("diagonal", "horizontal", "vertical", "grid", "random")
LINE_AXES = ("x", "y", "scalar")


def lattice_pairs(lattice: tuple[int, ...] | None, d: int = 1) -> np.ndarray:
    """Pairs of sweep indices d steps apart along each axis of the sweep's lattice.

    Args:
      lattice: (T,) for an ordered 1-D sweep (diagonal, line, rescale, rotate), (R, C) for a
        row-major grid, None for a sweep without neighbours (random draws).
      d: steps, >= 1.

    Returns:
      int32 [E, 2] pairs (a, b), a before b: (k, k + d) for a 1-D sweep; for a grid the
      horizontal pairs ((r, c), (r, c + d)) then the vertical ones ((r, c), (r + d, c)), as flat
      row-major indices; [0, 2] for None or when no axis has more than d entries.
    """
    if lattice is None:
        return np.zeros((0, 2), np.int32)
    index = np.arange(int(np.prod(lattice)), dtype=np.int32).reshape(lattice)
    out = []
    for axis in reversed(range(index.ndim)):  # columns (horizontal pairs) first
        n = index.shape[axis]
        if n > d:
            a = np.take(index, np.arange(n - d), axis=axis).ravel()
            b = np.take(index, np.arange(d, n), axis=axis).ravel()
            out.append(np.stack([a, b], axis=1))
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0, 2), np.int32)


def _inclusive_range(start, stop, step) -> np.ndarray:
    """start, start + step, ..., up to and including stop (int32 or float32)."""
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        transforms.check_number(name, value)
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    if not stop >= start:
        raise ValueError(f"stop must be >= start, got start={start!r}, stop={stop!r}")
    if all(is_int(v) for v in (start, stop, step)):
        return np.arange(start, stop + 1, step, dtype=np.int32)
    # The tolerance keeps stop when (stop - start) / step is an integer up to rounding.
    count = math.floor((stop - start) / step + 1e-6) + 1
    return (start + step * np.arange(count)).astype(np.float32)


def line(start: float, stop: float, step: float, axis: str = "x") -> np.ndarray:
    """A 1-D sweep start, start + step, ..., stop (inclusive).

    Args:
      start, stop, step: numbers, step > 0, stop >= start (pixels for shifts; scale factor or
        degrees for axis='scalar').
      axis: one of LINE_AXES. 'x': (0, k) pairs; 'y': (k, 0) pairs; 'scalar': one value per row.

    Returns:
      [T, 2] for 'x'/'y', [T, 1] for 'scalar'; int32 if start, stop, step are all ints,
      float32 otherwise.
    """
    check_choice("axis", axis, LINE_AXES)
    values = _inclusive_range(start, stop, step)
    if axis == "scalar":
        return values[:, None]
    sweep = np.zeros((values.size, 2), values.dtype)
    sweep[:, 0 if axis == "y" else 1] = values
    return sweep


def diagonal(start: float, stop: float, step: float) -> np.ndarray:
    """Diagonal sweep of (k, k) pairs, k = start, start + step, ..., stop (inclusive).

    Returns:
      [T, 2], int32 if start, stop, step are all ints, float32 otherwise.
    """
    values = _inclusive_range(start, stop, step)
    return np.stack([values, values], axis=1)


def grid(start: float, stop: float, step: float) -> np.ndarray:
    """2-D grid of (dy, dx), each in start, start + step, ..., stop (inclusive), row-major
    (dy varies slowest).

    Returns:
      [T * T, 2], int32 if start, stop, step are all ints, float32 otherwise.
    """
    values = _inclusive_range(start, stop, step)
    dy, dx = np.meshgrid(values, values, indexing="ij")
    return np.stack([dy.ravel(), dx.ravel()], axis=1)


def random_offsets(seed: int, num: int, low, high) -> np.ndarray:
    """``num`` integer (dy, dx) pairs drawn uniformly from [low, high] (inclusive), seeded.

    Args:
      seed: non-negative int for ``np.random.default_rng``.
      num: number of pairs, > 0.
      low, high: ints, or (y, x) pairs of ints for per-axis bounds, high >= low.

    Returns:
      int32 [num, 2].
    """
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not is_int(num) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    bounds = {}
    for name, value in (("low", low), ("high", high)):
        array = np.asarray(value)
        if array.shape not in ((), (2,)) or not all(is_int(v) for v in array.ravel().tolist()):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        bounds[name] = np.broadcast_to(array, (2,))
    if np.any(bounds["high"] < bounds["low"]):
        raise ValueError(f"high must be >= low, got low={low!r}, high={high!r}")
    rng = np.random.default_rng(seed)
    return rng.integers(bounds["low"], bounds["high"], size=(num, 2), endpoint=True).astype(
        np.int32
    )


def shift_sweep(
    sweep: str, min_shift: int, max_shift: int, num_random: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str, tuple[int, ...] | None]:
    """Integer shifts (dy, dx) in [min_shift, max_shift] along a sweep shape.

    Returns:
      shifts int [T, 2], x [T] (plot axis), its label, and the lattice (`lattice_pairs`).
    """
    if max_shift < min_shift:
        raise ValueError(f"max_shift={max_shift} must be >= min_shift={min_shift}.")
    if max_shift == min_shift and sweep != "random":
        raise ValueError(
            f"max_shift={max_shift} equals min_shift: a sweep needs at least two shifts."
        )
    if sweep == "diagonal":
        p = diagonal(min_shift, max_shift, 1)
        return p, p[:, 1].astype(np.float32), "shift (dy = dx, px)", (len(p),)
    if sweep in ("horizontal", "vertical"):
        p = line(min_shift, max_shift, 1, axis="x" if sweep == "horizontal" else "y")
        col = 1 if sweep == "horizontal" else 0
        return p, p[:, col].astype(np.float32), f"shift ({'dx' if col else 'dy'}, px)", (len(p),)
    if sweep == "grid":
        p = grid(min_shift, max_shift, 1)
        n = max_shift - min_shift + 1
        return p, np.arange(len(p), dtype=np.float32), "grid index (row-major dy, dx)", (n, n)
    p = random_offsets(seed, num_random, min_shift, max_shift)
    return p, np.arange(len(p), dtype=np.float32), "random draw", None


def zero_index(shifts: np.ndarray) -> int:
    """Index of the shift closest to (0, 0)."""
    return int(np.argmin(np.abs(np.asarray(shifts, np.float32)).sum(axis=1)))
