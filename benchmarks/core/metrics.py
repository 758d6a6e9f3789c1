"""Invariance metrics as pure JAX functions (definitions: README.md ("Definitions")).

Prediction metrics take class probabilities ``probs [T, N, K]``: T is the sweep of transform
parameters, N the images, K the classes. The neighbour metrics (P(top-1 change), MAC, top-5
distance) compare the sweep entries of ``pairs [E, 2]`` (a, b), the pairs that a protocol
declares one step (or d steps) apart (``benchmarks.core.protocols.Protocol.pairs``); without
``pairs`` the sweep is taken as an ordered sequence and the pairs are (k, k + d). Each returns a per-image value ``[N]``
(float32) so that the evaluator can average over images across batches and mask padding;
nothing mixes images, so the functions work unchanged inside a jitted function whose N axis
is sharded. Static arguments (``d``, ``ref_index``, ``num_pairs``, ...) are Python ints, checked
before tracing; a bad one raises ValueError naming it.

Feature-equivariance metrics compare feature maps ``[N, h, w, c]`` of one layer (see
``shift_feature``).

Argmax and ranking ties go to the lower class index, as in numpy and ``scipy.stats.rankdata(
method='ordinal')``. Index arrays (labels, drawn parameter indices) are data, so their range is
not checked: they must lie in ``[0, K)`` and ``[0, T)``.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

_TOP = 5  # ImageNet-P's top-5 distance compares the first five ranks


# ---------------------------------------------------------------------------------------------
# Argument checks (Python, before tracing)


def _check_int(name: str, value, low: int, high: int) -> int:
    """Return ``value`` as an int if it is a Python/numpy integer in ``[low, high]``."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a static Python int in [{low}, {high}], got {value!r}"
        ) from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value}")
    return value


def _check_probs(probs: ArrayLike) -> jax.Array:
    probs = jnp.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape [T, N, K], got shape {probs.shape}")
    return probs


def _check_per_image(name: str, array: ArrayLike, num_images: int, ndim: int) -> jax.Array:
    """Check that ``array`` has ``ndim`` axes, the first of length ``num_images``."""
    array = jnp.asarray(array)
    if array.ndim != ndim or array.shape[0] != num_images:
        raise ValueError(
            f"{name} must have {ndim} axes with leading axis N={num_images}, "
            f"got shape {array.shape}"
        )
    return array


def sequence_pairs(num_params: int, d: int = 1) -> np.ndarray:
    """The pairs (k, k + d), k = 0..T-d-1, of an ordered sweep of T entries: int32 [T - d, 2]."""
    num_params = _check_int("num_params", num_params, 2, np.iinfo(np.int32).max)
    d = _check_int("d", d, 1, num_params - 1)
    k = np.arange(num_params - d, dtype=np.int32)
    return np.stack([k, k + d], axis=1)


def _sweep_pairs(probs: jax.Array, pairs: ArrayLike | None, d: int) -> jax.Array:
    """``pairs`` checked as int [E >= 1, 2], or (k, k + d) of the ordered sweep when None."""
    if pairs is None:
        d = _check_int("d", d, 1, probs.shape[0] - 1)
        return jnp.asarray(sequence_pairs(probs.shape[0], d))
    pairs = jnp.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] < 1:
        raise ValueError(f"pairs must have shape [E >= 1, 2], got shape {pairs.shape}")
    return pairs.astype(jnp.int32)


def _check_pairs(pairs: ArrayLike, num_images: int) -> jax.Array:
    pairs = _check_per_image("pairs", pairs, num_images, 3)
    if pairs.shape[-1] != 2:
        raise ValueError(f"pairs must have shape [N, num_pairs, 2], got shape {pairs.shape}")
    return pairs


# ---------------------------------------------------------------------------------------------
# Gathers shared by the metrics


def _top1(probs: jax.Array) -> jax.Array:
    """Top-1 class per parameter and image: [T, N] int32."""
    return jnp.argmax(probs, axis=-1).astype(jnp.int32)


def _at_params(values: jax.Array, indices: jax.Array) -> jax.Array:
    """``values [T, N]`` at per-image parameter indices ``[N, ...]`` -> ``[N, ...]``."""
    flat = indices.reshape(indices.shape[0], -1)
    return jnp.take_along_axis(values.T, flat, axis=1).reshape(indices.shape)


