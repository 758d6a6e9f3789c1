"""Named evaluation protocols: a transformation, its sweep, its reference entry and its pairs.

A protocol turns user-facing options (`ProtocolConfig`: shift range, sweep shape, canvas and
fill) into what the evaluator needs: `transform(image [H, W, C], param [P]) -> [h, w, C]`, the
sweep `params [T, P]`, the index of the untransformed (reference) entry, the pairs of sweep
entries that are one step (or d steps) apart (`Protocol.pairs`), and an x-axis for plots.
`custom` wraps a sweep of your own. Definitions of every protocol and of the pairs:
docs/definitions.md.

Shifts are given in pixels relative to the reference position d = 0 and follow np.roll's sign
(the content moves by +d). The paper's protocols are:

| protocol | Azulay & Weiss | options |
|---|---|---|
| crop | 234 -> 224 windows, diagonal 1-px steps | images 234, crop_size=224, min_shift=0, max_shift=8 |
| embed ("black") | image at 112 px in a 224 canvas, offsets centre-4..centre+3 | embed_size=112, min_shift=-4, max_shift=3 |
| inpaint | as embed, background inpainted | as embed |
| rescale | scale about the centre | scale_min, scale_max, num_scales |

Each protocol is one small builder in `_BUILDERS` (name -> function(config, image_shape)).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from benchmarks.core import options, sweeps, transforms
from benchmarks.core.options import option
from benchmarks.core.protocol import Protocol, ProtocolError

PROTOCOLS = ("crop", "embed", "inpaint", "circular", "subpixel", "translate", "rescale", "rotate")
FILLS = ("zero", "mean", "constant", "inpaint")
SUBPIXEL_METHODS = ("fourier", "lanczos3", "bilinear")
SHIFT_PROTOCOLS = ("crop", "embed", "inpaint", "circular", "subpixel", "translate")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Every protocol option, declared once (`benchmarks.core.options`; the CLI's flags).

    Options a protocol does not use must keep their defaults (`build` refuses them).
    """

    transform: str = option("crop", "Transformation protocol.", choices=PROTOCOLS)
    sweep: str | None = option(
        None,
        "Shape of the shift sweep (default diagonal); shift protocols only (not rescale/rotate).",
        choices=sweeps.SWEEPS,
    )
    max_shift: int = option(4, "Largest shift in pixels (or in shift_step units).", lower=0)
    min_shift: int | None = option(
        None, "Smallest shift (default -max_shift; crop without padding: 0)."
    )
    shift_step: float = option(1.0, "subpixel: pixels per shift unit (e.g. 0.5).", lower=1e-3)
    num_random: int = option(16, "Draws of the 'random' sweep.", lower=2)
    seed: int = option(0, "Seed of per-image random draws (and of training and init).")
    crop_size: int | None = option(
        None, "crop: window size (default: padded image - shift range).", lower=1
    )
    crop_padding: int = option(
        0,
        "crop: zero padding added on every side before cropping (CIFAR: 4); with padding "
        "min_shift defaults to -max_shift.",
        lower=0,
    )
    embed_size: int | None = option(
        None, "embed/inpaint: size the image is downscaled to (default: half the canvas).", lower=1
    )
    canvas_size: int | None = option(
        None, "embed/inpaint: canvas size (default: the image size).", lower=1
    )
    fill: str = option(
        "zero",
        "Background: embed takes every value; translate, subpixel, rescale and rotate take "
        "zero or constant.",
        choices=FILLS,
    )
    fill_value: float = option(0.0, "Value of fill=constant, in [0, 1].", lower=0.0, upper=1.0)
    subpixel_method: str = option(
        "fourier", "Interpolation of sub-pixel shifts.", choices=SUBPIXEL_METHODS
    )
    scale_min: float = option(0.9, "rescale: smallest scale.", lower=1e-3)
    scale_max: float = option(1.1, "rescale: largest scale.", lower=1e-3)
    num_scales: int = option(11, "rescale: number of scales.", lower=2)
    angle_max: float = option(
        15.0, "rotate: largest angle in degrees (sweep is -angle_max..angle_max).", lower=0.0
    )
    angle_step: float = option(1.0, "rotate: step in degrees.", lower=1e-3)

    def __post_init__(self):
        try:
            options.check(self)
        except ValueError as e:
            raise ProtocolError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class BoundTransform:
    """`fn(image, param, **kwargs)` with its keyword arguments fixed.

    Equal (and hashing alike) when `fn` and the arguments are: a protocol built again with
    the same options has an equal transform, so it reuses the evaluator's compiled function.
    """

    fn: Callable[..., jax.Array]
    kwargs: tuple[tuple[str, Any], ...]

    def __call__(self, image: jax.Array, param: jax.Array) -> jax.Array:
        return self.fn(image, param, **dict(self.kwargs))


