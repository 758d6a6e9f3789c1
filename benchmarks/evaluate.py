"""The evaluator: any classifier, any batch iterator, one transformation sweep.

For each batch, one jitted call transforms every image by every parameter of the sweep
(vmap over images and over a chunk of parameters, `lax.map` over chunks and, optionally, over
groups of `images_per_call` images, so memory is bounded by both), runs the classifier, and
reduces the probabilities `[T, N, K]` to per-image metrics with `benchmarks.metrics`, then to
masked sums over the batch. The host only adds up small sums, so the same code runs on one
CPU, one GPU, a TPU slice (batch axis sharded over a `Mesh` of all devices) and a multi-host
pod (each host feeds its slice of every global batch).

The jitted function takes the sweep parameters, the batch and the model variables as
arguments: a new batch, a new sweep of the same shape, or new weights never recompile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import pickle
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks import metrics

Array = jax.Array
BATCH_AXIS = "batch"

# Per-image metrics the evaluator reports (means over images, with standard errors).
IMAGE_METRICS = (
    "p_top1_change",
    "mac",
    "mac_label",
    "consistency",
    "consistency_vs_reference",
    "top5_distance",
    "accuracy",
    "accuracy_reference",
    "worst_case_accuracy",
    "worst_of_k_accuracy",
)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Static settings of one evaluation.

    Attributes:
      chunk_size: sweep parameters per model call (memory ~ chunk_size x images_per_call).
      images_per_call: images per model call (default: the whole batch); a divisor of the
        batch size and a multiple of the number of devices. Smaller calls bound memory when
        one parameter of the whole batch does not fit, and can run faster on CPU (activations
        that stay in cache).
      flip_distance: d of the ImageNet-P flip probability / top-5 distance (frames k, k+d);
        `p_top1_change` always uses d = 1 (Azulay).
      num_pairs: seeded random pairs of sweep entries per image for Zhang consistency.
      worst_of_k: number of seeded random sweep entries per image for worst-of-k accuracy.
      num_curves: images whose true-class probability curve is kept (Azulay Fig. 1).
      seed: seed of the per-image draws (consistency pairs, worst-of-k).
    """

    chunk_size: int = 8
    images_per_call: int | None = None
    flip_distance: int = 1
    num_pairs: int = 1
    worst_of_k: int = 10
    num_curves: int = 8
    seed: int = 0

    def __post_init__(self):
        for name in ("chunk_size", "flip_distance", "num_pairs", "worst_of_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.num_curves < 0:
            raise ValueError(f"num_curves={self.num_curves} must be >= 0.")
        if self.images_per_call is not None and self.images_per_call < 1:
            raise ValueError(f"images_per_call={self.images_per_call} must be >= 1.")


@dataclasses.dataclass
class EvalResult:
    """What one evaluation measured.

    Attributes:
      metrics: name -> mean over images (see IMAGE_METRICS).
      stderr: name -> standard error of that mean over images.
      accuracy_per_param: [T] top-1 accuracy at each sweep parameter.
      label_prob_per_param: [T] mean probability of the true class at each parameter.
      flip_rate_per_pair: [T-1] P(top-1 change) between parameters k and k+1.
      curves: [T, num_curves] true-class probability of the first images (Azulay Fig. 1).
      curve_labels: [num_curves] their labels.
      num_images: images evaluated.
      num_batches: batches evaluated.
      compile_count: how many times the batch function was traced (1 after any evaluation).
      wall_time_s: seconds spent in `run`.
    """

    metrics: dict[str, float]
    stderr: dict[str, float]
    accuracy_per_param: np.ndarray
    label_prob_per_param: np.ndarray
    flip_rate_per_pair: np.ndarray
    curves: np.ndarray
    curve_labels: np.ndarray
    num_images: int
    num_batches: int
    compile_count: int
    wall_time_s: float


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
      num_devices and fits; num_devices if none does).
    """
    per_device = batch_size // num_devices
    if bytes_per_image <= 0:  # a model without temporaries: everything fits
        return num_params, batch_size
    fits = int(budget_bytes // bytes_per_image)  # images per device one call may hold
    if fits >= per_device:
        return int(min(fits // per_device, num_params)), batch_size
    divisors = [k for k in range(1, per_device + 1) if per_device % k == 0 and k <= fits]
    return 1, num_devices * max(divisors, default=1)


def _neighbour_changes(probs: Array) -> Array:
    """[T-1, N] float32: whether the top-1 class differs between parameters k and k+1."""
    top = jnp.argmax(probs, axis=-1)
    return (top[1:] != top[:-1]).astype(jnp.float32)


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
      variables: optional pytree passed to `apply_fn`.
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
        self._variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
        self._transform = transform
        self._data_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))
        # Inputs arrive already placed (variables replicated, batch sharded over 'batch');
        # outputs are small sums, replicated so that every host can read them.
        self._step = jax.jit(
            self._batch_sums,
            out_shardings=NamedSharding(self.mesh, P()),
            static_argnames=("num_params",),
        )

    # --- the jitted batch function -------------------------------------------------------------

    def _probs(
        self, variables, images: Array, params: Array, num_params: int
    ) -> tuple[Array, Array]:
        """Softmax probabilities [T, B, K] and a per-image finiteness flag [B]."""
        c = self.config.chunk_size
        chunks = params.reshape(-1, c, params.shape[-1])  # [T_pad / c, c, P]
        per_image = jax.vmap(self._transform, in_axes=(None, 0))  # one image, c params
        m = self.config.images_per_call or images.shape[0]
        groups = images.shape[0] // m

        def logits_of(x):  # [n, c, h, w, C] -> [n, c, K]; B-major: shards stay local
            n = x.shape[0]
            return self._apply(variables, x.reshape(n * c, *x.shape[2:])).reshape(n, c, -1)

        def one_chunk(chunk):
            x = jax.vmap(per_image, in_axes=(0, None))(images, chunk)  # [B, c, h, w, C]
            if groups == 1:
                logits = logits_of(x)
            else:  # group g holds images g, g + groups, ...: each device keeps its own rows
                x = jnp.swapaxes(x.reshape(m, groups, *x.shape[1:]), 0, 1)  # [groups, m, ...]
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
        reference_index,
        *,
        num_params: int,
    ) -> dict[str, Array]:
        """Masked sums over one batch of every metric; `reference_index` is a traced int32."""
        self.compile_count += 1  # runs once per trace
        cfg = self.config
        probs, finite = self._probs(variables, images, params, num_params)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(index)
        pair_keys, k_keys = jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys)
        pairs = metrics.draw_pairs(pair_keys, num_params, cfg.num_pairs)  # [B, p, 2]
        draws = metrics.draw_indices(k_keys, num_params, (cfg.worst_of_k,))  # [B, k]
        correct = metrics.correct(probs, labels)  # [T, B]
        ref_top1 = jnp.argmax(probs[reference_index], axis=-1)  # [B]
        draws_vs_ref = jnp.stack([draws, jnp.full_like(draws, reference_index)], axis=-1)
        flips = _neighbour_changes(probs)  # [T-1, B]
        per_image = {
            "p_top1_change": metrics.top1_change(probs, 1),
            # The reference index is data (no recompile per sweep), so the class of the
            # untransformed image and the (draw, reference) pairs are formed here.
            "mac": metrics.mean_absolute_change(probs, labels=ref_top1),
            "mac_label": metrics.mean_absolute_change(probs, labels=labels),
            "consistency": metrics.consistency(probs, pairs),
            "consistency_vs_reference": metrics.consistency(probs, draws_vs_ref),
            "accuracy": jnp.mean(correct, axis=0),
            "accuracy_reference": correct[reference_index].astype(jnp.float32),
            "worst_case_accuracy": metrics.worst_case_correct(probs, labels),
            "worst_of_k_accuracy": metrics.worst_of_k_correct(probs, labels, draws),
        }
        if cfg.flip_distance != 1:
            per_image["flip_probability"] = metrics.top1_change(probs, cfg.flip_distance)
        if probs.shape[-1] > 5:
            per_image["top5_distance"] = metrics.top5_distance(probs, cfg.flip_distance)
        w = valid.astype(jnp.float32)
        curves = metrics.label_prob_curve(probs, labels)  # [T, B]
        n = min(cfg.num_curves, images.shape[0])
        return {
            "count": jnp.sum(w),
            "sum": {k: jnp.sum(v * w) for k, v in per_image.items()},
            "sum_sq": {k: jnp.sum(v * v * w) for k, v in per_image.items()},
            "correct_per_param": jnp.sum(correct * w, axis=1),
            "label_prob_per_param": jnp.sum(curves * w, axis=1),
            "flips_per_pair": jnp.sum(flips * w, axis=1),
            "curves": curves[:, :n],
            "curve_labels": labels[:n],
            "curve_valid": valid[:n],
            "bad_images": jnp.sum((~finite) & valid),
        }

    def compiled(self, image_shape: tuple[int, ...], params: np.ndarray) -> jax.stages.Compiled:
        """The compiled batch function `run` calls for images [H, W, C] under the sweep `params`.

        After a `run` of the same shapes this traces and compiles nothing new (jit's caches);
        its `memory_analysis()` gives the bytes XLA assigns to one batch call, `as_text()` its
        optimised HLO.
        """
        params = np.asarray(params, np.float32)
        t = params.shape[0]
        n = self.batch_size
        data = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._data_sharding)
        return self._step.lower(
            self._variables,
            data((n, *image_shape), jnp.float32),
            data((n,), jnp.int32),
            data((n,), jnp.bool_),
            data((n,), jnp.int32),
            jax.ShapeDtypeStruct((t + -t % self.config.chunk_size, params.shape[1]), jnp.float32),
            jax.ShapeDtypeStruct((), jnp.int32),
            num_params=t,
        ).compile()

    # --- host side ------------------------------------------------------------------------------

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

    def run(
        self,
        batches: Iterable[tuple[np.ndarray, np.ndarray]]
        | Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]],
        params: np.ndarray,
        reference_index: int = 0,
        *,
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
          state_path: when given, the running sums are saved there every `save_every` batches
            and a run that finds a state of the same evaluation resumes after its last batch.
          save_every: batches between saved states.
          total_batches: number of batches, for the ETA in progress logs (optional).
          progress_every: log progress every this many batches.

        Returns:
          An `EvalResult`.

        Raises:
          FloatingPointError: the classifier returned NaN or inf logits for some batch (named).
        """
        params = np.asarray(params, np.float32)
        if params.ndim != 2 or params.shape[0] < 2:
            raise ValueError(f"params must be [T, P] with T >= 2, got shape {params.shape}.")
        t = params.shape[0]
        if not 0 <= reference_index < t:
            raise ValueError(f"reference_index={reference_index} is outside the sweep [0, {t}).")
        pad = -t % self.config.chunk_size
        # device_put and a numpy scalar stage data without compiling anything (jnp.asarray and
        # jnp.int32 compile a small XLA program per new shape): one compile per sweep.
        padded = jax.device_put(np.concatenate([params, np.repeat(params[-1:], pad, axis=0)]))
        fingerprint = _fingerprint(params, reference_index, self.config, self.batch_size)
        state = _load_state(state_path, fingerprint)
        start = state["num_batches"]
        if start:
            logging.info("resuming after %d evaluated batches from %s", start, state_path)
        if callable(batches):
            batches = batches(start)
        else:
            batches = itertools.islice(batches, start, None)
        start_time = time.perf_counter()
        pending = None

        def collect(out, b):
            out = jax.device_get(out)
            if out["bad_images"]:
                raise FloatingPointError(
                    f"the classifier returned NaN/inf logits for {int(out['bad_images'])} "
                    f"image(s) of batch {b} (images {b * self.batch_size}.."
                    f"{(b + 1) * self.batch_size - 1})."
                )
            keep = np.asarray(out["curve_valid"], bool)
            state["curves"].append(np.asarray(out["curves"])[:, keep])
            state["labels"].append(np.asarray(out["curve_labels"])[keep])
            summed = {k: v for k, v in out.items() if not k.startswith("curve")}
            totals = state["totals"]
            state["totals"] = summed if totals is None else jax.tree.map(np.add, totals, summed)
            state["num_batches"] = b + 1
            if state_path and (b + 1) % save_every == 0:
                _save_state(state_path, state)

        for b, (images, lab) in enumerate(batches, start=start):
            args = self._global_batch(
                np.asarray(images, np.float32), np.asarray(lab), b * self.batch_size
            )
            out = self._step(
                self._variables, *args, padded, np.int32(reference_index), num_params=t
            )
            if pending is not None:  # fetch the previous batch while this one runs
                collect(*pending)
            pending = (out, b)
            done = b + 1 - start
            if progress_every and done % progress_every == 0:
                elapsed = time.perf_counter() - start_time
                eta = (
                    ""
                    if total_batches is None
                    else (f", eta {elapsed / done * (total_batches - b - 1):.0f} s")
                )
                logging.info(
                    "batch %d%s: %.1f images x transforms / s%s",
                    b + 1,
                    "" if total_batches is None else f"/{total_batches}",
                    done * self.batch_size * t / elapsed,
                    eta,
                )
        if pending is not None:
            collect(*pending)
        if state_path:
            _save_state(state_path, state)
        totals = state["totals"]
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
        n_curves = self.config.num_curves
        return EvalResult(
            metrics=means,
            stderr=stderr,
            accuracy_per_param=np.asarray(totals["correct_per_param"]) / count,
            label_prob_per_param=np.asarray(totals["label_prob_per_param"]) / count,
            flip_rate_per_pair=np.asarray(totals["flips_per_pair"]) / count,
            curves=np.concatenate(state["curves"], axis=1)[:, :n_curves],
            curve_labels=np.concatenate(state["labels"])[:n_curves],
            num_images=int(count),
            num_batches=state["num_batches"],
            compile_count=self.compile_count,
            wall_time_s=time.perf_counter() - start_time,
        )


def _fingerprint(
    params: np.ndarray, reference_index: int, config: EvalConfig, batch_size: int
) -> str:
    """Identifies an evaluation, so a saved state is only resumed by the same evaluation."""
    h = hashlib.sha256(params.tobytes())
    h.update(repr((params.shape, reference_index, config, batch_size)).encode())
    return h.hexdigest()


def _load_state(path: str | None, fingerprint: str) -> dict[str, Any]:
    """The saved running sums at `path` when they belong to `fingerprint`, else a fresh state."""
    fresh = {
        "fingerprint": fingerprint,
        "totals": None,
        "curves": [],
        "labels": [],
        "num_batches": 0,
    }
    if not path or not os.path.exists(path):
        return fresh
    with open(path, "rb") as f:
        state = pickle.load(f)
    if state.get("fingerprint") != fingerprint:
        logging.warning("%s belongs to another evaluation; starting afresh.", path)
        return fresh
    return state


def _save_state(path: str, state: dict[str, Any]) -> None:
    """Atomically pickles the running sums (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(state, f)
    os.replace(tmp, path)


def evaluate(
    apply_fn: Callable[..., Any],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    transform: Callable[[Array, Array], Array],
    params: np.ndarray,
    *,
    batch_size: int,
    reference_index: int = 0,
    config: EvalConfig = EvalConfig(),
    variables: Any = None,
    mesh: Mesh | None = None,
) -> EvalResult:
    """One-shot `Evaluator(...).run(...)`; see `Evaluator` for the arguments."""
    return Evaluator(apply_fn, transform, batch_size, config, variables, mesh).run(
        batches, params, reference_index
    )
