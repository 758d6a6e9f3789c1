"""Per-layer feature equivariance of a model under a sweep of integer input shifts.

For each stage with cumulative stride s and each input shift d that is a multiple of s on
both axes (the only shifts with a lattice counterpart: an ideal net scores 0 there), the
relative error
||Phi(T_d x) - T_{d/s} Phi(x)||^2 / ||Phi(x)||^2 (`metrics.feature_equivariance_error`) and a
PSNR in the StyleGAN3 EQ-T form (`metrics.psnr_from_mse`, with each stage's features scaled to
[-1, 1] by the largest |Phi(x)| of the batch), with the vacated border masked out for
non-circular shifts. Shifts that are not multiples of a stage's stride are reported as NaN
for that stage, and `matched_mean` averages the others. One jitted call evaluates every shift
of the sweep (`lax.map`): new shifts of the same count never recompile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.core import metrics, transforms

Array = jax.Array


def _shift_input(image: Array, shift: Array, circular: bool) -> Array:
    """One image [H, W, C] moved by integer shift [2]: wrap-around, or zero-filled."""
    if circular:
        return transforms.circular_shift(image, shift)
    return transforms.subpixel_shift(image, shift.astype(jnp.float32), method="bilinear")


def feature_equivariance(
    features_fn: Callable[[Any, Array], Mapping[str, Array]],
    variables: Any,
    images: np.ndarray,
    shifts: np.ndarray,
    strides: Mapping[str, int],
    circular: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Equivariance error and PSNR of every stage, for every shift.

    Args:
      features_fn: `features_fn(variables, images [N, H, W, C]) -> {stage: [N, h, w, c]}`.
      variables: model variables (a jit argument, not a constant).
      images: float32 [N, H, W, C] in [0, 1].
      shifts: int [S, 2] input shifts (dy, dx) in pixels.
      strides: stage -> cumulative stride s (the model's `feature_strides()`).
      circular: circular input shifts (exact for circular padding) or zero-filled ones.

    Returns:
      {stage: {"error": [S] mean relative error over images, "psnr": [S] dB}}, NaN at the
      shifts that are not a multiple of the stage's stride on both axes.
    """
    shifts = np.asarray(shifts)
    if shifts.ndim != 2 or shifts.shape[1] != 2 or not np.issubdtype(shifts.dtype, np.integer):
        raise ValueError(f"shifts must be integer [S, 2], got {shifts.dtype} {shifts.shape}.")
    names = sorted(strides)

    @jax.jit
    def run(variables, images, shifts):
        base = features_fn(variables, images)
        peak = {n: jnp.max(jnp.abs(base[n])) + 1e-12 for n in names}

        def one(shift):
            moved = jax.vmap(_shift_input, (0, None, None))(images, shift, circular)
            feats = features_fn(variables, moved)
            out = {}
            for n in names:
                ref, mask = metrics.shift_feature(base[n], shift, strides[n], circular)
                err = metrics.feature_equivariance_error(feats[n], ref, mask)
                mse = metrics.equivariance_mse(feats[n] / peak[n], ref / peak[n], mask)
                out[n] = {"error": jnp.mean(err), "psnr": metrics.psnr_from_mse(jnp.mean(mse))}
            return out

        return jax.lax.map(one, shifts)

    result = jax.device_get(run(variables, jnp.asarray(images), jnp.asarray(shifts, jnp.int32)))
    out = {}
    for n in names:
        matched = np.all(shifts % strides[n] == 0, axis=1)
        out[n] = {k: np.where(matched, np.asarray(v), np.nan) for k, v in result[n].items()}
    return out


def matched_mean(values: np.ndarray) -> float:
    """Mean over the shifts a stage is compared at (NaN entries skipped; NaN if none)."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")


def matched_shifts(strides: Mapping[str, int], max_shift: int) -> np.ndarray:
    """Diagonal shifts (k, k), k = 1..max(max_shift, largest stride), int [S, 2]: every stage
    has at least one shift that is a multiple of its stride."""
    top = max(max_shift, max(strides.values()))
    k = np.arange(1, top + 1)
    return np.stack([k, k], axis=1)