def _class_prob(probs: jax.Array, classes: jax.Array) -> jax.Array:
    """Probability of one class per image (``classes [N]``) at every parameter: [T, N]."""
    return jnp.take_along_axis(probs, classes[None, :, None], axis=-1)[..., 0]


def _mean(values: jax.Array, axis: int) -> jax.Array:
    """Float32 mean over ``axis`` (the parameter, pair or draw axis), leaving [N]."""
    return jnp.mean(values.astype(jnp.float32), axis=axis)


# ---------------------------------------------------------------------------------------------
# Prediction stability along the sweep


def top1_change(probs: ArrayLike, d: int = 1, pairs: ArrayLike | None = None) -> jax.Array:
    """Per-image probability that the top-1 class changes between neighbouring sweep entries.

    Azulay & Weiss' P(top-1 change) over the pairs one step apart; ImageNet-P's flip
    probability at difficulty d over the pairs d steps apart (frames k and k+d of a sequence,
    as their code's ``flip_prob``).

    Args:
      probs: class probabilities [T, N, K].
      d: static pair distance of an ordered sweep, 1 <= d < T; used only without ``pairs``.
      pairs: optional [E, 2] int sweep indices (a, b) to compare (may be traced).

    Returns:
      [N] float32: mean over the pairs (a, b) of [argmax_a != argmax_b].
    """
    probs = _check_probs(probs)
    pairs = _sweep_pairs(probs, pairs, d)
    top = _top1(probs)
    return _mean(top[pairs[:, 0]] != top[pairs[:, 1]], axis=0)


def mean_absolute_change(
    probs: ArrayLike,
    ref_index: int = 0,
    labels: ArrayLike | None = None,
    d: int = 1,
    pairs: ArrayLike | None = None,
) -> jax.Array:
    """Per-image mean absolute change (MAC, Azulay & Weiss) of one class' probability.

    The class c is the top-1 class at sweep entry ``ref_index`` (the untransformed image, as in
    their code) or, when ``labels`` is given, the true label.

    Args:
      probs: class probabilities [T, N, K].
      ref_index: static index of the reference (untransformed) entry, 0 <= ref_index < T;
        ignored when ``labels`` is given.
      labels: optional true labels [N] int.
      d: static pair distance of an ordered sweep, 1 <= d < T; used only without ``pairs``.
      pairs: optional [E, 2] int sweep indices (a, b) to compare (may be traced).

    Returns:
      [N] float32: mean over the pairs (a, b) of |f_c(T_a x) - f_c(T_b x)|, in probability
      units.
    """
    probs = _check_probs(probs)
    num_params, num_images, _ = probs.shape
    pairs = _sweep_pairs(probs, pairs, d)
    if labels is None:
        ref_index = _check_int("ref_index", ref_index, 0, num_params - 1)
        classes = _top1(probs)[ref_index]
    else:
        classes = _check_per_image("labels", labels, num_images, 1).astype(jnp.int32)
    curve = _class_prob(probs, classes).astype(jnp.float32)
    return _mean(jnp.abs(curve[pairs[:, 1]] - curve[pairs[:, 0]]), axis=0)


def top5_distance(probs: ArrayLike, d: int = 1, pairs: ArrayLike | None = None) -> jax.Array:
    """Per-image top-5 distance (ImageNet-P T5D) between neighbouring sweep entries.

    As Hendrycks & Dietterich's ``ranking_dist`` (mode 'top5'): with ranks by decreasing
    probability (ties to the lower class index) and sigma_j the 1-based rank at b of the class
    ranked j-th at a, dist = sum_{j=0..4} |j - min(sigma_j - 1, 5)|. For K <= 5 the sum runs
    over the K ranks (every class is in the top 5: the distance then measures reordering only).

    Args:
      probs: class probabilities [T, N, K].
      d: static pair distance of an ordered sweep, 1 <= d < T; used only without ``pairs``.
      pairs: optional [E, 2] int sweep indices (a, b), a the earlier frame (may be traced).

    Returns:
      [N] float32: mean of dist over the pairs; 0 when the top-5 lists agree in order, at
      most 15.
    """
    probs = _check_probs(probs)
    pairs = _sweep_pairs(probs, pairs, d)
    order = jnp.argsort(probs, axis=-1, descending=True)  # classes, best first; stable
    rank = jnp.argsort(order, axis=-1)  # 0-based rank of each class
    top = min(_TOP, probs.shape[-1])
    later_rank = jnp.take_along_axis(rank[pairs[:, 1]], order[pairs[:, 0], :, :top], axis=-1)
    dist = jnp.abs(jnp.arange(top) - jnp.minimum(later_rank, _TOP)).sum(axis=-1)
    return _mean(dist, axis=0)


