"""The photographer's bias: statistics of object boxes, and object placement under a chosen bias.

Boxes follow TFDS' `BBoxFeature`: float `[N, 4]` rows `(ymin, xmin, ymax, xmax)`, normalised by
the image height (y) and width (x), so every coordinate lies in [0, 1] and the image centre is
(0.5, 0.5). Box statistics (centres, extents, sizes, the central fraction, a heat map of centres,
`summarize`) are pure jnp functions: jit- and vmap-able over a leading batch of box sets.

The placement experiment pastes a digit of `digit_size` px into a black `canvas_size` px canvas.
A position is an integer offset (dy, dx) in pixels of the digit's centre from the canvas centre
(`canvas_size - digit_size` must be even, so the centre position is exact); a `Bias` draws
offsets for a training set ('centred' Gaussian with spread sigma px, or 'uniform' over the
canvas), `ring_offsets` gives the test positions at a distance r, and `place` pastes with the
`embed` protocol of `benchmarks.core.protocols`, the same transform the evaluator sweeps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from benchmarks.core import protocols

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BIAS_KINDS = ("centred", "uniform")


# ----------------------------------------------------------------------------- box statistics


def _boxes(boxes: ArrayLike) -> jax.Array:
    boxes = jnp.asarray(boxes, jnp.float32)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must have shape [N, 4] (ymin, xmin, ymax, xmax), got shape {boxes.shape}"
        )
    return boxes


def _points(centres: ArrayLike) -> jax.Array:
    centres = jnp.asarray(centres, jnp.float32)
    if centres.ndim != 2 or centres.shape[-1] != 2:
        raise ValueError(f"centres must have shape [N, 2] (y, x), got shape {centres.shape}")
    return centres


def valid_boxes(boxes: ArrayLike) -> jax.Array:
    """Which boxes are well formed: finite, 0 <= ymin <= ymax <= 1 and 0 <= xmin <= xmax <= 1.

    Args:
      boxes: [N, 4] normalised (ymin, xmin, ymax, xmax).

    Returns:
      bool [N].
    """
    b = _boxes(boxes)
    ordered = (b[:, 0] <= b[:, 2]) & (b[:, 1] <= b[:, 3])
    return jnp.all(jnp.isfinite(b) & (b >= 0) & (b <= 1), axis=1) & ordered


def box_centres(boxes: ArrayLike) -> jax.Array:
    """Box centres ((ymin + ymax) / 2, (xmin + xmax) / 2): [N, 4] -> [N, 2] (y, x), normalised."""
    b = _boxes(boxes)
    return (b[:, :2] + b[:, 2:]) / 2


def box_extents(boxes: ArrayLike) -> jax.Array:
    """Box (height, width) as fractions of the image height and width: [N, 4] -> [N, 2]."""
    b = _boxes(boxes)
    return b[:, 2:] - b[:, :2]


def box_sizes(boxes: ArrayLike) -> jax.Array:
    """sqrt(box area / image area) = sqrt(height * width), normalised: [N, 4] -> [N]."""
    extents = box_extents(boxes)
    return jnp.sqrt(extents[:, 0] * extents[:, 1])


def _side_fraction(side_fraction: float) -> float:
    if (
        isinstance(side_fraction, bool)
        or not isinstance(side_fraction, (int, float, np.integer, np.floating))
        or not 0 < side_fraction <= 1
    ):
        raise ValueError(f"side_fraction must be a number in (0, 1], got {side_fraction!r}")
    return float(side_fraction)


def central_fraction(centres: ArrayLike, side_fraction: float) -> jax.Array:
    """Fraction of centres in the central region: the centred square whose sides are
    `side_fraction` of the image's (|y - 0.5| <= side_fraction / 2 and likewise x, edges
    included), which covers side_fraction**2 of the image area (its expected value for centres
    uniform over the image).

    Args:
      centres: [N, 2] normalised (y, x).
      side_fraction: static, in (0, 1].

    Returns:
      float32 scalar in [0, 1] (NaN for N = 0).
    """
    half = _side_fraction(side_fraction) / 2
    inside = jnp.all(jnp.abs(_points(centres) - 0.5) <= half, axis=1)
    return jnp.mean(inside.astype(jnp.float32))


def centre_heatmap(centres: ArrayLike, bins: int) -> jax.Array:
    """2-D histogram of centres over the unit square, as fractions of the N centres.

    Cell (i, j) covers y in [i / bins, (i + 1) / bins), x in [j / bins, (j + 1) / bins) (the
    last row and column include 1.0); row 0 is the top of the image.

    Args:
      centres: [N, 2] normalised (y, x), in [0, 1].
      bins: static number of cells per side, >= 1.

    Returns:
      float32 [bins, bins], summing to 1 (all NaN for N = 0).
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    c = _points(centres)
    cell = jnp.clip(jnp.floor(c * bins).astype(jnp.int32), 0, bins - 1)
    counts = jnp.zeros((bins, bins), jnp.float32).at[cell[:, 0], cell[:, 1]].add(1.0)
    return counts / c.shape[0]


