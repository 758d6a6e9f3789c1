"""Named evaluation protocols: a transformation, its sweep, and the reference parameter.

A protocol turns user-facing options (shift range, sweep shape, canvas and fill) into what the
evaluator needs: `transform(image [H, W, C], param [P]) -> [h, w, C]`, the sweep `params [T, P]`,
the index of the untransformed (reference) entry, and an x-axis for plots.

Shifts are given in pixels relative to the reference position d = 0 and follow np.roll's sign
(the content moves by +d). The paper's protocols (SPEC.md) are:

| protocol | Azulay & Weiss | flags |
|---|---|---|
| crop | 234 -> 224 windows, diagonal 1-px steps | --image_size=234 --crop_size=224 --min_shift=0 --max_shift=8 |
| embed ("black") | image at 112 px in a 224 canvas, offsets centre-4..centre+3 | --transform=embed --embed_size=112 --min_shift=-4 --max_shift=3 |
| inpaint | as embed, background inpainted | --transform=inpaint ... |
| rescale | scale about the centre | --transform=rescale --scale_min=... |
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import transforms

PROTOCOLS = ("crop", "embed", "inpaint", "circular", "subpixel", "translate", "rescale", "rotate")
SWEEPS = ("diagonal", "horizontal", "vertical", "grid", "random")
FILLS = ("zero", "mean", "constant", "inpaint")
SUBPIXEL_METHODS = ("fourier", "lanczos3", "bilinear")


class ProtocolError(ValueError):
    """Options that do not make a valid protocol; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A transformation sweep ready for the evaluator.

    Attributes:
      name: protocol name.
      transform: `transform(image [H, W, C], param [P]) -> [h, w, C]`.
      params: [T, P] float32 sweep parameters.
      reference_index: index of the untransformed / reference entry.
      x: [T] value plotted on the x axis (shift along the sweep, scale or angle).
      xlabel: label of x.
      output_shape: (h, w, C) of transformed images.
    """

    name: str
    transform: Callable[[jax.Array, jax.Array], jax.Array]
    params: np.ndarray
    reference_index: int
    x: np.ndarray
    xlabel: str
    output_shape: tuple[int, int, int]


def shift_sweep(
    sweep: str, min_shift: int, max_shift: int, num_random: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Integer shifts (dy, dx) in [min_shift, max_shift] along a sweep shape.

    Returns:
      shifts int [T, 2], x [T] (plot axis) and its label.
    """
    if max_shift < min_shift:
        raise ProtocolError(f"--max_shift={max_shift} must be >= --min_shift={min_shift}.")
    if sweep not in SWEEPS:
        raise ProtocolError(f"--sweep={sweep!r} is not one of {SWEEPS}.")
    if max_shift == min_shift and sweep != "random":
        raise ProtocolError(
            f"--max_shift={max_shift} equals --min_shift: a sweep needs at least two shifts."
        )
    if sweep == "diagonal":
        p = transforms.diagonal(min_shift, max_shift, 1)
        return p, p[:, 1].astype(np.float32), "shift (dy = dx, px)"
    if sweep in ("horizontal", "vertical"):
        p = transforms.line(min_shift, max_shift, 1, axis="x" if sweep == "horizontal" else "y")
        col = 1 if sweep == "horizontal" else 0
        return p, p[:, col].astype(np.float32), f"shift ({'dx' if col else 'dy'}, px)"
    if sweep == "grid":
        p = transforms.grid(min_shift, max_shift, 1)
        return p, np.arange(len(p), dtype=np.float32), "grid index (row-major dy, dx)"
    p = transforms.random_offsets(seed, num_random, min_shift, max_shift)
    return p, np.arange(len(p), dtype=np.float32), "random draw"


def _zero_index(shifts: np.ndarray) -> int:
    """Index of the shift closest to (0, 0)."""
    return int(np.argmin(np.abs(np.asarray(shifts, np.float32)).sum(axis=1)))