def _bound(fn: Callable[..., jax.Array], **kwargs: Any) -> BoundTransform:
    return BoundTransform(fn, tuple(sorted(kwargs.items())))


def _shift_protocol(
    name, o: ProtocolConfig, fn, output_shape, input_shape, step: float = 1.0
) -> Protocol:
    """A protocol over the integer shift sweep of `o`, scaled by `step` px per unit."""
    try:
        shifts, x, label, lattice = sweeps.shift_sweep(
            o.sweep or "diagonal", o.min_shift, o.max_shift, o.num_random, o.seed
        )
    except ValueError as e:
        raise ProtocolError(str(e)) from None
    if step != 1.0:
        label = label.replace("px", f"x {step:g} px")
    return Protocol(
        name,
        fn,
        (shifts * step).astype(np.float32),
        sweeps.zero_index(shifts),
        x * step,
        label,
        output_shape,
        lattice,
        tuple(input_shape),
        dataclasses.asdict(o),
    )


def _build_crop(o: ProtocolConfig, shape) -> Protocol:
    h, _, c = shape
    padded = h + 2 * o.crop_padding
    span = o.max_shift - o.min_shift
    if o.crop_size is None and o.crop_padding and 2 * o.crop_padding < span:
        # With padding the windows default to the image size: never silently smaller.
        raise ProtocolError(
            f"max_shift={o.max_shift}/min_shift={o.min_shift}: shifts over {span} px need "
            f"{span} px of slack, and crop_padding={o.crop_padding} leaves {2 * o.crop_padding} "
            f"around a {h} px window. Fits: shifts over at most {2 * o.crop_padding} px "
            f"(max_shift <= {o.crop_padding} with the default min_shift), crop_padding >= "
            f"{-(-span // 2)}, or smaller windows given explicitly (crop_size={padded - span})."
        )
    size = o.crop_size or (h if o.crop_padding else padded - span)
    slack = padded - size
    if size < 1 or slack < span:
        raise ProtocolError(
            f"crop_size={size}: an image of {h} px padded by {o.crop_padding} leaves {slack} "
            f"px of slack, less than the shift range {span} "
            "(lower `max_shift` or `crop_size`, raise `crop_padding` or `image_size`)."
        )
    # The window's top-left corner (in the padded image) is base - d: content moves by +d.
    base = o.max_shift + (slack - span) // 2
    fn = _bound(_crop, out_size=(size, size), base=base, padding=o.crop_padding)
    resolved = dataclasses.replace(o, crop_size=size)  # recorded: the window actually used
    return _shift_protocol("crop", resolved, fn, (size, size, c), shape)


def _build_embed(name: str, o: ProtocolConfig, shape) -> Protocol:
    h, _, c = shape
    canvas = o.canvas_size or h
    small = o.embed_size or canvas // 2
    if small > canvas:
        raise ProtocolError(f"embed_size={small} exceeds canvas_size={canvas}.")
    centre = (canvas - small) // 2
    o = dataclasses.replace(o, canvas_size=canvas, embed_size=small)  # recorded as used
    if centre + o.min_shift < 0 or centre + o.max_shift + small > canvas:
        raise ProtocolError(
            f"max_shift={o.max_shift}/min_shift={o.min_shift}: a {small} px image at the "
            f"centre of a {canvas} px canvas can move only {-centre}..{canvas - small - centre} px."
        )
    fn = _bound(
        _embed,
        canvas_size=(canvas, canvas),
        image_size=(small, small),
        base=centre,
        fill="inpaint" if name == "inpaint" else o.fill,
        fill_value=o.fill_value,
    )
    return _shift_protocol(name, o, fn, (canvas, canvas, c), shape)


