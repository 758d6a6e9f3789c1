"""The jitted function the evaluator calls once per batch, and the metrics it reduces to.

`BatchStep` holds one jitted function per (classifier, transform, mesh, static settings): it
transforms every image of a batch by every entry of the sweep (vmap over images and over a
chunk of entries, `lax.map` over chunks and over groups of `images_per_call` images, so memory
is bounded by both), runs the classifier, and reduces the probabilities [T, B, K] to masked
sums over the batch of every per-image metric (`PER_IMAGE_METRICS`; definitions in
docs/definitions.md). The sweep, its pairs, the batch and the model variables are arguments,
not constants: a new batch, a new sweep of the same shape or new weights never recompile, and
`batch_step` hands every evaluator of the same classifier and transform the same function, so
repeated evaluations compile once.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.core import metrics

Array = jax.Array
MIN_IMAGES_PER_CALL = 4  # per device, where the batch has them (`call_sizes_for_budget`)
MAX_CACHED_STEPS = 16  # batch functions kept for reuse (least recently used dropped)


@dataclasses.dataclass(frozen=True)
class SweepOutputs:
    """What every per-image metric of one batch sees (inside the jitted batch function).

    Attributes:
      probs: [T, B, K] class probabilities.
      labels: [B] int32 true labels.
      reference_index: traced int32 scalar, the untransformed entry.
      pairs: [E, 2] sweep-index pairs one step apart.
      flip_pairs: [F, 2] pairs `flip_distance` steps apart.
      consistency_pairs: [B, num_pairs, 2] per-image seeded pairs of sweep entries.
      reference_draws: [B, num_pairs] per-image seeded sweep entries.
      worst_draws: [B, worst_of_k] per-image seeded sweep entries.
    """

    probs: Array
    labels: Array
    reference_index: Array
    pairs: Array
    flip_pairs: Array
    consistency_pairs: Array
    reference_draws: Array
    worst_draws: Array

    @property
    def reference_top1(self) -> Array:
        """[B] the top-1 class at the reference entry."""
        return jnp.argmax(self.probs[self.reference_index], axis=-1)

    @property
    def correct(self) -> Array:
        """[T, B] bool, top-1 == label."""
        return metrics.correct(self.probs, self.labels)


def _vs_reference(s: SweepOutputs) -> Array:
    ref = jnp.full_like(s.reference_draws, s.reference_index)
    return metrics.consistency(s.probs, jnp.stack([s.reference_draws, ref], axis=-1))


# name -> (the pairs it needs, or None; per-image value [B]). Definitions: README.md ("Definitions").
PER_IMAGE_METRICS: dict[str, tuple[str | None, Callable[[SweepOutputs], Array]]] = {
    "p_top1_change": ("pairs", lambda s: metrics.top1_change(s.probs, pairs=s.pairs)),
    "mac": (
        "pairs",
        lambda s: metrics.mean_absolute_change(s.probs, labels=s.reference_top1, pairs=s.pairs),
    ),
    "mac_label": (
        "pairs",
        lambda s: metrics.mean_absolute_change(s.probs, labels=s.labels, pairs=s.pairs),
    ),
    "flip_probability": ("flip_pairs", lambda s: metrics.top1_change(s.probs, pairs=s.flip_pairs)),
    "top5_distance": ("flip_pairs", lambda s: metrics.top5_distance(s.probs, pairs=s.flip_pairs)),
    "consistency": (None, lambda s: metrics.consistency(s.probs, s.consistency_pairs)),
    "consistency_vs_reference": (None, _vs_reference),
    "accuracy": (None, lambda s: jnp.mean(s.correct.astype(jnp.float32), axis=0)),
    "accuracy_reference": (None, lambda s: s.correct[s.reference_index].astype(jnp.float32)),
    "worst_case_accuracy": (None, lambda s: metrics.worst_case_correct(s.probs, s.labels)),
    "worst_of_k_accuracy": (
        None,
        lambda s: metrics.worst_of_k_correct(s.probs, s.labels, s.worst_draws),
    ),
}
IMAGE_METRICS = tuple(PER_IMAGE_METRICS)


def call_sizes_for_budget(
    bytes_per_image: float, batch_size: int, num_devices: int, num_params: int, budget_bytes: int
) -> tuple[int, int]:
    """The `EvalConfig` (chunk_size, images_per_call) whose model calls fit `budget_bytes`.

    Args:
      bytes_per_image: the model's temporary bytes per image (e.g. XLA's
        `memory_analysis().temp_size_in_bytes` of a forward pass / its batch size).
      batch_size: global images per batch (a multiple of `num_devices`).
      num_devices: devices the batch is sharded over.
      num_params: sweep length T.
      budget_bytes: activation bytes one call may use on one device.

    Returns:
      If one parameter of the whole batch fits: (the largest chunk in [1, T] with
      chunk * batch_size / num_devices * bytes_per_image <= budget_bytes, batch_size).
      Otherwise (1, the largest images_per_call that divides batch_size, is a multiple of
      num_devices and fits, where at least min(MIN_IMAGES_PER_CALL, batch_size /
      num_devices) images per device count as fitting; num_devices if none does).
    """
    per_device = batch_size // num_devices
    if bytes_per_image <= 0:  # a model without temporaries: everything fits
        return num_params, batch_size
    # Images per device one call may hold; at least MIN_IMAGES_PER_CALL (a call of one big
    # image leaves threads idle: ResNet-50 at 1 image per call ran at 0.8x of 4).
    fits = max(int(budget_bytes // bytes_per_image), min(MIN_IMAGES_PER_CALL, per_device))
    if fits >= per_device:
        return int(min(fits // per_device, num_params)), batch_size
    divisors = [k for k in range(1, per_device + 1) if per_device % k == 0 and k <= fits]
    return 1, num_devices * max(divisors, default=1)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The static settings the traced batch function depends on (from `EvalConfig`)."""

    seed: int
    num_pairs: int
    worst_of_k: int
    num_curves: int
    outputs: str = "logits"  # or "probabilities": the classifier's rows are used as they are