# ---------------------------------------------------------------------------------------------
# Consistency under seeded random draws


def draw_indices(keys: ArrayLike, num_params: int, shape: tuple[int, ...]) -> jax.Array:
    """Independent uniform sweep indices per image, each from that image's own key.

    Derive ``keys`` as ``jax.random.fold_in(seed_key, global_image_index)`` so that an image's
    draws do not depend on how images are batched or sharded.

    Args:
      keys: one PRNG key per image: [N] typed keys or [N, 2] uint32 raw keys.
      num_params: static sweep length T >= 1; draws are uniform on [0, T).
      shape: static per-image draw shape, e.g. ``(k,)``.

    Returns:
      [N, *shape] int32 indices.
    """
    num_params = _check_int("num_params", num_params, 1, np.iinfo(np.int32).max)
    shape = tuple(_check_int("shape", n, 1, np.iinfo(np.int32).max) for n in shape)

    def draw(key):
        return jax.random.randint(key, shape, 0, num_params, dtype=jnp.int32)

    return jax.vmap(draw)(keys)


def draw_pairs(keys: ArrayLike, num_params: int, num_pairs: int) -> jax.Array:
    """Per-image independent pairs (a, b) of sweep indices for ``consistency``.

    a and b are drawn independently (so a == b with probability 1/T), as in Zhang's
    two-shift consistency, but per image rather than per batch.

    Args:
      keys: one PRNG key per image ([N] typed or [N, 2] raw); see ``draw_indices``.
      num_params: static sweep length T >= 1.
      num_pairs: static number of pairs per image >= 1.

    Returns:
      [N, num_pairs, 2] int32 indices in [0, T).
    """
    num_pairs = _check_int("num_pairs", num_pairs, 1, np.iinfo(np.int32).max)
    return draw_indices(keys, num_params, (num_pairs, 2))


def consistency(probs: ArrayLike, pairs: ArrayLike) -> jax.Array:
    """Per-image consistency (Zhang): top-1 agreement between two drawn sweep entries.

    Args:
      probs: class probabilities [T, N, K].
      pairs: [N, P, 2] int indices in [0, T), e.g. from ``draw_pairs``.

    Returns:
      [N] float32: mean over the image's P pairs of [argmax at a == argmax at b].
    """
    probs = _check_probs(probs)
    pairs = _check_pairs(pairs, probs.shape[1])
    top = _at_params(_top1(probs), pairs)
    return _mean(top[..., 0] == top[..., 1], axis=1)


def consistency_vs_reference(probs: ArrayLike, indices: ArrayLike, ref_index: int = 0) -> jax.Array:
    """Per-image consistency against the reference (unshifted) entry, AFC's form.

    Args:
      probs: class probabilities [T, N, K].
      indices: [N, m] int indices in [0, T), e.g. from ``draw_indices``.
      ref_index: static index of the reference entry, 0 <= ref_index < T.

    Returns:
      [N] float32: mean over the m draws of [argmax at the draw == argmax at ref_index].
    """
    probs = _check_probs(probs)
    ref_index = _check_int("ref_index", ref_index, 0, probs.shape[0] - 1)
    indices = _check_per_image("indices", indices, probs.shape[1], 2)
    top = _top1(probs)
    return _mean(_at_params(top, indices) == top[ref_index][:, None], axis=1)


# ---------------------------------------------------------------------------------------------
# Accuracy over the sweep


