"""Convolutions and pools of the models, with the padding rules the subsampling switch needs.

Every layer takes a `dilation` (the `full` mode's a trous factor) and a `padding_mode`.
Padding (``padding`` argument of the layers, always in the units of the `subsample` net):
``'SAME'`` = ((k-1)//2, k//2) per axis (TF 'SAME' at stride 1; for strided layers it is the
symmetric, lattice-aligned choice, unlike TF's input-size dependent pads), ``'VALID'`` = 0,
an int p = (p, p) on both axes, or explicit ((top, bottom), (left, right)). At dilation d all
pads are multiplied by d. ``padding_mode`` says how pads are filled:
``'zero'`` = zeros for convs (the normalised input's zero), -inf for max pool (equal to Keras'
ZeroPadding + MaxPool on post-ReLU maps), excluded from the count for avg pool (TF/Keras);
``'circular'`` = wrap-around; the layer is a circular conv/pool: only the low pads are used and
the high pads are k-1-low, so the output keeps the input's period (size ceil(H/s)).

Public API (all arrays NHWC float32 unless said):
    PADDING_MODES
    check_choice(name, value, allowed) -> None                      (ValueError naming `name`)
    check_int(name, value, low=1, high=None) -> None               (ValueError unless int in range)
    is_int(value) -> bool                                           (int or numpy integer, no bool)
    resolve_padding(padding, kernel_size, padding_mode='zero') -> ((top, bottom), (left, right))
    pad_spatial(x, pads, mode, value=0.0) -> x padded on H, W        (mode zero|circular|reflect)
    conv2d(x, kernel [kh,kw,cin/g,cout], stride=1, padding='SAME', dilation=1,
           padding_mode='zero', feature_group_count=1) -> [N, h, w, cout]
    max_pool(x, window, stride, padding='VALID', dilation=1, padding_mode='zero') -> [N, h, w, C]
    avg_pool(x, window, stride, padding='VALID', dilation=1, padding_mode='zero',
             count_include_pad=False) -> [N, h, w, C]
    global_avg_pool(x) -> [N, C]
    Conv(features, kernel_size, stride=1, padding='SAME', dilation=1, padding_mode='zero',
         use_bias=True, kernel_init, bias_init)   flax module; params 'kernel' [kh,kw,cin,cout],
         'bias' [cout] (nn.Conv's names and layout)
    ReLU()(x, residual=None)                      max(x + residual, 0), a layer for the fast path
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

PADDING_MODES = ("zero", "circular")
PAD_FILLS = ("zero", "circular", "reflect")

Pads = tuple[tuple[int, int], tuple[int, int]]
Padding = str | int | Sequence[Sequence[int]]
_NHWC = ("NHWC", "HWIO", "NHWC")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise ValueError naming `name` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def is_int(value: Any) -> bool:
    """Whether `value` is a Python or numpy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> None:
    """Raise ValueError naming `name` unless `value` is an int in [low, high] (high: no bound)."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """An int or a pair of ints as a pair of positive ints (e.g. kernel (kh, kw))."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in pair:
        check_int(name, v)
    return int(pair[0]), int(pair[1])