def summarize(
    boxes: ArrayLike, side_fraction: float = 0.5, quantiles: Sequence[float] = QUANTILES
) -> dict[str, jax.Array]:
    """Position and size statistics of a set of (valid) boxes; see `valid_boxes`.

    Args:
      boxes: [N, 4] normalised (ymin, xmin, ymax, xmax), N >= 1 (N = 0 gives NaNs).
      side_fraction: static side of the central region (`central_fraction`), in (0, 1].
      quantiles: static quantile levels in [0, 1] (numpy's default 'linear' interpolation).

    Returns:
      {'centre_mean': [2] (y, x), 'centre_std': [2] (population std, y, x),
       'centre_distance_mean': [] mean Euclidean distance of centres from (0.5, 0.5),
       'central_fraction': [], 'size_mean': [] mean sqrt(area),
       'size_quantiles', 'height_quantiles', 'width_quantiles': [Q] each}; all float32 and
      in image-normalised units (fractions of the image side).
    """
    levels = tuple(float(q) for q in quantiles)
    if not levels or not all(0 <= q <= 1 for q in levels):
        raise ValueError(f"quantiles must be a non-empty sequence in [0, 1], got {quantiles!r}")
    q = jnp.asarray(levels, jnp.float32)
    centres, extents, sizes = box_centres(boxes), box_extents(boxes), box_sizes(boxes)
    return {
        "centre_mean": jnp.mean(centres, axis=0),
        "centre_std": jnp.std(centres, axis=0),
        "centre_distance_mean": jnp.mean(jnp.linalg.norm(centres - 0.5, axis=1)),
        "central_fraction": central_fraction(centres, side_fraction),
        "size_mean": jnp.mean(sizes),
        "size_quantiles": jnp.quantile(sizes, q),
        "height_quantiles": jnp.quantile(extents[:, 0], q),
        "width_quantiles": jnp.quantile(extents[:, 1], q),
    }


# ----------------------------------------------------------------------------- placement


@dataclasses.dataclass(frozen=True)
class Bias:
    """Where a training set's objects sit.

    Attributes:
      kind: 'centred' (offsets round(N(0, sigma^2)) per axis, clipped to the canvas) or
        'uniform' (every position that keeps the object inside the canvas, equally likely).
      sigma: spread of 'centred' in pixels, >= 0 (0: always at the centre); 0 for 'uniform'.
    """

    kind: str
    sigma: float = 0.0

    def __post_init__(self):
        if self.kind not in BIAS_KINDS:
            raise ValueError(f"kind must be one of {BIAS_KINDS}, got {self.kind!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0) or (
            self.kind == "uniform" and self.sigma
        ):
            raise ValueError(
                f"sigma must be a finite number >= 0 for 'centred' and 0 for 'uniform', "
                f"got {self.sigma!r}"
            )

    @property
    def name(self) -> str:
        """The spec `parse_bias` reads back: 'uniform' or 'centred:sigma=S'."""
        return self.kind if self.kind == "uniform" else f"centred:sigma={self.sigma:g}"


def parse_bias(spec: str) -> Bias:
    """'uniform' or 'centred:sigma=S' (S >= 0, pixels) -> `Bias`; ValueError otherwise."""
    kind, _, arg = spec.partition(":")
    key, _, value = arg.partition("=")
    try:
        if kind == "uniform" and not arg:
            return Bias("uniform")
        if kind == "centred" and key == "sigma":
            return Bias("centred", float(value))
    except ValueError:
        pass
    raise ValueError(f"a bias is 'uniform' or 'centred:sigma=S' with S >= 0 (px), got {spec!r}")


def max_offset(canvas_size: int, digit_size: int) -> int:
    """Largest |dy|, |dx| (px) that keeps a digit_size digit inside the canvas.

    Raises:
      ValueError: unless canvas_size > digit_size >= 1 with an even difference (so that the
        canvas centre is a whole-pixel position).
    """
    if not (1 <= digit_size < canvas_size and (canvas_size - digit_size) % 2 == 0):
        raise ValueError(
            f"canvas_size must exceed digit_size by an even number of pixels, got "
            f"canvas_size={canvas_size!r}, digit_size={digit_size!r}"
        )
    return (canvas_size - digit_size) // 2


