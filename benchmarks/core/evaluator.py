"""The evaluator: any classifier, any batch iterator, one transformation sweep.

For each batch, one jitted call transforms every image by every parameter of the sweep
(vmap over images and over a chunk of parameters, `lax.map` over chunks and over groups of
`images_per_call` images, so memory is bounded by both), runs the classifier, and reduces the
probabilities `[T, N, K]` to per-image metrics (`PER_IMAGE_METRICS`, definitions in
README.md ("Definitions")), then to masked sums over the batch. The host only adds up small sums, so the
same code runs on one CPU, one GPU, a TPU slice (batch axis sharded over a `Mesh` of all
devices) and a multi-host pod (each host feeds its slice of every global batch).

The jitted function takes the sweep parameters, its pairs, the batch and the model variables
as arguments: a new batch, a new sweep of the same shape, or new weights never recompile.

A run with a `state_path` saves its running sums (npz, with the run's identity) every
`save_every` batches; a later run of the same identity resumes after the last saved batch, a
run of another identity starts afresh and says what differs.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.core import metrics, run_identity
from benchmarks.results import report

Array = jax.Array
BATCH_AXIS = "batch"
DEFAULT_MEMORY_BUDGET_MB = 8  # activations that stay in this CPU's caches (WORKSPACE_NOTES.md)
MIN_IMAGES_PER_CALL = 4  # per device, where the batch has them (`call_sizes_for_budget`)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Static settings of one evaluation.

    Attributes:
      chunk_size: sweep parameters per model call; None: chosen with `images_per_call` from
        `memory_budget_mb` (`call_sizes_for_budget`).
      images_per_call: images per model call; a divisor of the batch size and a multiple of
        the number of devices. None: the whole batch when `chunk_size` is given, else chosen
        from the budget. Smaller calls bound memory and can run faster on CPU (activations
        that stay in cache). Results do not depend on either size.
      memory_budget_mb: activation memory one model call may use on one device (MiB), for
        the sizes left as None.
      flip_distance: d of the ImageNet-P flip probability and top-5 distance (the protocol's
        pairs d steps apart); `p_top1_change` and `mac` always use the pairs one step apart.
      num_pairs: seeded random pairs of sweep entries per image for Zhang's consistency, and
        seeded random entries per image for the consistency against the reference entry.
      worst_of_k: seeded random sweep entries per image for the worst-of-k accuracy.
      num_curves: images whose true-class probability curve is kept (Azulay Fig. 1).
      seed: seed of the per-image draws.
    """

    chunk_size: int | None = None
    images_per_call: int | None = None
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    flip_distance: int = 1
    num_pairs: int = 4
    worst_of_k: int = 10
    num_curves: int = 8
    seed: int = 0

    def __post_init__(self):
        for name in ("flip_distance", "num_pairs", "worst_of_k", "memory_budget_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        for name in ("chunk_size", "images_per_call"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or None).")
        if self.num_curves < 0:
            raise ValueError(f"num_curves={self.num_curves} must be >= 0.")


@dataclasses.dataclass
class EvalResult:
    """What one evaluation measured.

    Attributes:
      metrics: name -> mean over images (the `PER_IMAGE_METRICS` that the sweep supports:
        without neighbour pairs, the neighbour metrics are absent).
      stderr: name -> standard error of that mean over images.
      accuracy_per_param: [T] top-1 accuracy at each sweep parameter.
      label_prob_per_param: [T] mean probability of the true class at each parameter.
      pairs: [E, 2] the sweep-index pairs one step apart.
      flip_rate_per_pair: [E] P(top-1 change) of each of those pairs.
      curves: [T, num_curves] true-class probability of the first images (Azulay Fig. 1).
      curve_labels: [num_curves] their labels.
      num_images: images evaluated.
      num_batches: batches evaluated.
      compile_count: how many times the batch function was traced (1 after any evaluation).
      call_sizes: (chunk_size, images_per_call) the model calls used.
      identity: the run identity (`benchmarks.core.run_identity`) stored with the state.
      wall_time_s: seconds spent in `run`.
    """

    metrics: dict[str, float]
    stderr: dict[str, float]
    accuracy_per_param: np.ndarray
    label_prob_per_param: np.ndarray
    pairs: np.ndarray
    flip_rate_per_pair: np.ndarray
    curves: np.ndarray
    curve_labels: np.ndarray
    num_images: int
    num_batches: int
    compile_count: int
    call_sizes: tuple[int, int]
    identity: dict
    wall_time_s: float


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