def _build_circular(o: ProtocolConfig, shape) -> Protocol:
    return _shift_protocol("circular", o, _circular, tuple(shape), shape)


def _build_translate(name: str, o: ProtocolConfig, shape) -> Protocol:
    step = o.shift_step if name == "subpixel" else 1.0
    fn = _bound(
        transforms.subpixel_shift,
        method=o.subpixel_method if name == "subpixel" else "bilinear",
        fill=o.fill_value if o.fill == "constant" else 0.0,
    )
    return _shift_protocol(name, o, fn, tuple(shape), shape, step)


def _scalar_protocol(name, o: ProtocolConfig, shape, x, fn, label, reference) -> Protocol:
    return Protocol(
        name,
        fn,
        x[:, None],
        reference,
        x,
        label,
        tuple(shape),
        (len(x),),
        tuple(shape),
        dataclasses.asdict(o),
    )


def _build_rescale(o: ProtocolConfig, shape) -> Protocol:
    if o.scale_max <= o.scale_min:
        raise ProtocolError(f"scale_max={o.scale_max} must exceed scale_min={o.scale_min}.")
    x = np.linspace(o.scale_min, o.scale_max, o.num_scales, dtype=np.float32)
    fn = _bound(_rescale, fill_value=o.fill_value if o.fill == "constant" else 0.0)
    return _scalar_protocol("rescale", o, shape, x, fn, "scale", int(np.argmin(np.abs(x - 1))))


def _build_rotate(o: ProtocolConfig, shape) -> Protocol:
    n = int(np.floor(o.angle_max / o.angle_step + 1e-6))
    if n < 1:
        raise ProtocolError(
            f"angle_max={o.angle_max} < angle_step={o.angle_step}: the sweep has one angle."
        )
    x = (np.arange(-n, n + 1) * o.angle_step).astype(np.float32)
    fn = _bound(_rotate, fill_value=o.fill_value if o.fill == "constant" else 0.0)
    return _scalar_protocol("rotate", o, shape, x, fn, "angle (deg)", n)


_BUILDERS: dict[str, Callable[[ProtocolConfig, tuple[int, int, int]], Protocol]] = {
    "crop": _build_crop,
    "embed": functools.partial(_build_embed, "embed"),
    "inpaint": functools.partial(_build_embed, "inpaint"),
    "circular": _build_circular,
    "subpixel": functools.partial(_build_translate, "subpixel"),
    "translate": functools.partial(_build_translate, "translate"),
    "rescale": _build_rescale,
    "rotate": _build_rotate,
}

# Options that only some protocols use: setting one for another protocol is an error.
_ONLY_FOR = {
    "sweep": SHIFT_PROTOCOLS,
    "crop_size": ("crop",),
    "crop_padding": ("crop",),
    "embed_size": ("embed", "inpaint"),
    "canvas_size": ("embed", "inpaint"),
    "subpixel_method": ("subpixel",),
    "shift_step": ("subpixel",),
}


def _check_options(o: ProtocolConfig) -> None:
    """Options that do not apply to protocol `o.transform`."""
    defaults = ProtocolConfig()
    name = o.transform
    for field, names in _ONLY_FOR.items():
        if name not in names and getattr(o, field) != getattr(defaults, field):
            raise ProtocolError(
                f"{field}={getattr(o, field)!r} applies to transform={' / '.join(names)} only, "
                f"not {name}."
            )
    if o.fill in ("mean", "inpaint") and name != "embed":
        raise ProtocolError(
            f"fill={o.fill!r} applies to transform=embed only; "
            f"transform={name} fills with 'zero' or 'constant'."
        )


def from_config(config: ProtocolConfig, image_shape: tuple[int, ...]) -> Protocol:
    """Builds the protocol `config.transform` for square images of `image_shape` = (H, W, C).

    Args:
      config: a `ProtocolConfig`; the options its protocol does not use keep their defaults.
      image_shape: (H, W, C) of the input images.

    Returns:
      A `Protocol`.

    Raises:
      ProtocolError: options that do not fit the images or the protocol (names the option).
    """
    _check_options(config)
    if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
        raise ProtocolError(
            f"image_shape={tuple(image_shape)}: protocols take square images (H, H, C); "
            "resize them (`image_size`)."
        )
    o = config
    if o.min_shift is None:
        default_min = 0 if o.transform == "crop" and not o.crop_padding else -o.max_shift
        o = dataclasses.replace(o, min_shift=default_min)
    return _BUILDERS[o.transform](o, tuple(int(d) for d in image_shape))


