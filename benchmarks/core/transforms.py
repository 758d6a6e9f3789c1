"""Image transformations of shiftbench and the parameter sweeps that drive them.

Every transform maps ONE image ``[H, W, C]`` float32 and ONE parameter vector ``[P]`` to an
image of a static shape. Static configuration (sizes, method, fill) is keyword-only, so a
caller binds it with ``functools.partial(transform, **static)`` and gets
``f(image, param) -> image``; ``jax.vmap(f, in_axes=(None, 0))`` then runs a whole sweep
``[T, P]`` and a new sweep of the same shape never recompiles.

Sign convention of every shift-like transform (``embed``, ``circular_shift``,
``subpixel_shift``): ``output(y, x) = input(y - dy, x - dx)``, as ``np.roll`` and
``scipy.ndimage.shift``. ``crop`` is the exception by nature: its offset is the top-left
corner of a window, ``output(y, x) = input(y + dy, x + dx)``, so content moves by -offset.

Integer offsets (``crop``, ``embed``, ``circular_shift``) must have an integer dtype.
Offsets out of range raise ``ValueError`` when the offset is concrete (see
``validate_offsets``); under ``jit``/``vmap`` they cannot be checked and are clamped
to the nearest valid position (each coordinate clipped to [0, max]).

Sweep builders live in `benchmarks.core.sweeps`; they return numpy arrays
``[T, P]``: int32 when all their numeric arguments are integers, float32 otherwise. Ranges
include ``stop`` (``line(-3, 2, 1)`` has 6 values).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from models.layers.conv import check_choice, is_int

EMBED_FILLS = ("zero", "mean", "constant", "inpaint")
SUBPIXEL_METHODS = ("fourier", "lanczos3", "bilinear")
RESCALE_METHODS = ("bilinear", "nearest")

# Binomial 11-tap row [1, 10, 45, ..., 1] / 1024 (exact in float32); the inpainting blur is its
# outer product, applied separably.
_BINOMIAL_11 = np.array([math.comb(10, k) for k in range(11)], np.float32) / 2.0**10
_BLUR_RADIUS = 5


# ----------------------------------------------------------------------------- validation


def check_number(name: str, value) -> float | int:
    """`value` when it is a finite real number (not a bool), else ValueError naming `name`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not np.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return value


def _size(name: str, value) -> tuple[int, int]:
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(is_int(v) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a pair of positive ints (h, w), got {value!r}")
    return int(value[0]), int(value[1])


def _image(image: ArrayLike) -> jax.Array:
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3:
        raise ValueError(f"image must have shape [H, W, C], got shape {image.shape}")
    return image


def _param(name: str, value: ArrayLike, size: int, *, integer: bool) -> jax.Array:
    """The parameter as a vector [size]; a scalar is accepted when size == 1."""
    value = jnp.asarray(value)
    if value.ndim > 1 or value.size != size:
        raise ValueError(f"{name} must have shape ({size},), got shape {value.shape}")
    if integer and not jnp.issubdtype(value.dtype, jnp.integer):
        raise ValueError(f"{name} must have an integer dtype, got {value.dtype}")
    return value.reshape(size) if integer else value.reshape(size).astype(jnp.float32)


def _is_concrete(value: jax.Array) -> bool:
    return not isinstance(value, jax.core.Tracer)


def validate_offsets(
    offsets: ArrayLike, *, max_offset: tuple[int, int], name: str = "offsets"
) -> None:
    """Raise ValueError unless every integer offset (dy, dx) lies in [0, max_offset].

    Args:
      offsets: concrete integer array [..., 2] of (dy, dx) pairs, e.g. a sweep [T, 2].
      max_offset: (max_dy, max_dx), the largest valid offset per axis (inclusive).
      name: argument name used in the error message.
    """
    offsets = np.asarray(offsets)
    if offsets.ndim == 0 or offsets.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [..., 2], got shape {offsets.shape}")
    if not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {offsets.dtype}")
    flat = offsets.reshape(-1, 2)
    bad = np.flatnonzero(np.any((flat < 0) | (flat > np.asarray(max_offset)), axis=1))
    if bad.size:
        raise ValueError(
            f"{name} {flat[bad[0]].tolist()} out of range: each (dy, dx) must lie in "
            f"[0, {max_offset[0]}] x [0, {max_offset[1]}]"
        )


def _checked_offset(offset: jax.Array, max_offset: tuple[int, int]) -> jax.Array:
    """A ValueError if the concrete offset is out of range; a traced one is clamped into
    [0, max_offset] (explicitly: lax.dynamic_slice would first wrap negative indices)."""
    if _is_concrete(offset):
        validate_offsets(offset, max_offset=max_offset, name="offset")
    return jnp.clip(offset, 0, jnp.asarray(max_offset, offset.dtype))


# ----------------------------------------------------------------------------- transforms


def crop(image: ArrayLike, offset: ArrayLike, *, out_size: tuple[int, int]) -> jax.Array:
    """The ``out_size`` window of ``image`` whose top-left corner is at ``offset``.

    ``output[y, x] = image[y + dy, x + dx]`` (numpy: ``image[dy:dy + h, dx:dx + w]``).

    Args:
      image: [H, W, C] float32.
      offset: int [2], (dy, dx) in pixels, each in [0, H - h] x [0, W - w]. Out of range is a
        ValueError when concrete; under jit/vmap it is clamped into range (the window never
        leaves the image).
      out_size: static (h, w) with h <= H, w <= W.

    Returns:
      [h, w, C] float32.
    """
    image = _image(image)
    h, w = _size("out_size", out_size)
    height, width, channels = image.shape
    if h > height or w > width:
        raise ValueError(f"out_size {(h, w)} must not exceed the image size {(height, width)}")
    offset = _param("offset", offset, 2, integer=True)
    offset = _checked_offset(offset, (height - h, width - w))
    return lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, channels))