def resolve_padding(
    padding: Padding, kernel_size: int | Sequence[int], padding_mode: str = "zero"
) -> Pads:
    """Pads ((top, bottom), (left, right)) of a layer, in the units of the `subsample` net.

    padding: 'SAME' ((k-1)//2, k//2 per axis), 'VALID', an int p (p each side) or explicit
      ((top, bottom), (left, right)); kernel_size: k or (kh, kw); padding_mode: 'zero' keeps the
      pads, 'circular' keeps the low pads and sets each high pad to k-1-low (a circular layer).
    """
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    ks = _pair("kernel_size", kernel_size)
    if isinstance(padding, str):
        check_choice("padding", padding, ("SAME", "VALID"))
        pads = tuple(((k - 1) // 2, k // 2) if padding == "SAME" else (0, 0) for k in ks)
    elif isinstance(padding, (int, np.integer)) and padding >= 0:
        pads = ((int(padding),) * 2,) * 2
    else:
        try:
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            pads = ()
        if len(pads) != 2 or min(min(p) for p in pads) < 0:
            raise ValueError(
                "padding must be 'SAME', 'VALID', an int >= 0 or "
                f"((top, bottom), (left, right)) of ints >= 0, got {padding!r}"
            )
    if padding_mode == "circular":
        if any(lo > k - 1 for (lo, _), k in zip(pads, ks, strict=True)):
            raise ValueError(
                f"circular padding needs low pads <= kernel_size - 1, got "
                f"padding {padding!r} for kernel_size {kernel_size!r}"
            )
        pads = tuple((lo, k - 1 - lo) for (lo, _), k in zip(pads, ks, strict=True))
    return pads


def _scaled(pads: Pads, dilation: int) -> Pads:
    return tuple((lo * dilation, hi * dilation) for lo, hi in pads)


def pad_spatial(x: ArrayLike, pads: Pads, mode: str, value: float = 0.0) -> jax.Array:
    """Pad the H and W axes of x [N, H, W, C] by pads ((top, bottom), (left, right)).

    mode: 'zero' (fill with `value`), 'circular' (wrap) or 'reflect' (mirror, edge not repeated).
    Returns [N, H + top + bottom, W + left + right, C].
    """
    check_choice("mode", mode, PAD_FILLS)
    x = jnp.asarray(x)
    widths = ((0, 0), *pads, (0, 0))
    if mode == "zero":
        return jnp.pad(x, widths, constant_values=value)
    return jnp.pad(x, widths, mode="wrap" if mode == "circular" else "reflect")


def conv_pads(
    padding: Padding, kernel_size: int | Sequence[int], dilation: int, padding_mode: str
) -> Pads:
    """((top, bottom), (left, right)) pads of a window op: `resolve_padding` of the kernel
    size, scaled by the (a trous) dilation."""
    check_int("dilation", dilation)
    return _scaled(resolve_padding(padding, kernel_size, padding_mode), dilation)


def _padded(
    x: ArrayLike,
    padding: Padding,
    kernel_size: int | Sequence[int],
    dilation: int,
    padding_mode: str,
    value: float,
) -> jax.Array:
    pads = conv_pads(padding, kernel_size, dilation, padding_mode)
    return pad_spatial(x, pads, "circular" if padding_mode == "circular" else "zero", value)


def conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    stride: int = 1,
    padding: Padding = "SAME",
    dilation: int = 1,
    padding_mode: str = "zero",
    feature_group_count: int = 1,
) -> jax.Array:
    """2-D convolution (cross-correlation, as every DL framework) of an NHWC map.

    x: [N, H, W, Cin]; kernel: [kh, kw, Cin / feature_group_count, Cout]; stride: int;
    padding: see `resolve_padding` (scaled by `dilation`); dilation: kernel (a trous) dilation;
    padding_mode: 'zero' | 'circular'. Returns [N, h, w, Cout], h = (H + pads - d(kh-1) - 1)//s + 1.
    """
    kernel = jnp.asarray(kernel)
    pads = conv_pads(padding, kernel.shape[:2], dilation, padding_mode)
    return padded_conv2d(x, kernel, stride, pads, dilation, padding_mode, feature_group_count)


def padded_conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    stride: int,
    pads: Pads,
    dilation: int = 1,
    padding_mode: str = "zero",
    feature_group_count: int = 1,
) -> jax.Array:
    """`conv2d` with its pads given: ((top, bottom), (left, right)) rows and columns, each
    >= 0, already scaled by the dilation (as `conv_pads` gives them), zeros or wrapped."""
    check_int("stride", stride)
    check_int("feature_group_count", feature_group_count)
    if padding_mode == "circular":
        # One more wrapped row and column at the top and left, which the convolution drops
        # again (padding -1): the same numbers as a 'VALID' convolution of the wrapped map,
        # but XLA's CPU backend runs a convolution whose padding is all zero on a slow path
        # (3-5x slower for 16 px maps and smaller, and for dilated ones; WORKSPACE_NOTES.md).
        xp = pad_spatial(x, tuple((lo + 1, hi) for lo, hi in pads), "circular")
        conv_padding = ((-1, 0), (-1, 0))
    else:  # zero pads go to the convolution itself
        xp, conv_padding = jnp.asarray(x), pads
    return lax.conv_general_dilated(
        xp,
        kernel,
        (stride, stride),
        conv_padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=_NHWC,
        feature_group_count=feature_group_count,
    )


def _reduce_window(
    x: jax.Array, init: float, op: Callable, window: tuple[int, int], stride: int, dilation: int
) -> jax.Array:
    # A Python scalar init lets JAX recognise max/add windows (reduce_window_max/_sum), which
    # are differentiable; an array init makes a generic reduce_window that is not.
    return lax.reduce_window(
        x,
        init,
        op,
        (1, *window, 1),
        (1, stride, stride, 1),
        "VALID",
        window_dilation=(1, dilation, dilation, 1),
    )