def default_mesh() -> Mesh:
    """A 1-D mesh over every device of every host, axis name 'batch'."""
    return Mesh(np.asarray(jax.devices()), (BATCH_AXIS,))


class Evaluator:
    """Evaluates a classifier under a transformation sweep, one jitted call per batch.

    Args:
      apply_fn: `apply_fn(images [n, h, w, C]) -> logits [n, K]`, or, when `variables` is given,
        `apply_fn(variables, images)` (pass big weights as `variables` so they are jit arguments,
        not constants folded into the compiled program).
      transform: `transform(image [H, W, C], param [P]) -> image [h, w, C]` for one image.
      batch_size: global batch size (images per call, divisible by the number of devices).
      config: `EvalConfig`.
      variables: optional pytree passed to `apply_fn` (host values: every process of a
        multi-host run passes the same ones).
      mesh: device mesh with a 'batch' axis (default: all devices).
    """

    def __init__(
        self,
        apply_fn: Callable[..., Any],
        transform: Callable[[Array, Array], Array],
        batch_size: int,
        config: EvalConfig = EvalConfig(),
        variables: Any = None,
        mesh: Mesh | None = None,
    ):
        self.mesh = mesh or default_mesh()
        ndev = self.mesh.devices.size
        if batch_size < 1 or batch_size % ndev:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of the number of "
                f"devices ({ndev})."
            )
        m = config.images_per_call
        if m is not None and (batch_size % m or m % ndev):
            raise ValueError(
                f"images_per_call={m} must divide batch_size={batch_size} and be a multiple "
                f"of the number of devices ({ndev})."
            )
        self.batch_size = batch_size
        self.config = config
        self.compile_count = 0
        self._apply = (lambda v, x: apply_fn(x)) if variables is None else apply_fn
        # Host values, then replicated: restored (committed, single-device) arrays would
        # otherwise be a cross-host transfer on a multi-process mesh.
        self._variables = jax.device_put(jax.device_get(variables), NamedSharding(self.mesh, P()))
        self._transform = transform
        self._data_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))
        self._sizes: dict[tuple, tuple[int, int]] = {}
        self._weights_digest: str | None = None
        # Inputs arrive already placed (variables replicated, batch sharded over 'batch');
        # outputs are small sums, replicated so that every host can read them.
        self._step = jax.jit(
            self._batch_sums,
            out_shardings=NamedSharding(self.mesh, P()),
            static_argnames=("num_params", "chunk_size", "images_per_call"),
        )

    # --- call sizes -----------------------------------------------------------------------------

    def call_sizes(
        self, image_shape: tuple[int, ...], num_params: int, param_size: int = 2
    ) -> tuple[int, int]:
        """(chunk_size, images_per_call) for images [H, W, C] under a sweep [num_params,
        param_size].

        Sizes the config leaves as None come from its memory budget and the temporary bytes
        per image of one forward pass (XLA's memory analysis of the compiled forward).
        """
        cfg = self.config
        if cfg.chunk_size is not None:
            return min(cfg.chunk_size, num_params), cfg.images_per_call or self.batch_size
        key = (tuple(image_shape), num_params, param_size)
        if key not in self._sizes:
            ndev = self.mesh.devices.size
            chunk, per_call = call_sizes_for_budget(
                self._bytes_per_image(image_shape, param_size),
                self.batch_size,
                ndev,
                num_params,
                cfg.memory_budget_mb << 20,
            )
            self._sizes[key] = (chunk, cfg.images_per_call or per_call)
        return self._sizes[key]

    def _bytes_per_image(self, image_shape: tuple[int, ...], param_size: int = 2) -> float:
        """Temporary bytes per image of the model on one device (0 when XLA does not say)."""
        image = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
        param = jax.ShapeDtypeStruct((param_size,), jnp.float32)
        out = jax.eval_shape(self._transform, image, param)
        n = min(8, self.batch_size // self.mesh.devices.size)
        x = jax.ShapeDtypeStruct((n, *out.shape), jnp.float32)
        variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self._variables)
        analysis = jax.jit(self._apply).lower(variables, x).compile().memory_analysis()
        temp = getattr(analysis, "temp_size_in_bytes", 0) if analysis is not None else 0
        return temp / n

    # --- the jitted batch function -------------------------------------------------------------

    def _probs(
        self, variables, images: Array, params: Array, num_params: int, chunk: int, per_call: int
    ) -> tuple[Array, Array]:
        """Softmax probabilities [T, B, K] and a per-image finiteness flag [B]."""
        chunks = params.reshape(-1, chunk, params.shape[-1])  # [T_pad / c, c, P]
        per_image = jax.vmap(self._transform, in_axes=(None, 0))  # one image, c params
        groups = images.shape[0] // per_call

        def logits_of(x):  # [n, c, h, w, C] -> [n, c, K]; B-major: shards stay local
            n = x.shape[0]
            return self._apply(variables, x.reshape(n * chunk, *x.shape[2:])).reshape(n, chunk, -1)

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
            return jnp.swapaxes(jax.nn.softmax(logits, axis=-1), 0, 1), finite

        probs, finite = jax.lax.map(one_chunk, chunks)  # [n, c, B, K], [n, B]
        probs = probs.reshape(-1, *probs.shape[2:])[:num_params]
        return probs, jnp.all(finite, axis=0)

    def _batch_sums(
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

        `params` holds num_params distinct entries (padded to a multiple of chunk_size); with
        `sweep_index` [T] the sweep is params[sweep_index] (entries that share an evaluation),
        else the num_params entries themselves.
        """
        self.compile_count += 1  # runs once per trace
        cfg = self.config
        probs, finite = self._probs(
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
        }

    def compiled(
        self,
        image_shape: tuple[int, ...],
        params: np.ndarray,
        pairs: np.ndarray | None = None,
        flip_pairs: np.ndarray | None = None,
        sweep_index: np.ndarray | None = None,
    ) -> jax.stages.Compiled:
        """The compiled batch function `run` calls for images [H, W, C] under the sweep `params`
        (and `sweep_index`, as `run` takes them).

        After a `run` of the same shapes this traces and compiles nothing new (jit's caches);
        its `memory_analysis()` gives the bytes XLA assigns to one batch call, `as_text()` its
        optimised HLO.
        """
        params = np.asarray(params, np.float32)
        u = params.shape[0]
        t = u if sweep_index is None else len(sweep_index)
        pairs, flip_pairs = self._pairs(t, pairs, flip_pairs)
        chunk, per_call = self.call_sizes(image_shape, u, params.shape[1])
        n = self.batch_size
        data = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._data_sharding)
        return self._step.lower(
            self._variables,
            data((n, *image_shape), jnp.float32),
            data((n,), jnp.int32),
            data((n,), jnp.bool_),
            data((n,), jnp.int32),
            jax.ShapeDtypeStruct((u + -u % chunk, params.shape[1]), jnp.float32),
            None if sweep_index is None else jax.ShapeDtypeStruct((t,), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct(pairs.shape, jnp.int32),
            jax.ShapeDtypeStruct(flip_pairs.shape, jnp.int32),
            num_params=u,
            chunk_size=chunk,
            images_per_call=per_call,
        ).compile()

    # --- host side ------------------------------------------------------------------------------

    def _pairs(self, t: int, pairs, flip_pairs) -> tuple[np.ndarray, np.ndarray]:
        """The neighbour pairs (default: an ordered sweep's (k, k + 1) and (k, k + d))."""
        d = self.config.flip_distance
        if flip_pairs is None and pairs is not None and not len(pairs):
            flip_pairs = np.zeros((0, 2), np.int32)  # a sweep without neighbours
        if flip_pairs is None and d >= t:
            raise ValueError(f"flip_distance={d} must be smaller than the sweep length {t}.")
        out = []
        for name, value, default in (("pairs", pairs, 1), ("flip_pairs", flip_pairs, d)):
            value = metrics.sequence_pairs(t, default) if value is None else np.asarray(value)
            value = value.reshape(-1, 2) if value.size == 0 else value
            if (
                value.ndim != 2
                or value.shape[1] != 2
                or (value.size and not (0 <= value.min() and value.max() < t))
            ):
                raise ValueError(f"{name} must be [E, 2] indices in [0, {t}), got {value.shape}.")
            out.append(value.astype(np.int32))
        return out[0], out[1]

    def _global_batch(self, images: np.ndarray, labels: np.ndarray, start: int):
        """Pads this host's slice to batch_size / process_count and forms global arrays."""
        local = self.batch_size // jax.process_count()
        n = len(labels)
        if n > local:
            raise ValueError(f"a batch of {n} images exceeds the per-host batch size {local}.")
        pad = local - n
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros((pad,), np.int32)]).astype(np.int32)
        valid = np.arange(local) < n
        index = (start + jax.process_index() * local + np.arange(local)).astype(np.int32)
        make = lambda a: jax.make_array_from_process_local_data(self._data_sharding, a)
        return make(images), make(labels), make(valid), make(index)

    def identity(
        self,
        params: np.ndarray,
        reference_index: int,
        pairs: np.ndarray,
        flip_pairs: np.ndarray,
        sweep_index: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """The evaluator's part of a run identity: the weights' content, the sweep (and its
        shared entries), its pairs, config and batch size."""
        if self._weights_digest is None:
            self._weights_digest = run_identity.digest_arrays(jax.device_get(self._variables))
        sweep = {"params": params, "pairs": pairs, "flip_pairs": flip_pairs}
        if sweep_index is not None:
            sweep["sweep_index"] = sweep_index
        return {
            "weights_sha256": self._weights_digest,
            "sweep_sha256": run_identity.digest_arrays(sweep),
            "reference_index": int(reference_index),
            "config": dataclasses.asdict(self.config),
            "batch_size": self.batch_size,
            "shiftbench": run_identity.package_version(),
        }

    def run(
        self,
        batches: Iterable[tuple[np.ndarray, np.ndarray]]
        | Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]],
        params: np.ndarray,
        reference_index: int = 0,
        *,
        pairs: np.ndarray | None = None,
        flip_pairs: np.ndarray | None = None,
        sweep_index: np.ndarray | None = None,
        identity: Mapping[str, Any] | None = None,
        state_path: str | None = None,
        save_every: int = 20,
        total_batches: int | None = None,
        progress_every: int = 10,
    ) -> EvalResult:
        """Evaluates every batch under the sweep `params`.

        Args:
          batches: this host's (images float32 [n, H, W, C], labels int32 [n]) per global
            batch, n <= batch_size / process_count (the last may be short: it is padded and
            masked); or a function `start_batch -> iterable` starting at that batch, so a
            resumed run does not read the batches it already evaluated.
          params: [T, P] sweep parameters, T >= 2.
          reference_index: index of the untransformed (or reference) parameter: the class c of
            MAC and the "vs reference" consistency.
          pairs: [E, 2] sweep-index pairs one step apart (`Protocol.pairs()`); default: the
            sweep is an ordered sequence, pairs (k, k + 1). [0, 2]: no neighbours (random
            draws): the neighbour metrics are then absent.
          flip_pairs: [F, 2] pairs `flip_distance` steps apart (`Protocol.flip_pairs(d)`);
            default (k, k + d), or none when `pairs` is empty.
          sweep_index: int [T] into `params` (`Protocol.distinct_entries`): the sweep is
            params[sweep_index], and each distinct entry of `params` is evaluated once (exact
            only when the model's outputs are equal for the entries that share one). Pairs,
            the reference and every per-parameter output refer to the T sweep entries.
          identity: what else determines the numbers (model, weights digest, data, protocol):
            stored with the state; the evaluator adds its own part (`Evaluator.identity`).
          state_path: when given (local or gs://), the running sums are saved there every
            `save_every` batches and at the end; a run that finds a state of the same identity
            resumes after its last batch, one that finds another identity starts afresh (and
            logs what differs).
          save_every: batches between saved states.
          total_batches: number of batches, for the ETA in progress logs (optional).
          progress_every: log progress every this many batches (0: never).

        Returns:
          An `EvalResult`.

        Raises:
          FloatingPointError: the classifier returned NaN or inf logits for some batch (named).
        """
        params = np.asarray(params, np.float32)
        if sweep_index is not None:
            sweep_index = np.asarray(sweep_index)
            if (
                params.ndim != 2
                or sweep_index.ndim != 1
                or sweep_index.dtype.kind not in "iu"
                or not np.array_equal(np.unique(sweep_index), np.arange(len(params)))
            ):
                raise ValueError(
                    f"sweep_index must be int [T] using every row of params [U, P] (indices "
                    f"0..U-1), got {sweep_index.shape} {sweep_index.dtype} for {params.shape}."
                )
            sweep_index = sweep_index.astype(np.int32)
        elif params.ndim != 2 or params.shape[0] < 2:
            raise ValueError(f"params must be [T, P] with T >= 2, got shape {params.shape}.")
        t = params.shape[0] if sweep_index is None else len(sweep_index)
        if t < 2:
            raise ValueError(f"the sweep must have T >= 2 entries, got {t}.")
        if not 0 <= reference_index < t:
            raise ValueError(f"reference_index={reference_index} is outside the sweep [0, {t}).")
        pairs, flip_pairs = self._pairs(t, pairs, flip_pairs)
        full_identity = {
            **(identity or {}),
            "evaluation": self.identity(params, reference_index, pairs, flip_pairs, sweep_index),
        }
        state = _resume(state_path, full_identity)
        start_time = time.perf_counter()
        if callable(batches):
            batches = batches(state.num_batches)
        else:
            batches = itertools.islice(batches, state.num_batches, None)
        sweep = (params, sweep_index, np.int32(reference_index), pairs, flip_pairs)
        self._loop(batches, sweep, state, state_path, save_every, total_batches, progress_every)
        if state_path:
            _save_state(state_path, state)
        return self._finalise(state, pairs, time.perf_counter() - start_time)

    def _loop(self, batches, sweep, state, state_path, save_every, total_batches, progress_every):
        """Evaluates the batches into `state`, saving it every `save_every` batches."""
        params, sweep_index, reference_index, pairs, flip_pairs = sweep
        u = params.shape[0]  # distinct entries evaluated
        t = u if sweep_index is None else len(sweep_index)  # sweep entries measured
        start = state.num_batches
        pending = None
        staged = {}  # chunk size -> the sweep on the device, staged once per sweep
        start_time = time.perf_counter()
        for b, (images, lab) in enumerate(batches, start=start):
            images = np.asarray(images, np.float32)
            chunk, per_call = self.call_sizes(images.shape[1:], u, params.shape[1])
            if chunk not in staged:
                # device_put stages data without compiling anything (jnp.asarray compiles a
                # small XLA program per new shape): one compile per sweep.
                padded = np.concatenate([params, np.repeat(params[-1:], -u % chunk, axis=0)])
                staged[chunk] = jax.device_put((padded, sweep_index, pairs, flip_pairs))
            sweep_params, sweep_entries, sweep_pairs, sweep_flip_pairs = staged[chunk]
            args = self._global_batch(images, np.asarray(lab), b * self.batch_size)
            out = self._step(
                self._variables,
                *args,
                sweep_params,
                sweep_entries,
                reference_index,
                sweep_pairs,
                sweep_flip_pairs,
                num_params=u,
                chunk_size=chunk,
                images_per_call=per_call,
            )
            state.call_sizes = (chunk, per_call)
            if pending is not None:  # fetch the previous batch while this one runs
                self._collect(state, *pending, state_path, save_every)
            pending = (out, b)
            done = b + 1 - start
            if progress_every and done % progress_every == 0:
                elapsed = time.perf_counter() - start_time
                eta = (
                    ""
                    if total_batches is None
                    else f", eta {elapsed / done * (total_batches - b - 1):.0f} s"
                )
                logging.info(
                    "batch %d%s: %.1f images x transforms / s%s",
                    b + 1,
                    "" if total_batches is None else f"/{total_batches}",
                    done * self.batch_size * t / elapsed,
                    eta,
                )
        if pending is not None:
            self._collect(state, *pending, state_path, save_every)

    def _collect(self, state: "_State", out, b: int, state_path, save_every: int) -> None:
        """Adds batch b's sums to `state` (and saves it every `save_every` batches)."""
        out = jax.device_get(out)
        if out["bad_images"]:
            raise FloatingPointError(
                f"the classifier returned NaN/inf logits for {int(out['bad_images'])} "
                f"image(s) of batch {b} (images {b * self.batch_size}.."
                f"{(b + 1) * self.batch_size - 1})."
            )
        keep = np.asarray(out["curve_valid"], bool)
        n = self.config.num_curves
        new = np.asarray(out["curves"])[:, keep]
        old = state.curves if state.curves.size else np.zeros((len(new), 0), new.dtype)
        state.curves = np.concatenate([old, new], axis=1)[:, :n]
        labels = np.asarray(out["curve_labels"])[keep]
        state.curve_labels = np.concatenate([state.curve_labels, labels])[:n]
        summed = {k: v for k, v in out.items() if not k.startswith("curve") and k != "bad_images"}
        state.totals = (
            summed if state.totals is None else jax.tree.map(np.add, state.totals, summed)
        )
        state.num_batches = b + 1
        if state_path and (b + 1) % save_every == 0:
            _save_state(state_path, state)

    def _finalise(self, state: "_State", pairs: np.ndarray, wall_time_s: float) -> EvalResult:
        """Means and standard errors over images from the running sums."""
        totals = state.totals
        if totals is None or float(totals["count"]) == 0:
            raise ValueError("batches held no images to evaluate.")
        count = float(totals["count"])
        means = {k: float(v) / count for k, v in totals["sum"].items()}
        stderr = {
            k: float(
                np.sqrt(max(totals["sum_sq"][k] / count - means[k] ** 2, 0.0) / max(count - 1, 1))
            )
            for k in means
        }
        return EvalResult(
            metrics=means,
            stderr=stderr,
            accuracy_per_param=np.asarray(totals["correct_per_param"]) / count,
            label_prob_per_param=np.asarray(totals["label_prob_per_param"]) / count,
            pairs=pairs,
            flip_rate_per_pair=np.asarray(totals["flips_per_pair"]) / count,
            curves=state.curves,
            curve_labels=state.curve_labels,
            num_images=int(count),
            num_batches=state.num_batches,
            compile_count=self.compile_count,
            call_sizes=state.call_sizes,
            identity=state.identity,
            wall_time_s=wall_time_s,
        )