class BatchStep:
    """The jitted batch function of one classifier and transform on one mesh.

    Args:
      apply_fn: `apply_fn(variables, images [n, h, w, C]) -> logits [n, K]`, or
        `apply_fn(images)` when not `takes_variables`.
      takes_variables: whether `apply_fn` takes the variables first.
      transform: `transform(image [H, W, C], param [P]) -> image [h, w, C]`.
      mesh: device mesh with a 'batch' axis.
      settings: `StepSettings`.

    Attributes:
      jitted: the jitted `batch_sums` (static: num_params, chunk_size, images_per_call).
      trace_count: how many times it was traced (one per new shape or static setting).
    """

    def __init__(
        self, apply_fn, takes_variables: bool, transform, mesh: Mesh, settings: StepSettings
    ):
        self.apply_fn = apply_fn
        self._apply = apply_fn if takes_variables else (lambda v, x: apply_fn(x))
        self.transform = transform
        self.settings = settings
        self.trace_count = 0
        self._bytes: dict[tuple, float] = {}
        self.jitted = jax.jit(
            self.batch_sums,
            out_shardings=NamedSharding(mesh, P()),  # small sums every host can read
            static_argnames=("num_params", "chunk_size", "images_per_call"),
        )

    def bytes_per_image(self, variables, image_shape: tuple[int, ...], param_size: int, n: int):
        """Temporary bytes per image of one forward pass of n transformed images (XLA's
        memory analysis of the compiled forward; 0 when XLA does not say). `variables` may
        be shapes (`jax.ShapeDtypeStruct`)."""
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
        key = (tuple(image_shape), param_size, n, str(jax.tree.structure(shapes)))
        key += tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(shapes))
        if key not in self._bytes:
            image = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
            param = jax.ShapeDtypeStruct((param_size,), jnp.float32)
            out = jax.eval_shape(self.transform, image, param)
            x = jax.ShapeDtypeStruct((n, *out.shape), jnp.float32)
            analysis = jax.jit(self._apply).lower(shapes, x).compile().memory_analysis()
            temp = getattr(analysis, "temp_size_in_bytes", 0) if analysis is not None else 0
            self._bytes[key] = temp / n
        return self._bytes[key]

    def _probs(
        self, variables, images: Array, params: Array, num_params: int, chunk: int, per_call: int
    ) -> tuple[Array, Array]:
        """Probabilities [T, B, K] (softmax of logits, or the classifier's probability rows
        renormalised), a per-image finiteness flag [B] and a per-image flag [B]: every row of
        the image looked like probabilities (non-negative, summing to 1)."""
        chunks = params.reshape(-1, chunk, params.shape[-1])  # [T_pad / c, c, P]
        per_image = jax.vmap(self.transform, in_axes=(None, 0))  # one image, c params
        groups = images.shape[0] // per_call

        def logits_of(x):  # [n, c, h, w, C] -> [n, c, K]; B-major: shards stay local
            n = x.shape[0]
            flat = x.reshape(n * chunk, *x.shape[2:])
            return self._apply(variables, flat).reshape(n, chunk, -1)

        def one_chunk(params_chunk):
            x = jax.vmap(per_image, in_axes=(0, None))(images, params_chunk)  # [B, c, h, w, C]
            if groups == 1:
                logits = logits_of(x)
            else:  # group g holds images g, g + groups, ...: each device keeps its own rows
                x = jnp.swapaxes(x.reshape(per_call, groups, *x.shape[1:]), 0, 1)
                logits = jax.lax.map(logits_of, x)  # [groups, m, c, K]
                logits = jnp.swapaxes(logits, 0, 1).reshape(-1, *logits.shape[2:])
            logits = logits.astype(jnp.float32)
            finite = jnp.all(jnp.isfinite(logits), axis=(1, 2))
            sums = jnp.sum(logits, axis=-1)
            prob_like = jnp.all((logits >= 0).all(-1) & (jnp.abs(sums - 1) < 1e-3), axis=1)
            if self.settings.outputs == "probabilities":
                probs = jnp.maximum(logits, 0) / jnp.maximum(sums, 1e-30)[..., None]
            else:
                probs = jax.nn.softmax(logits, axis=-1)
            return jnp.swapaxes(probs, 0, 1), (finite, prob_like)

        probs, (finite, prob_like) = jax.lax.map(one_chunk, chunks)  # [n, c, B, K], [n, B]
        probs = probs.reshape(-1, *probs.shape[2:])[:num_params]
        return probs, jnp.all(finite, axis=0), jnp.all(prob_like, axis=0)

    def batch_sums(
        self,
        variables,
        images,
        labels,
        valid,
        index,
        params,
        sweep_index,
        reference_index,
        pairs,
        flip_pairs,
        *,
        num_params: int,
        chunk_size: int,
        images_per_call: int,
    ) -> dict[str, Any]:
        """Masked sums over one batch of every metric; `reference_index` is a traced int32.

        Args:
          variables: the classifier's variables (replicated).
          images: [B, H, W, C] float32, labels [B] int32, valid [B] bool (padding rows
            False), index [B] int32 global image indices (seeds of the per-image draws).
          params: [U_pad, P] the U = num_params distinct sweep entries, padded to a multiple
            of chunk_size; with sweep_index [T] the sweep is params[sweep_index].
          reference_index, pairs [E, 2], flip_pairs [F, 2]: as `Protocol` gives them.

        Returns:
          {'count', 'sum', 'sum_sq', 'correct_per_param', 'label_prob_per_param',
          'flips_per_pair', 'curves', 'curve_labels', 'curve_valid', 'bad_images'}.
        """
        self.trace_count += 1  # runs once per trace
        cfg = self.settings
        probs, finite, prob_like = self._probs(
            variables, images, params, num_params, chunk_size, images_per_call
        )
        if sweep_index is not None:
            probs = probs[sweep_index]  # [T, B, K]
        num_params = probs.shape[0]
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(index)
        pair_keys, k_keys, ref_keys = jax.vmap(lambda k: jax.random.split(k, 3), out_axes=1)(keys)
        outputs = SweepOutputs(
            probs=probs,
            labels=labels,
            reference_index=reference_index,
            pairs=pairs,
            flip_pairs=flip_pairs,
            consistency_pairs=metrics.draw_pairs(pair_keys, num_params, cfg.num_pairs),
            reference_draws=metrics.draw_indices(ref_keys, num_params, (cfg.num_pairs,)),
            worst_draws=metrics.draw_indices(k_keys, num_params, (cfg.worst_of_k,)),
        )
        available = {"pairs": pairs.shape[0] > 0, "flip_pairs": flip_pairs.shape[0] > 0}
        per_image = {
            name: fn(outputs)
            for name, (needs, fn) in PER_IMAGE_METRICS.items()
            if needs is None or available[needs]
        }
        w = valid.astype(jnp.float32)
        curves = metrics.label_prob_curve(probs, labels)  # [T, B]
        top = jnp.argmax(probs, axis=-1)
        flips = (top[pairs[:, 0]] != top[pairs[:, 1]]).astype(jnp.float32)  # [E, B]
        n = min(cfg.num_curves, images.shape[0])
        return {
            "count": jnp.sum(w),
            "sum": {k: jnp.sum(v * w) for k, v in per_image.items()},
            "sum_sq": {k: jnp.sum(v * v * w) for k, v in per_image.items()},
            "correct_per_param": jnp.sum(outputs.correct * w, axis=1),
            "label_prob_per_param": jnp.sum(curves * w, axis=1),
            "flips_per_pair": jnp.sum(flips * w, axis=1),
            "curves": curves[:, :n],
            "curve_labels": labels[:n],
            "curve_valid": valid[:n],
            "bad_images": jnp.sum((~finite) & valid),
            "prob_like_images": jnp.sum(prob_like & valid),
        }


