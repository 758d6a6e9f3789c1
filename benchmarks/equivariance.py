"""Per-layer feature equivariance of a model under a sweep of integer input shifts.

For each stage with cumulative stride s and each input shift d, the relative error
||Phi(T_d x) - T_{d/s} Phi(x)||^2 / ||Phi(x)||^2 (`metrics.feature_equivariance_error`) and a
PSNR in the StyleGAN3 EQ-T form (`metrics.psnr_from_mse`, with each stage's features scaled to
[-1, 1] by the largest |Phi(x)| of the batch), with the vacated border masked out for
non-circular shifts. One jitted call evaluates every shift of the sweep (`lax.map`): new
shifts of the same count never recompile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import metrics, transforms

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
      {stage: {"error": [S] mean relative error over images, "psnr": [S] dB}}.
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
    return {n: {k: np.asarray(v) for k, v in result[n].items()} for n in names}