def correct(probs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Whether the top-1 class is the label, per parameter and image.

    Args:
      probs: class probabilities [T, N, K].
      labels: true labels [N] int.

    Returns:
      [T, N] bool; its mean over N is the accuracy per parameter.
    """
    probs = _check_probs(probs)
    labels = _check_per_image("labels", labels, probs.shape[1], 1)
    return _top1(probs) == labels.astype(jnp.int32)


def worst_case_correct(probs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Per image, 1 if correct under every transform of the sweep (grid / adversarial shift).

    Args:
      probs: class probabilities [T, N, K].
      labels: true labels [N] int.

    Returns:
      [N] float32 in {0, 1}; its mean is the worst-case accuracy.
    """
    return jnp.all(correct(probs, labels), axis=0).astype(jnp.float32)


def worst_of_k_correct(probs: ArrayLike, labels: ArrayLike, indices: ArrayLike) -> jax.Array:
    """Per image, 1 if correct under all k seeded random draws (Engstrom's worst-of-k).

    Args:
      probs: class probabilities [T, N, K].
      labels: true labels [N] int.
      indices: [N, k] int indices in [0, T), e.g. from ``draw_indices``.

    Returns:
      [N] float32 in {0, 1}.
    """
    is_correct = correct(probs, labels)
    indices = _check_per_image("indices", indices, is_correct.shape[1], 2)
    return jnp.all(_at_params(is_correct, indices), axis=1).astype(jnp.float32)


def label_prob_curve(probs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Probability of the true class at every parameter (Azulay Fig. 1, Zhang Fig. 1).

    Args:
      probs: class probabilities [T, N, K].
      labels: true labels [N] int.

    Returns:
      [T, N] float32 probabilities.
    """
    probs = _check_probs(probs)
    labels = _check_per_image("labels", labels, probs.shape[1], 1)
    return _class_prob(probs, labels.astype(jnp.int32)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Feature equivariance (per layer)


def shift_feature(
    feat: ArrayLike, shift: tuple[int, int], stride: int, circular: bool
) -> tuple[jax.Array, jax.Array]:
    """Shift a layer's features by the lattice shift matching an input shift.

    An input shift d = (dy, dx) pixels moves a layer of cumulative stride s by d / s. When d is
    not a multiple of s there is no lattice shift; the nearest lower one, floor(d / s) (Python
    ``//``, also for negative d), is used, so the error then also holds the leftover
    sub-lattice shift d - s * floor(d / s).

    The shift follows ``jnp.roll``: content moves towards increasing row / column index, i.e.
    out[i] = feat[i - d / s]. The caller matches the sign of its input transform (a crop at
    offset o moves content by -o).

    Args:
      feat: features Phi(x) [N, h, w, c] of the unshifted input.
      shift: input shift (dy, dx) in input pixels: Python ints, or an int array [2] that may be
        traced (a sweep of shifts under jit / lax.map; no out-of-view check then).
      stride: static cumulative stride s >= 1 of the layer.
      circular: wrap around (circular input shift) if True; otherwise fill the vacated border
        with zeros and mask it out.

    Returns:
      (shifted [N, h, w, c], mask [h, w] bool): the shifted features and the positions that hold
      shifted content (all True when circular). For non-circular shifts the mask only removes
      the vacated lattice border; a caller whose network pads may erode it further.
    """
    feat = jnp.asarray(feat)
    if feat.ndim != 4:
        raise ValueError(f"feat must have shape [N, h, w, c], got shape {feat.shape}")
    if len(shift) != 2:
        raise ValueError(f"shift must be a pair (dy, dx) of ints, got {shift!r}")
    stride = _check_int("stride", stride, 1, np.iinfo(np.int32).max)
    height, width = feat.shape[1:3]
    if isinstance(shift, jax.Array) and not _is_concrete(shift):
        # A traced shift (a sweep of shifts under jit/vmap): same arithmetic, no range check.
        lattice = tuple(jnp.floor_divide(shift[i].astype(jnp.int32), stride) for i in range(2))
    else:
        lattice = tuple(_check_int("shift", int(s), -(2**31), 2**31 - 1) // stride for s in shift)
        if not circular and (abs(lattice[0]) >= height or abs(lattice[1]) >= width):
            raise ValueError(
                f"shift {tuple(int(s) for s in shift)} at stride {stride} moves the "
                f"{height}x{width} features out of view; each |shift // stride| must be "
                "smaller than the feature size"
            )
    shifted = jnp.roll(feat, lattice, axis=(1, 2))
    if circular:
        return shifted, jnp.ones((height, width), dtype=bool)
    rows, cols = (
        (jnp.arange(n) >= q) & (jnp.arange(n) < n + q)
        for n, q in ((height, lattice[0]), (width, lattice[1]))
    )
    mask = rows[:, None] & cols[None, :]
    return jnp.where(mask[None, :, :, None], shifted, 0), mask


def _is_concrete(x: jax.Array) -> bool:
    """Whether x holds values (not a tracer inside jit/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def _check_features(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None):
    """Return a, b as float32 [N, h, w, c] of equal shape and mask as bool [h, w]."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"features must both have shape [N, h, w, c], got {a.shape} and {b.shape}")
    if mask is None:
        mask = jnp.ones(a.shape[1:3], dtype=bool)
    mask = jnp.asarray(mask, dtype=bool)
    if mask.shape != a.shape[1:3]:
        raise ValueError(f"mask must have shape [h, w] = {a.shape[1:3]}, got {mask.shape}")
    return a, b, mask


def _masked_sum_sq(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of squares over pixels inside ``mask [h, w]`` and channels: [N]."""
    return jnp.sum(jnp.where(mask[None, :, :, None], jnp.square(x), 0.0), axis=(1, 2, 3))


def feature_equivariance_error(
    feat_shifted: ArrayLike, feat_ref_shifted: ArrayLike, mask: ArrayLike | None = None
) -> jax.Array:
    """Per-image relative equivariance error ||Phi(T_d x) - T_{d/s} Phi(x)||^2 / ||Phi(x)||^2.

    Both norms are taken over the same positions, those inside ``mask``: the denominator is
    ||T_{d/s} Phi(x)||^2 there, which equals ||Phi(x)||^2 for a circular shift (mask None) and,
    for a non-circular one, is the energy of the content that stays in view.

    Args:
      feat_shifted: Phi(T_d x), features of the shifted input [N, h, w, c].
      feat_ref_shifted: T_{d/s} Phi(x), e.g. from ``shift_feature`` [N, h, w, c].
      mask: optional [h, w] bool, positions to compare (e.g. from ``shift_feature``).

    Returns:
      [N] float32, >= 0 (0 for exact equivariance; 0 also when both maps are zero).
    """
    a, b, mask = _check_features(feat_shifted, feat_ref_shifted, mask)
    error = _masked_sum_sq(a - b, mask)
    return jnp.where(error == 0, 0.0, error / _masked_sum_sq(b, mask))


def equivariance_mse(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Per-image mean squared difference over the pixels inside ``mask`` and all channels.

    Every image has the same number of masked pixels, so the mean of this over images (and
    batches) is the MSE pooled over samples, pixels and channels that ``psnr_from_mse`` takes.

    Args:
      a, b: [N, h, w, c], e.g. Phi(T_d x) and T_{d/s} Phi(x), or output images.
      mask: optional [h, w] bool, positions to compare; must not be empty.

    Returns:
      [N] float32, in squared units of the inputs.
    """
    a, b, mask = _check_features(a, b, mask)
    count = jnp.sum(mask) * a.shape[-1]
    return _masked_sum_sq(a - b, mask) / count


def psnr_from_mse(mse: ArrayLike, max_range: float = 2.0) -> jax.Array:
    """PSNR in dB: 20 log10(max_range) - 10 log10(mse); +inf for mse == 0.

    Args:
      mse: pooled mean squared error (any shape).
      max_range: peak-to-peak range of the compared signal; 2.0 for StyleGAN3's images in
        [-1, 1] (EQ-T: 20 log10(2) - 10 log10(MSE)). Use 1.0 for images in [0, 1].

    Returns:
      PSNR in dB, float32, same shape as ``mse``.
    """
    if not max_range > 0:
        raise ValueError(f"max_range must be > 0, got {max_range}")
    mse = jnp.asarray(mse, jnp.float32)
    return 20 * jnp.log10(jnp.float32(max_range)) - 10 * jnp.log10(mse)


def equivariance_psnr(
    a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None, max_range: float = 2.0
) -> jax.Array:
    """StyleGAN3 EQ-T-style PSNR of ``a`` against ``b``, MSE pooled over images, pixels inside
    ``mask`` and channels. Assumes values in a range of width ``max_range`` ([-1, 1] -> 2.0).

    Args:
      a, b: [N, h, w, c].
      mask: optional [h, w] bool (e.g. the vacated border masked out by ``shift_feature``).
      max_range: peak-to-peak range of the values.

    Returns:
      scalar float32 PSNR in dB; +inf when a == b inside the mask. To pool across batches,
      average ``equivariance_mse`` over images and call ``psnr_from_mse``.
    """
    return psnr_from_mse(jnp.mean(equivariance_mse(a, b, mask)), max_range)