def _function_key(fn: Callable) -> Hashable:
    """A cache key for `fn` that is equal only for the same function: the function itself
    when it hashes (value-equal protocol transforms, plain functions), else its identity; a
    bound method by its object's identity and its function. The cached `BatchStep` holds `fn`
    (and so its object), so no identity is reused while its entry lives."""
    if inspect.ismethod(fn):
        return ("method", id(fn.__self__), fn.__func__)
    try:
        hash(fn)
    except TypeError:
        return ("id", id(fn))
    return fn


_STEPS: collections.OrderedDict[Hashable, BatchStep] = collections.OrderedDict()


def batch_step(
    apply_fn: Callable[..., Any],
    takes_variables: bool,
    transform: Callable[[Array, Array], Array],
    mesh: Mesh,
    settings: StepSettings,
) -> BatchStep:
    """The shared `BatchStep` of this classifier, transform, mesh and settings.

    Args:
      apply_fn: `apply_fn(variables, images)` when `takes_variables`, else `apply_fn(images)`.
      takes_variables: whether `apply_fn` takes the variables first.
      transform, mesh, settings: as `BatchStep` takes them.

    Returns:
      The same object for the same arguments while it stays among the `MAX_CACHED_STEPS` most
      recently used: its jit cache makes a repeated evaluation compile nothing.
    """
    key = (_function_key(apply_fn), takes_variables, _function_key(transform), mesh, settings)
    step = _STEPS.pop(key, None)
    if step is None:
        step = BatchStep(apply_fn, takes_variables, transform, mesh, settings)
    _STEPS[key] = step
    while len(_STEPS) > MAX_CACHED_STEPS:
        _STEPS.popitem(last=False)
    return step