# --- evaluation state: npz with the run identity --------------------------------------------------


@dataclasses.dataclass
class _State:
    """Running sums of an evaluation, with the identity of the run they belong to."""

    identity: dict
    num_batches: int = 0
    totals: dict | None = None
    curves: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    curve_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    call_sizes: tuple[int, int] = (0, 0)


def _state_bytes(state: _State) -> bytes:
    arrays = {
        "identity": np.array(json.dumps(run_identity.jsonable(state.identity))),
        "num_batches": np.array(state.num_batches),
        "curves": state.curves,
        "curve_labels": state.curve_labels,
    }
    for key, value in (state.totals or {}).items():
        if isinstance(value, Mapping):
            arrays.update({f"totals/{key}/{k}": np.asarray(v) for k, v in value.items()})
        else:
            arrays[f"totals/{key}"] = np.asarray(value)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _state_from_bytes(data: bytes) -> _State:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        totals: dict[str, Any] = {}
        for name in f.files:
            if name.startswith("totals/"):
                parts = name.split("/")[1:]
                if len(parts) == 2:
                    totals.setdefault(parts[0], {})[parts[1]] = f[name]
                else:
                    totals[parts[0]] = f[name]
        curves = f["curves"]
        return _State(
            identity=json.loads(str(f["identity"])),
            num_batches=int(f["num_batches"]),
            totals=totals or None,
            curves=curves if curves.size else np.zeros((0, 0), np.float32),
            curve_labels=f["curve_labels"].astype(np.int32),
        )