def max_pool(
    x: ArrayLike,
    window: int | Sequence[int],
    stride: int,
    padding: Padding = "VALID",
    dilation: int = 1,
    padding_mode: str = "zero",
) -> jax.Array:
    """Max pooling of x [N, H, W, C] over a (dilated) window; pads are -inf ('zero') or wrap.

    window: k or (kh, kw); stride: int; padding/dilation/padding_mode as in `conv2d`.
    Returns [N, h, w, C].
    """
    ks = _pair("window", window)
    check_int("stride", stride)
    xp = _padded(x, padding, ks, dilation, padding_mode, -jnp.inf)
    if dilation == 1:
        return _reduce_window(xp, -jnp.inf, lax.max, ks, stride, dilation)
    # JAX has no VJP for a dilated max window: take the max of the k_h * k_w dilated slices.
    h = (xp.shape[1] - (ks[0] - 1) * dilation - 1) // stride + 1
    w = (xp.shape[2] - (ks[1] - 1) * dilation - 1) // stride + 1
    taps = [
        xp[
            :,
            i * dilation : i * dilation + (h - 1) * stride + 1 : stride,
            j * dilation : j * dilation + (w - 1) * stride + 1 : stride,
        ]
        for i in range(ks[0])
        for j in range(ks[1])
    ]
    return functools.reduce(jnp.maximum, taps)


def avg_pool(
    x: ArrayLike,
    window: int | Sequence[int],
    stride: int,
    padding: Padding = "VALID",
    dilation: int = 1,
    padding_mode: str = "zero",
    count_include_pad: bool = False,
) -> jax.Array:
    """Average pooling of x [N, H, W, C] over a (dilated) window.

    Zero pads are left out of the count unless count_include_pad (TF/Keras leave them out);
    circular pads are real samples. Other arguments as in `max_pool`. Returns [N, h, w, C].
    """
    ks = _pair("window", window)
    check_int("stride", stride)
    xp = _padded(x, padding, ks, dilation, padding_mode, 0.0)
    total = _reduce_window(xp, 0.0, lax.add, ks, stride, dilation)
    if count_include_pad or padding_mode == "circular":
        return total / (ks[0] * ks[1])
    ones = jnp.ones((1, *jnp.shape(x)[1:3], 1), xp.dtype)
    count = _reduce_window(
        _padded(ones, padding, ks, dilation, padding_mode, 0.0), 0.0, lax.add, ks, stride, dilation
    )
    return total / count


def global_avg_pool(x: ArrayLike) -> jax.Array:
    """Mean over H and W of x [N, H, W, C] -> [N, C] (translation invariant for circular maps)."""
    return jnp.mean(jnp.asarray(x), axis=(1, 2))


class Conv(nn.Module):
    """`conv2d` with parameters 'kernel' [kh, kw, Cin, Cout] and 'bias' [Cout] (as nn.Conv).

    Fields: features (Cout), kernel_size (k or (kh, kw)), stride, padding, dilation,
    padding_mode as in `conv2d`; use_bias; kernel_init (He normal), bias_init (zeros).
    __call__(x [N, H, W, Cin]) -> [N, h, w, Cout].
    """

    features: int
    kernel_size: int | tuple[int, int]
    stride: int = 1
    padding: Padding = "SAME"
    dilation: int = 1
    padding_mode: str = "zero"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.he_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        """Convolve x [N, H, W, Cin] -> [N, h, w, features]."""
        kh, kw = _pair("kernel_size", self.kernel_size)
        x = jnp.asarray(x)
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        y = conv2d(x, kernel, self.stride, self.padding, self.dilation, self.padding_mode)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


class ReLU(nn.Module):
    """max(x + residual, 0) as a layer, without variables: `ReLU()(x)` or `ReLU()(x, residual)`
    (a ResNet block's output). A layer rather than `nn.relu` so that inference rewrites see it:
    `benchmarks.inference.fastpath` computes it inside the convolution that produces x.

    __call__(x [...], residual [...] or None) -> [...] (x's shape).
    """

    def __call__(self, x: ArrayLike, residual: ArrayLike | None = None) -> jax.Array:
        """max(x + residual, 0) (residual None: max(x, 0))."""
        return nn.relu(x if residual is None else x + residual)