def build(name: str, image_shape: tuple[int, ...], **options: Any) -> Protocol:
    """`from_config(ProtocolConfig(transform=name, **options), image_shape)`.

    Args:
      name: one of PROTOCOLS.
      image_shape: (H, W, C) of the input images.
      **options: fields of `ProtocolConfig` (each documented there):
        sweep: shape of shift sweeps (SWEEPS; default 'diagonal'); shift protocols only.
        max_shift, min_shift: shift range in sweep units (min defaults to -max_shift, and to 0
          for crop without padding).
        shift_step: pixels per sweep unit (subpixel only; the others are integer pixels).
        num_random, seed: draws of the 'random' sweep.
        crop_size: crop window (default: padded image - (max_shift - min_shift)).
        crop_padding: zero padding added on every side before cropping (e.g. CIFAR's 4).
        embed_size, canvas_size: embed/inpaint image and canvas sizes (defaults H // 2, H).
        fill, fill_value: background of embed, translate, subpixel, rescale and rotate.
        subpixel_method: interpolation of 'subpixel'.
        scale_min, scale_max, num_scales: rescale sweep (linear in scale).
        angle_max, angle_step: rotate sweep, -angle_max..angle_max degrees.

    Raises:
      ProtocolError: an unknown option, or options that do not fit (names the option).
    """
    known = {f.name for f in dataclasses.fields(ProtocolConfig)} - {"transform"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ProtocolError(f"unknown protocol option(s) {unknown}; known: {sorted(known)}.")
    return from_config(ProtocolConfig(transform=name, **options), image_shape)


def custom(
    transform: Callable[[jax.Array, jax.Array], jax.Array],
    params: ArrayLike,
    input_shape: tuple[int, int, int],
    *,
    reference_index: int = 0,
    lattice: tuple[int, ...] | None | str = "sequence",
    name: str = "custom",
) -> Protocol:
    """A protocol over a sweep of your own.

    Args:
      transform: `transform(image [H, W, C], param [P]) -> [h, w, C]` for one image (a
        module-level function or a `functools.partial` of one: the evaluator keys its
        compiled function on it).
      params: [T, P] sweep parameters, T >= 2.
      input_shape: (H, W, C) of the images it takes.
      reference_index: the untransformed (reference) entry.
      lattice: 'sequence' (ordered: pairs (k, k + 1)), (R, C) for a row-major grid, or None
        for draws without neighbours.
      name: a name for the records.

    Raises:
      ProtocolError: params not [T, P] with T >= 2, a reference outside the sweep, or a
        lattice that does not hold T entries.
    """
    params = np.asarray(params, np.float32)
    if params.ndim != 2 or len(params) < 2:
        raise ProtocolError(f"params must be [T, P] with T >= 2, got shape {params.shape}.")
    t = len(params)
    if not 0 <= reference_index < t:
        raise ProtocolError(f"reference_index={reference_index} is outside the sweep [0, {t}).")
    if lattice == "sequence":
        lattice = (t,)
    if lattice is not None and int(np.prod(lattice)) != t:
        raise ProtocolError(f"lattice={lattice} does not hold the {t} sweep entries.")
    image = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    out = jax.eval_shape(transform, image, jax.ShapeDtypeStruct(params.shape[1:], jnp.float32))
    return Protocol(
        name,
        transform,
        params,
        int(reference_index),
        np.arange(t, dtype=np.float32),
        "sweep index",
        tuple(out.shape),
        lattice,
        tuple(input_shape),
        {"params": params.tolist()},
    )


# Adapters from the sweep's float parameter vector to each transform's arguments.


def _int(param):
    return jnp.round(param).astype(jnp.int32)


def _crop(image, param, *, out_size, base, padding):
    if padding:
        image = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
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


def _rescale(image, param, *, fill_value):
    return transforms.rescale(image, param[0], fill=fill_value)


def _rotate(image, param, *, fill_value):
    return transforms.rotate(image, param[0], fill=fill_value)