def sample_offsets(key: ArrayLike, num: int, bias: Bias, limit: int) -> jax.Array:
    """Offsets of `num` objects drawn from `bias`.

    Args:
      key: a jax PRNG key.
      num: static number of offsets, >= 1.
      bias: the `Bias`.
      limit: static largest |dy|, |dx| in pixels (`max_offset`), >= 0.

    Returns:
      int32 [num, 2], (dy, dx) from the canvas centre, each in [-limit, limit].
    """
    if num < 1 or limit < 0:
        raise ValueError(f"num must be >= 1 and limit >= 0, got num={num!r}, limit={limit!r}")
    if bias.kind == "uniform":
        return jax.random.randint(key, (num, 2), -limit, limit + 1, jnp.int32)
    drawn = jnp.round(bias.sigma * jax.random.normal(key, (num, 2)))
    return jnp.clip(drawn, -limit, limit).astype(jnp.int32)


def ring_offsets(radius: float, num_directions: int) -> np.ndarray:
    """The distinct whole-pixel offsets at distance `radius` in `num_directions` directions.

    Direction j is the angle 2 pi j / num_directions from the +x axis; its offset is
    (round(radius sin), round(radius cos)). Duplicates (all of them at radius 0) are dropped,
    keeping the first.

    Returns:
      int32 [D, 2] (dy, dx), 1 <= D <= num_directions.
    """
    if not (math.isfinite(radius) and radius >= 0) or num_directions < 1:
        raise ValueError(
            f"radius must be >= 0 and num_directions >= 1, got {radius!r}, {num_directions!r}"
        )
    angles = 2 * np.pi * np.arange(num_directions) / num_directions
    offsets = np.round(radius * np.stack([np.sin(angles), np.cos(angles)], axis=1))
    _, first = np.unique(offsets, axis=0, return_index=True)
    return offsets[np.sort(first)].astype(np.int32)


def placement_protocol(
    box_shape: tuple[int, int, int], canvas_size: int, digit_size: int
) -> protocols.Protocol:
    """The `embed` protocol whose transform pastes a [b, b, C] box, resized to digit_size, at
    an offset param (dy, dx) from the canvas centre: `transform(box, offset) -> [canvas,
    canvas, C]`. Its own sweep (horizontal, over the whole range) is not used here.
    """
    limit = max_offset(canvas_size, digit_size)
    return protocols.build(
        "embed",
        box_shape,
        sweep="horizontal",
        min_shift=-limit,
        max_shift=limit,
        canvas_size=canvas_size,
        embed_size=digit_size,
    )


def place(boxes: ArrayLike, offsets: ArrayLike, canvas_size: int, digit_size: int) -> jax.Array:
    """Pastes each digit box, resized to digit_size, into a black canvas at its offset.

    Args:
      boxes: [N, b, b, C] float32 digit boxes.
      offsets: int [N, 2], (dy, dx) of the digit centre from the canvas centre, px, each in
        [-max_offset, max_offset].
      canvas_size, digit_size: static sizes in pixels (see `max_offset`).

    Returns:
      [N, canvas_size, canvas_size, C] float32: the digit of image i occupies rows
      (canvas_size - digit_size) / 2 + dy_i + [0, digit_size) and likewise columns.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    if boxes.ndim != 4 or boxes.shape[1] != boxes.shape[2]:
        raise ValueError(f"boxes must have shape [N, b, b, C], got shape {boxes.shape}")
    offsets = np.asarray(offsets)
    if offsets.shape != (boxes.shape[0], 2):
        raise ValueError(f"offsets must have shape ({boxes.shape[0]}, 2), got {offsets.shape}")
    limit = max_offset(canvas_size, digit_size)
    if np.abs(offsets).max(initial=0) > limit:
        raise ValueError(f"offsets must lie in [-{limit}, {limit}], got {offsets.tolist()}")
    transform = placement_protocol(boxes.shape[1:], canvas_size, digit_size).transform
    return jax.vmap(transform)(boxes, jnp.asarray(offsets, jnp.float32))


def placement_boxes(offsets: ArrayLike, canvas_size: int, digit_size: int) -> jax.Array:
    """The normalised boxes of digits that `place` pasted at `offsets`.

    Args:
      offsets: int [N, 2] (dy, dx) from the canvas centre, px.
      canvas_size, digit_size: sizes in pixels.

    Returns:
      float32 [N, 4] (ymin, xmin, ymax, xmax) in [0, 1].
    """
    base = max_offset(canvas_size, digit_size)
    top_left = jnp.asarray(offsets, jnp.float32) + base
    return jnp.concatenate([top_left, top_left + digit_size], axis=1) / canvas_size