def _blur_binomial_11(x: jax.Array) -> jax.Array:
    """Separable 11x11 binomial blur of [H, W, K] with zero padding (sums of shifted slices,
    so a pixel with no non-zero input within radius 5 stays exactly 0 on every backend)."""
    for axis in (0, 1):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (_BLUR_RADIUS, _BLUR_RADIUS)
        padded = jnp.pad(x, pad)
        x = sum(
            weight * lax.slice_in_dim(padded, i, i + n, axis=axis)
            for i, weight in enumerate(_BINOMIAL_11)
        )
    return x


def inpaint_iters_needed(distance: int) -> int:
    """Iterations of ``inpaint`` that fill every hole within Chebyshev ``distance`` (pixels) of
    a known pixel: each iteration reaches 5 pixels (the radius of the 11-tap blur) further."""
    return -(-distance // _BLUR_RADIUS)


def inpaint(image: ArrayLike, mask: ArrayLike, *, iters: int | None = None) -> jax.Array:
    """Fill the unknown pixels of ``image`` by iterated normalised convolution.

    State: values V and a binary "has a value" map A, starting from the known pixels (V = 0
    where A = 0). Each iteration computes ``blur(V) / blur(A)`` (binomial 11x11 blur, zero
    padding) wherever ``blur(A) > 0``, resets the known pixels to ``image``, and sets A to
    ``blur(A) > 0``. So after k iterations every pixel within Chebyshev distance 5k of a known
    pixel has a value; later iterations keep smoothing the filled region. Every filled value is
    a convex combination of known values, hence within their per-channel range.

    Args:
      image: [H, W, C] float32; values under ``mask == 0`` are ignored.
      mask: [H, W], non-zero (True) where the pixel is known.
      iters: static iteration count. None: ``inpaint_iters_needed(max(H, W) - 1)``, enough to
        fill the whole image from any single known pixel.

    Returns:
      [H, W, C] float32; known pixels unchanged, holes beyond the reach of ``iters``
      iterations (or all pixels, if nothing is known) are 0.
    """
    image = _image(image)
    height, width, _ = image.shape
    mask = jnp.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError(f"mask must have shape {(height, width)}, got shape {mask.shape}")
    if iters is None:
        iters = inpaint_iters_needed(max(height, width) - 1)
    if not is_int(iters) or iters < 0:
        raise ValueError(f"iters must be a non-negative int or None, got {iters!r}")
    known = (mask != 0)[..., None]

    def step(_, state):
        values, has_value = state
        blurred = _blur_binomial_11(jnp.concatenate([values, has_value], axis=-1))
        numerator, denominator = blurred[..., :-1], blurred[..., -1:]
        reached = denominator > 0
        filled = jnp.where(reached, numerator / jnp.where(reached, denominator, 1.0), 0.0)
        return jnp.where(known, image, filled), reached.astype(jnp.float32)

    initial = (jnp.where(known, image, 0.0), known.astype(jnp.float32))
    values, _ = lax.fori_loop(0, iters, step, initial)
    return values


def embed(
    image: ArrayLike,
    offset: ArrayLike,
    *,
    canvas_size: tuple[int, int],
    image_size: tuple[int, int],
    fill: str = "zero",
    fill_value: float = 0.0,
    inpaint_iters: int | None = None,
) -> jax.Array:
    """Downscale ``image`` to ``image_size`` and paste it into a canvas at ``offset``.

    The resize is ``jax.image.resize(method='linear', antialias=True)`` (triangle filter
    widened by the downscale factor). ``output[dy + y, dx + x] = resized[y, x]``.

    Args:
      image: [H, W, C] float32.
      offset: int [2], (dy, dx) top-left corner in canvas pixels, in
        [0, ch - h] x [0, cw - w]. Out of range is a ValueError when concrete; under jit/vmap
        it is clamped so the pasted image stays inside the canvas.
      canvas_size: static (ch, cw).
      image_size: static (h, w) with h <= ch, w <= cw.
      fill: background, one of EMBED_FILLS: 'zero'; 'mean' (the input image's mean colour per
        channel); 'constant' (``fill_value``); 'inpaint' (``inpaint`` from the pasted pixels).
      fill_value: background value for fill='constant'.
      inpaint_iters: iterations for fill='inpaint'. None:
        ``inpaint_iters_needed(max(ch - h, cw - w))``, the fewest that fill every hole for
        every offset (224 canvas with a 112 image: 23).

    Returns:
      [ch, cw, C] float32.
    """
    image = _image(image)
    canvas_h, canvas_w = _size("canvas_size", canvas_size)
    h, w = _size("image_size", image_size)
    if h > canvas_h or w > canvas_w:
        raise ValueError(f"image_size {(h, w)} must not exceed canvas_size {canvas_size}")
    check_choice("fill", fill, EMBED_FILLS)
    check_number("fill_value", fill_value)
    if inpaint_iters is not None and (not is_int(inpaint_iters) or inpaint_iters < 1):
        raise ValueError(f"inpaint_iters must be a positive int or None, got {inpaint_iters!r}")
    offset = _param("offset", offset, 2, integer=True)
    offset = _checked_offset(offset, (canvas_h - h, canvas_w - w))

    channels = image.shape[-1]
    resized = jax.image.resize(image, (h, w, channels), method="linear", antialias=True)
    start = (offset[0], offset[1], 0)
    if fill == "inpaint":
        canvas = lax.dynamic_update_slice(jnp.zeros((canvas_h, canvas_w, channels)), resized, start)
        mask = lax.dynamic_update_slice(
            jnp.zeros((canvas_h, canvas_w), bool), jnp.ones((h, w), bool), start[:2]
        )
        if inpaint_iters is None:
            inpaint_iters = inpaint_iters_needed(max(canvas_h - h, canvas_w - w))
        return inpaint(canvas, mask, iters=inpaint_iters)
    background = {"zero": 0.0, "constant": fill_value, "mean": image.mean(axis=(0, 1))}[fill]
    canvas = jnp.broadcast_to(jnp.asarray(background, jnp.float32), (canvas_h, canvas_w, channels))
    return lax.dynamic_update_slice(canvas, resized, start)


def circular_shift(image: ArrayLike, shift: ArrayLike) -> jax.Array:
    """Roll ``image`` with wrap-around: equals ``np.roll(image, shift, axis=(0, 1))``.

    Args:
      image: [H, W, C] float32.
      shift: int [2], (dy, dx) in pixels, any sign and magnitude.

    Returns:
      [H, W, C] float32.
    """
    image = _image(image)
    shift = _param("shift", shift, 2, integer=True)
    return jnp.roll(image, (shift[0], shift[1]), axis=(0, 1))


def _fourier_factor(n: int, d: jax.Array) -> jax.Array:
    """Per-frequency multiplier [n] (complex64) of a periodic shift by ``d`` along an axis of
    length n. The Nyquist bin of an even n gets the real factor cos(pi d), the mean of the
    +n/2 and -n/2 phase ramps: it equals (-1)^d for integer d and makes the factor Hermitian, so
    the shifted 2-D spectrum stays Hermitian (the (Nyquist, Nyquist) corner included, which
    taking the real part of the output alone would get wrong) and the output is real."""
    k = np.fft.fftfreq(n, d=1.0 / n).astype(np.float32)  # signed integer frequencies
    turns = jnp.mod(k * d, n) / n  # reduce before scaling by 2 pi: accurate for large d
    factor = jnp.exp(-2j * jnp.pi * turns)
    if n % 2 == 0:
        factor = factor.at[n // 2].set(jnp.cos(jnp.pi * jnp.mod(d, 2.0)))
    return factor


def _fourier_shift(image: jax.Array, shift: jax.Array) -> jax.Array:
    height, width, _ = image.shape
    factor = (
        _fourier_factor(height, shift[0])[:, None, None]
        * _fourier_factor(width, shift[1])[None, :, None]
    )
    spectrum = jnp.fft.fft2(image, axes=(0, 1)) * factor
    return jnp.fft.ifft2(spectrum, axes=(0, 1)).real.astype(jnp.float32)


def _lanczos3(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.abs(x) < 3, jnp.sinc(x) * jnp.sinc(x / 3), 0.0)


def _triangle(x: jax.Array) -> jax.Array:
    return jnp.maximum(0.0, 1.0 - jnp.abs(x))


# method -> (kernel, radius a: the kernel vanishes for |x| >= a)
_SEPARABLE_KERNELS: dict[str, tuple[Callable[[jax.Array], jax.Array], int]] = {
    "lanczos3": (_lanczos3, 3),
    "bilinear": (_triangle, 1),
}


def _shift_axis(x: jax.Array, d: jax.Array, axis: int, method: str, fill: float) -> jax.Array:
    """Shift along ``axis`` by real ``d`` with an interpolation kernel of radius a, samples
    outside the image being ``fill``: ``out[y] = sum_j w_j x[y - floor(d) + j]``,
    j = -a..a-1, ``w_j = kernel(frac(d) + j)`` normalised to sum 1."""
    kernel, a = _SEPARABLE_KERNELS[method]
    n = x.shape[axis]
    whole = jnp.floor(d)
    weights = kernel(d - whole + jnp.arange(-a, a, dtype=jnp.float32))
    weights = weights / weights.sum()
    # A shift beyond n + a leaves only fill; clipping it keeps the window inside the padding.
    whole = jnp.clip(whole, -(n + a), n + a).astype(jnp.int32)
    pad = n + 2 * a
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    padded = jnp.pad(x, widths, constant_values=fill)
    window = lax.dynamic_slice_in_dim(padded, pad - whole - a, n + 2 * a - 1, axis=axis)
    return sum(weights[i] * lax.slice_in_dim(window, i, i + n, axis=axis) for i in range(2 * a))


def subpixel_shift(
    image: ArrayLike, shift: ArrayLike, *, method: str = "fourier", fill: float = 0.0
) -> jax.Array:
    """Shift by a fractional (dy, dx): ``output(y, x) = input(y - dy, x - dx)``.

    Methods (SUBPIXEL_METHODS):
      'fourier': band-limited periodic shift, a phase ramp on the 2-D DFT; wraps around like
        ``np.roll`` (which it equals for integer shifts) and ignores ``fill``. For even sizes
        the Nyquist bin is scaled by cos(pi d) to keep the output real, so two fractional
        shifts compose to their sum only up to that bin (exactly for odd sizes, or when
        one shift is an integer).
      'lanczos3': separable Lanczos (a = 3) interpolation, weights normalised to sum 1.
      'bilinear': separable linear interpolation (= scipy.ndimage.shift order=1,
        mode='grid-constant').
    Samples from outside the image take the value ``fill`` (lanczos3, bilinear).

    Args:
      image: [H, W, C] float32.
      shift: float [2], (dy, dx) in pixels.
      method: static, one of SUBPIXEL_METHODS.
      fill: static value outside the image.

    Returns:
      [H, W, C] float32.
    """
    image = _image(image)
    check_choice("method", method, SUBPIXEL_METHODS)
    fill = float(check_number("fill", fill))
    shift = _param("shift", shift, 2, integer=False)
    if method == "fourier":
        return _fourier_shift(image, shift)
    shifted = _shift_axis(image, shift[0], 0, method, fill)
    return _shift_axis(shifted, shift[1], 1, method, fill)


def _sample(image: jax.Array, ys: jax.Array, xs: jax.Array, method: str, fill: float) -> jax.Array:
    """``image`` at real coordinates ys, xs [h, w] (pixel centres at integers); 'bilinear'
    or 'nearest'; neighbours outside the image count as ``fill``. Returns [h, w, C]."""
    height, width, _ = image.shape
    # Coordinates far outside only ever need to stay outside; clipping keeps int casts sane.
    ys = jnp.clip(ys, -2.0, height + 1.0)
    xs = jnp.clip(xs, -2.0, width + 1.0)

    def at(yi, xi):
        inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        values = image[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
        return jnp.where(inside[..., None], values, fill)

    if method == "nearest":
        return at(jnp.round(ys).astype(jnp.int32), jnp.round(xs).astype(jnp.int32))
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    top = (1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)
    bottom = (1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)
    return (1 - wy) * top + wy * bottom


def _centred_grid(height: int, width: int) -> tuple[jax.Array, jax.Array, float, float]:
    """Output pixel coordinates relative to the centre ((H-1)/2, (W-1)/2), and the centre."""
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    u, v = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32) - cy,
        jnp.arange(width, dtype=jnp.float32) - cx,
        indexing="ij",
    )
    return u, v, cy, cx


def rescale(
    image: ArrayLike, scale: ArrayLike, *, fill: float = 0.0, method: str = "bilinear"
) -> jax.Array:
    """Scale the content about the image centre, keeping the output size.

    ``output(c + u) = input(c + u / s)`` with c = ((H-1)/2, (W-1)/2): s > 1 enlarges (the
    borders leave the frame), s < 1 shrinks (the frame fills with ``fill``). No antialiasing:
    for s < 1 this is plain resampling, as scipy.ndimage.zoom / affine_transform.

    Args:
      image: [H, W, C] float32.
      scale: float [1] (or a scalar), s > 0. Non-positive is a ValueError when concrete;
        under jit it gives meaningless output.
      fill: static value outside the image.
      method: static, one of RESCALE_METHODS.

    Returns:
      [H, W, C] float32.
    """
    image = _image(image)
    check_choice("method", method, RESCALE_METHODS)
    fill = float(check_number("fill", fill))
    scale = _param("scale", scale, 1, integer=False)[0]
    if _is_concrete(scale) and not scale > 0:
        raise ValueError(f"scale must be > 0, got {float(scale)}")
    u, v, cy, cx = _centred_grid(*image.shape[:2])
    return _sample(image, cy + u / scale, cx + v / scale, method, fill)


def rotate(image: ArrayLike, angle: ArrayLike, *, fill: float = 0.0) -> jax.Array:
    """Rotate by ``angle`` degrees counter-clockwise (as displayed, row 0 at the top) about the
    centre ((H-1)/2, (W-1)/2), bilinear; equals
    ``scipy.ndimage.rotate(image, angle, reshape=False, order=1, mode='grid-constant',
    cval=fill)``.

    Args:
      image: [H, W, C] float32.
      angle: float [1] (or a scalar), degrees.
      fill: static value outside the image.

    Returns:
      [H, W, C] float32.
    """
    image = _image(image)
    fill = float(check_number("fill", fill))
    theta = jnp.deg2rad(_param("angle", angle, 1, integer=False)[0])
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    u, v, cy, cx = _centred_grid(*image.shape[:2])
    return _sample(image, cy + cos * u + sin * v, cx - sin * u + cos * v, "bilinear", fill)