def _resume(path: str | None, identity: dict) -> _State:
    """The saved state at `path` when it has `identity`, else a fresh one (logged)."""
    identity = run_identity.jsonable(identity)
    fresh = _State(identity=identity)
    data = report.read_bytes_shared(path) if path else None
    if data is None:
        return fresh
    try:
        state = _state_from_bytes(data)
    except (ValueError, KeyError, OSError) as e:
        logging.warning("%s is not an evaluation state (%s); starting afresh.", path, e)
        return fresh
    diff = run_identity.differences(state.identity, identity)
    if diff:
        logging.warning(
            "%s belongs to another run, starting afresh; differs in: %s", path, "; ".join(diff)
        )
        return fresh
    if state.num_batches:
        logging.info("resuming after %d evaluated batches from %s", state.num_batches, path)
    return state


def _save_state(path: str, state: _State) -> None:
    """Atomically writes the running sums as npz (process 0 only: `report.write_bytes`)."""
    report.write_bytes(path, _state_bytes(state))


def evaluate(
    apply_fn: Callable[..., Any],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    protocol,
    *,
    batch_size: int,
    config: EvalConfig = EvalConfig(),
    variables: Any = None,
    mesh: Mesh | None = None,
    shift_period: int | None = None,
) -> EvalResult:
    """Evaluates `apply_fn` on `batches` under a `benchmarks.core.protocols.Protocol`.

    The protocol gives the transform, the sweep, the reference entry and the pairs; call
    sizes come from `config` (by default from its memory budget). With `shift_period` (the
    model's `circular_period(image_shape)`), circular shifts of the same phase share one
    evaluation (`Protocol.distinct_entries`). See `Evaluator`. For the CLI's speed with a
    `benchmarks.inference.classifiers.Classifier`, pass `apply_fn, variables = clf.inference(shape)`
    (BatchNorm folded, convs on the direct CPU kernel), after importing `benchmarks` before the first JAX
    computation (its XLA CPU settings, `benchmarks.runtime.xla_defaults`).
    """
    evaluator = Evaluator(apply_fn, protocol.transform, batch_size, config, variables, mesh)
    params, sweep_index = protocol.distinct_entries(shift_period)
    return evaluator.run(
        batches,
        params,
        protocol.reference_index,
        pairs=protocol.pairs(1),
        flip_pairs=protocol.flip_pairs(config.flip_distance),
        sweep_index=sweep_index,
    )
