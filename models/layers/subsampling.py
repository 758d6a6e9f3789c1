"""The subsampling switch: one strided layer computed four ways, plus padding modes.

Every strided layer (conv, max pool) of a net is written once; a `Subsampler` decides how
its stride is realised (the variants are defined in README.md, "Definitions"):

- ``'subsample'``: the plain layer, stride s (keep every s-th sample).
- ``'blur'``: the layer at stride 1, then `blur_pool` (Zhang's BlurPool: binomial filter of
  size 1..7, depthwise, stride s; reflect padding, or circular in circular padding mode).
  Placement as Zhang: MaxPool(s) -> MaxPool(1) + BlurPool; Conv(s) + ReLU -> Conv(1) + ReLU +
  BlurPool (call `downsample` after the activation); AvgPool(s) -> BlurPool alone (a model does
  that replacement itself: skip the avg pool and call `blur_pool`).
- ``'aps'``: the layer at stride 1, then adaptive polyphase sampling (`aps_downsample`: of the
  s*s polyphase components keep, per example, the one of largest l2 norm over pixels and
  channels; ties go to the lowest index a*s + b of component x[a::s, b::s]). Branches that are
  summed (ResNet main path and shortcut) must use one phase: compute it once with
  `Subsampler.phase` and pass it to every `downsample`. A map whose size is not a multiple of
  s is first padded at the high end (zeros, or wrap in circular mode).
- ``'full'``: no subsampling: the layer at stride 1, and every later layer dilated by the
  removed factor (a trous). `Subsampler.out_dilation` is the dilation for the later layers.
  Sampling a `full` map at the lattice ``[::D, ::D]`` (D its dilation) gives the `subsample`
  map of the same weights exactly, given the padding rules below.

Dilation bookkeeping: a model keeps one integer ``dilation`` (1 at the input). Every layer gets
it (`conv2d(..., dilation=d)`, `max_pool(..., dilation=d)`); a strided layer builds
``s = Subsampler(mode, factor, dilation=d, ...)``, runs at ``stride=s.op_stride``, applies
``s.downsample`` to its (activated) output, and hands ``d = s.out_dilation`` on. Non-full modes
need ``dilation == 1`` (full stages are the last ones; `stage_modes` builds such a plan).
A Subsampler with factor 1 is the identity switch (op_stride 1, dilation unchanged).

The layers themselves and their padding rules are in `models.layers.conv`.

Public API (all arrays NHWC float32 unless said):
    STRIDE_MODES, MAX_BLUR_SIZE (= 7)
    binomial_filter(size) -> [size, size]
    blur_pool(x, size, stride, padding='reflect') -> [N, ceil(H/s), ceil(W/s), C]
    polyphase_norms(x, stride) -> [N, s*s];  aps_phase(x, stride) -> int32 [N]
    select_phase(x, stride, phase [N]) -> [N, H/s, W/s, C];  aps_downsample(x, stride)
    stage_modes(stride_mode, full_stages, num_stages) -> tuple of modes, one per strided stage
    Subsampler(mode, factor, dilation=1, blur_size=4, padding_mode='zero')
        .op_stride, .out_dilation, .phase(x), .downsample(x, phase=None)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from models.layers.conv import PAD_FILLS, PADDING_MODES, check_choice, check_int, pad_spatial

STRIDE_MODES = ("subsample", "blur", "aps", "full")
MAX_BLUR_SIZE = 7


def binomial_filter(size: int) -> jax.Array:
    """Zhang's 2-D binomial blur filter [size, size], size 1..7, normalised to sum 1.

    Rows [1], [1,1], [1,2,1], [1,3,3,1], ...; the filter is the outer product of the row.
    """
    row = _binomial_row(size)
    return jnp.asarray(np.outer(row, row), jnp.float32)


def _binomial_row(size: int) -> np.ndarray:
    """Row [1, 3, 3, 1] / 8 style binomial weights of length size (1..7), summing to 1."""
    check_int("size", size, 1, MAX_BLUR_SIZE)
    row = np.array([math.comb(size - 1, i) for i in range(size)], np.float64)
    return row / row.sum()


def blur_pool(x: ArrayLike, size: int, stride: int, padding: str = "reflect") -> jax.Array:
    """Zhang's BlurPool: depthwise binomial blur of x [N, H, W, C], then keep every stride-th.

    size: filter size 1..7 (1 = plain subsampling x[:, ::s, ::s]); stride: int; padding:
    'reflect' (Zhang), 'circular' or 'zero', [floor((k-1)/2), ceil((k-1)/2)] on each axis.
    Returns [N, ceil(H/s), ceil(W/s), C].
    """
    # The binomial filter is the outer product of its row: blur H, then W, each as a weighted
    # sum of strided slices (exactly the 2-D filter; far faster on CPU than a depthwise conv).
    row = _binomial_row(size)
    check_int("stride", stride)
    check_choice("padding", padding, PAD_FILLS)
    x = jnp.asarray(x)
    xp = pad_spatial(x, (((size - 1) // 2, size // 2),) * 2, padding)
    for axis in (1, 2):
        n = (xp.shape[axis] - size) // stride + 1
        xp = sum(
            float(row[i]) * lax.slice_in_dim(xp, i, i + (n - 1) * stride + 1, stride, axis)
            for i in range(size)
        )
    return xp


def _polyphase(x: ArrayLike, stride: int) -> jax.Array:
    """x [N, H, W, C] -> [N, s*s, H/s, W/s, C]; component a*s + b is x[:, a::s, b::s]."""
    check_int("stride", stride)
    x = jnp.asarray(x)
    n, h, w, c = x.shape
    if h % stride or w % stride:
        raise ValueError(
            f"polyphase components need H and W divisible by stride {stride}, "
            f"got x of shape {x.shape}"
        )
    x = x.reshape(n, h // stride, stride, w // stride, stride, c).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(n, stride * stride, h // stride, w // stride, c)


def polyphase_norms(x: ArrayLike, stride: int) -> jax.Array:
    """Squared l2 norm (over pixels and channels) of each polyphase component: [N, s*s]."""
    return jnp.sum(jnp.square(_polyphase(x, stride)), axis=(2, 3, 4))


def aps_phase(x: ArrayLike, stride: int) -> jax.Array:
    """APS choice per example: int32 [N] index a*s + b of the component of largest norm.

    Ties go to the lowest index (deterministic).
    """
    return jnp.argmax(polyphase_norms(x, stride), axis=1).astype(jnp.int32)


def select_phase(x: ArrayLike, stride: int, phase: ArrayLike) -> jax.Array:
    """Per example n, the polyphase component x[n, a::s, b::s] with a*s + b = phase[n].

    x: [N, H, W, C] (H, W divisible by stride); phase: int [N]. Returns [N, H/s, W/s, C].
    """
    components = _polyphase(x, stride)
    index = jnp.asarray(phase, jnp.int32)[:, None, None, None, None]
    return jnp.take_along_axis(components, index, axis=1)[:, 0]


def aps_downsample(x: ArrayLike, stride: int) -> jax.Array:
    """Adaptive polyphase sampling of x [N, H, W, C] -> [N, H/s, W/s, C]."""
    return select_phase(x, stride, aps_phase(x, stride))


def stage_modes(stride_mode: str, full_stages: int, num_stages: int) -> tuple[str, ...]:
    """The mode of each of `num_stages` strided stages, in order.

    stride_mode applies to every strided stage except the last `full_stages`, which are 'full'
    (stride_mode 'full' makes all of them full). Returns a tuple of num_stages modes.
    """
    check_choice("stride_mode", stride_mode, STRIDE_MODES)
    check_int("full_stages", full_stages, 0, num_stages)
    return tuple(
        "full" if stride_mode == "full" or i >= num_stages - full_stages else stride_mode
        for i in range(num_stages)
    )


@dataclasses.dataclass(frozen=True)
class Subsampler:
    """How one layer of stride `factor` subsamples, given its input's dilation.

    mode: one of STRIDE_MODES; factor: the layer's stride in the `subsample` net; dilation: the
    dilation its input is computed at (1 unless a full layer came before); blur_size: 1..7;
    padding_mode: the model's 'zero' | 'circular' (blur pads reflect for 'zero').
    """

    mode: str = "subsample"
    factor: int = 2
    dilation: int = 1
    blur_size: int = 4
    padding_mode: str = "zero"

    def __post_init__(self):
        check_choice("mode", self.mode, STRIDE_MODES)
        check_int("factor", self.factor)
        check_int("dilation", self.dilation)
        check_int("blur_size", self.blur_size, 1, MAX_BLUR_SIZE)
        check_choice("padding_mode", self.padding_mode, PADDING_MODES)
        if self.mode != "full" and self.dilation != 1 and self.factor != 1:
            raise ValueError(
                f"stride_mode {self.mode!r} after a 'full' layer (dilation "
                f"{self.dilation}): full stages must be the last ones"
            )

    @property
    def op_stride(self) -> int:
        """The stride the layer itself runs at: factor for 'subsample', else 1."""
        return self.factor if self.mode == "subsample" else 1

    @property
    def out_dilation(self) -> int:
        """The dilation for every later layer: dilation * factor for 'full', else dilation."""
        return self.dilation * self.factor if self.mode == "full" else self.dilation

    def _aps_input(self, x: ArrayLike) -> jax.Array:
        """x padded at the high end to a multiple of factor (zeros or wrap)."""
        h, w = jnp.shape(x)[1:3]
        fill = "circular" if self.padding_mode == "circular" else "zero"
        return pad_spatial(x, ((0, -h % self.factor), (0, -w % self.factor)), fill)

    def phase(self, x: ArrayLike) -> jax.Array | None:
        """The APS phase int32 [N] of x [N, H, W, C] for 'aps' (None for other modes)."""
        if self.mode != "aps" or self.factor == 1:
            return None
        return aps_phase(self._aps_input(x), self.factor)

    def downsample(self, x: ArrayLike, phase: ArrayLike | None = None) -> jax.Array:
        """The subsampling step after the layer (and its activation) ran at `op_stride`.

        x: [N, H, W, C]. 'subsample' and 'full': x unchanged; 'blur': blur_pool; 'aps': the
        polyphase component `phase` [N] (default: this x's own APS phase). Returns
        [N, ceil(H/f), ceil(W/f), C] for blur/aps.
        """
        if self.mode in ("subsample", "full") or self.factor == 1:
            return jnp.asarray(x)
        if self.mode == "blur":
            pad = "circular" if self.padding_mode == "circular" else "reflect"
            return blur_pool(x, self.blur_size, self.factor, pad)
        xp = self._aps_input(x)
        return select_phase(xp, self.factor, aps_phase(xp, self.factor) if phase is None else phase)