def build(
    name: str,
    image_shape: tuple[int, ...],
    *,
    sweep: str = "diagonal",
    max_shift: int = 4,
    min_shift: int | None = None,
    shift_step: float = 1.0,
    num_random: int = 16,
    seed: int = 0,
    crop_size: int | None = None,
    embed_size: int | None = None,
    canvas_size: int | None = None,
    fill: str = "zero",
    fill_value: float = 0.0,
    subpixel_method: str = "fourier",
    scale_min: float = 0.9,
    scale_max: float = 1.1,
    num_scales: int = 11,
    angle_max: float = 15.0,
    angle_step: float = 1.0,
) -> Protocol:
    """Builds protocol `name` for square images of `image_shape` = (H, W, C).

    Args:
      name: one of PROTOCOLS.
      image_shape: (H, W, C) of the input images.
      sweep: shape of shift sweeps (SWEEPS).
      max_shift, min_shift: shift range in sweep units (min defaults to -max_shift, crop: 0).
      shift_step: pixels per sweep unit (subpixel only; the others are integer pixels).
      num_random, seed: draws of the 'random' sweep.
      crop_size: crop window (default H - (max_shift - min_shift)).
      embed_size, canvas_size: embed/inpaint image and canvas sizes (defaults H // 2 and H).
      fill, fill_value: background of embed, rescale and rotate.
      subpixel_method: interpolation of 'subpixel'.
      scale_min, scale_max, num_scales: rescale sweep (linear in scale).
      angle_max, angle_step: rotate sweep, -angle_max..angle_max degrees.

    Returns:
      A `Protocol`.

    Raises:
      ProtocolError: options that do not fit the images (message names the flag).
    """
    if name not in PROTOCOLS:
        raise ProtocolError(f"--transform={name!r} is not one of {PROTOCOLS}.")
    if fill not in FILLS:
        raise ProtocolError(f"--fill={fill!r} is not one of {FILLS}.")
    h, w, c = image_shape
    if h != w:
        raise ProtocolError(f"images are {h}x{w}; protocols need square images (set --image_size).")
    if fill in ("mean", "inpaint") and name not in ("embed", "inpaint"):
        raise ProtocolError(
            f"--fill={fill!r} applies to --transform=embed only; "
            f"--transform={name} fills with 'zero' or 'constant'."
        )
    if min_shift is None:
        min_shift = 0 if name == "crop" else -max_shift

    if name in ("rescale", "rotate"):
        if name == "rescale":
            if scale_max <= scale_min:
                raise ProtocolError(f"--scale_max={scale_max} must exceed --scale_min={scale_min}.")
            x = np.linspace(scale_min, scale_max, num_scales, dtype=np.float32)
            fn = functools.partial(_rescale, fill=fill, fill_value=fill_value)
            ref, label = int(np.argmin(np.abs(x - 1.0))), "scale"
        else:
            n = int(np.floor(angle_max / angle_step + 1e-6))
            x = (np.arange(-n, n + 1) * angle_step).astype(np.float32)
            if len(x) < 2:
                raise ProtocolError(
                    f"--angle_max={angle_max} < --angle_step={angle_step}: "
                    "the sweep has a single angle."
                )
            fn = functools.partial(_rotate, fill=fill, fill_value=fill_value)
            ref, label = int(np.argmin(np.abs(x))), "angle (deg)"
        return Protocol(name, fn, x[:, None], ref, x, label, (h, w, c))

    shifts, x, label = shift_sweep(sweep, min_shift, max_shift, num_random, seed)
    ref = _zero_index(shifts)
    if name == "crop":
        size = crop_size or h - (max_shift - min_shift)
        slack = h - size
        if size < 1 or slack < max_shift - min_shift:
            raise ProtocolError(
                f"--crop_size={size}: an image of {h} px leaves {slack} px of slack, "
                f"less than the shift range {max_shift - min_shift} "
                "(lower --max_shift or --crop_size, or raise --image_size)."
            )
        # The window's top-left corner is base - d, so the content moves by +d.
        base = max_shift + (slack - (max_shift - min_shift)) // 2
        fn = functools.partial(_crop, out_size=(size, size), base=base)
        return Protocol(name, fn, shifts.astype(np.float32), ref, x, label, (size, size, c))
    if name in ("embed", "inpaint"):
        canvas = canvas_size or h
        small = embed_size or canvas // 2
        centre = (canvas - small) // 2
        if small > canvas:
            raise ProtocolError(f"--embed_size={small} exceeds --canvas_size={canvas}.")
        if centre + min_shift < 0 or centre + max_shift + small > canvas:
            raise ProtocolError(
                f"--max_shift={max_shift}/--min_shift={min_shift}: a {small} px image "
                f"at the centre of a {canvas} px canvas can move only "
                f"{-centre}..{canvas - small - centre} px."
            )
        fn = functools.partial(
            _embed,
            canvas_size=(canvas, canvas),
            image_size=(small, small),
            base=centre,
            fill="inpaint" if name == "inpaint" else fill,
            fill_value=fill_value,
        )
        return Protocol(name, fn, shifts.astype(np.float32), ref, x, label, (canvas, canvas, c))
    if name == "circular":
        return Protocol(name, _circular, shifts.astype(np.float32), ref, x, label, (h, w, c))
    step = shift_step if name == "subpixel" else 1.0
    method = subpixel_method if name == "subpixel" else "bilinear"
    fn = functools.partial(
        transforms.subpixel_shift, method=method, fill=fill_value if fill == "constant" else 0.0
    )
    return Protocol(
        name,
        fn,
        (shifts * step).astype(np.float32),
        ref,
        x * step,
        label.replace("px", f"x {step:g} px") if step != 1.0 else label,
        (h, w, c),
    )


# Adapters from the sweep's float parameter vector to each transform's arguments.


def _int(param):
    return jnp.round(param).astype(jnp.int32)


def _crop(image, param, *, out_size, base):
    return transforms.crop(image, base - _int(param), out_size=out_size)


def _embed(image, param, *, canvas_size, image_size, base, fill, fill_value):
    return transforms.embed(
        image,
        _int(param) + base,
        canvas_size=canvas_size,
        image_size=image_size,
        fill=fill,
        fill_value=fill_value,
    )


def _circular(image, param):
    return transforms.circular_shift(image, _int(param))


def _rescale(image, param, *, fill, fill_value):
    return transforms.rescale(image, param[0], fill=fill_value if fill == "constant" else 0.0)


def _rotate(image, param, *, fill, fill_value):
    return transforms.rotate(image, param[0], fill=fill_value if fill == "constant" else 0.0)
