"""The evaluator: any classifier, any batch iterator, one protocol.

    result = Evaluator(apply_fn, protocol, EvalConfig(batch_size=64), variables=v).run(batches)

The protocol (`benchmarks.core.protocols`) carries the transform, its sweep, the reference
entry and the pairs; the evaluator runs one jitted call per batch (`sweep_step.BatchStep`,
shared by every evaluator of the same classifier and transform, so repeated evaluations
compile once) and adds up small sums on the host. The same code runs on one CPU, one GPU, a
TPU slice (batch axis sharded over a `Mesh` of all devices) and a multi-host pod (each host
feeds its slice of every global batch). A run with a `state_path` saves its running sums
(`eval_state`) and resumes after the last saved batch when the run identity is the same.
Definitions of every metric: docs/definitions.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.core import batch_input, eval_state, options, run_identity
from benchmarks.core.options import option
from benchmarks.core.protocols import Protocol
from benchmarks.core.sweep_step import (
    IMAGE_METRICS,
    PER_IMAGE_METRICS,
    StepSettings,
    batch_step,
    call_sizes_for_budget,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MB",
    "IMAGE_METRICS",
    "PER_IMAGE_METRICS",
    "EvalConfig",
    "EvalResult",
    "Evaluator",
    "call_sizes_for_budget",
    "default_mesh",
    "evaluate",
]

BATCH_AXIS = "batch"
DEFAULT_MEMORY_BUDGET_MB = 8  # activations that stay in this CPU's caches (WORKSPACE_NOTES.md)
OUTPUTS = ("logits", "probabilities")
Batches = Iterable[tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Static settings of one evaluation (each declared once: `benchmarks.core.options`).

    Attributes:
      batch_size: global images per batch, a multiple of the number of devices.
      chunk_size: sweep entries per model call; None: chosen with `images_per_call` from
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
      outputs: what `apply_fn` returns: 'logits' (softmax taken here; rows that all look
        like probabilities are refused, since a softmax of probabilities is a wrong number)
        or 'probabilities' (used as they are, renormalised).
      convert_uint8: accept uint8 images in 0..255 (divided by 255); without it they are
        refused, as are float images outside [0, 1].
    """

    batch_size: int = option(64, "Global batch size (divisible by the number of devices).", lower=1)
    chunk_size: int | None = option(
        None, "Sweep entries per model call (default: from memory_budget_mb).", lower=1
    )
    images_per_call: int | None = option(
        None,
        "Images per model call (default: from memory_budget_mb, or the whole batch with "
        "chunk_size); divides batch_size.",
        lower=1,
    )
    memory_budget_mb: int = option(
        DEFAULT_MEMORY_BUDGET_MB,
        "Activation memory of one model call per device (MiB), for the call sizes not given.",
        lower=1,
    )
    flip_distance: int = option(
        1,
        "d of the ImageNet-P flip probability and top-5 distance (pairs d steps apart).",
        lower=1,
    )
    num_pairs: int = option(
        4,
        "Random pairs of sweep entries per image for consistency, and random entries per "
        "image for consistency_vs_reference.",
        lower=1,
    )
    worst_of_k: int = option(10, "Random sweep entries per image for worst-of-k accuracy.", lower=1)
    num_curves: int = dataclasses.field(default=8)
    seed: int = option(0, "Seed of per-image random draws (and of training and init).")
    outputs: str = dataclasses.field(default="logits")
    convert_uint8: bool = dataclasses.field(default=False)

    def __post_init__(self):
        options.check(self)
        if self.num_curves < 0:
            raise ValueError(f"num_curves={self.num_curves} must be >= 0.")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"outputs={self.outputs!r} is not one of: {', '.join(OUTPUTS)}.")


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
      compile_count: how many times the shared batch function was traced, by every evaluator
        of the same classifier and transform (1 after any number of sweeps of one shape).
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


def default_mesh() -> Mesh:
    """A 1-D mesh over every device of every host, axis name 'batch'."""
    return Mesh(np.asarray(jax.devices()), (BATCH_AXIS,))


class Evaluator:
    """Evaluates a classifier under one protocol, one jitted call per batch.

    Args:
      apply_fn: `apply_fn(variables, images [n, h, w, C]) -> logits [n, K]` when `variables`
        is given, else `apply_fn(images) -> logits`. Pass big weights as `variables`, so that
        they are jit arguments, not constants folded into the compiled program.
      protocol: a `benchmarks.core.protocols.Protocol` (its transform, sweep, reference
        entry and pairs).
      config: `EvalConfig` (batch size, call sizes, metric settings).
      variables: optional pytree handed to `apply_fn` (host values: every process of a
        multi-host run passes the same ones).
      mesh: device mesh with a 'batch' axis (default: all devices).
      shift_period: the model's circular shift period (`classifiers.shift_period`): circular
        shifts of the same phase then share one evaluation (`Protocol.distinct_entries`;
        exact only when the model's logits are equal for them).

    Raises:
      ValueError: a batch size that does not split over the devices, an images_per_call
        that does not divide it, a sweep with fewer than 2 entries, or a flip distance
        longer than the sweep.
    """

    def __init__(
        self,
        apply_fn: Callable[..., Any],
        protocol: Protocol,
        config: EvalConfig = EvalConfig(),
        *,
        variables: Any = None,
        mesh: Mesh | None = None,
        shift_period: int | None = None,
    ):
        self.mesh = mesh or default_mesh()
        ndev = self.mesh.devices.size
        n, m = config.batch_size, config.images_per_call
        if n % ndev:
            raise ValueError(
                f"batch_size={n} must be a multiple of the number of devices ({ndev})."
            )
        if m is not None and (n % m or m % ndev):
            raise ValueError(
                f"images_per_call={m} must divide batch_size={n} and be a multiple of the "
                f"number of devices ({ndev})."
            )
        if len(protocol.params) < 2:
            raise ValueError(f"protocol {protocol.name!r} has {len(protocol.params)} sweep entry.")
        self.protocol = protocol
        self.config = config
        self.batch_size = n
        self.params, self.sweep_index = protocol.distinct_entries(shift_period)
        self.params = np.asarray(self.params, np.float32)
        self.pairs = protocol.pairs(1)
        self.flip_pairs = protocol.flip_pairs(config.flip_distance)
        # Host values, then replicated: restored (committed, single-device) arrays would
        # otherwise be a cross-host transfer on a multi-process mesh.
        self._variables = jax.device_put(jax.device_get(variables), NamedSharding(self.mesh, P()))
        self._data_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))
        settings = StepSettings(
            config.seed, config.num_pairs, config.worst_of_k, config.num_curves, config.outputs
        )
        self._step = batch_step(
            apply_fn, variables is not None, protocol.transform, self.mesh, settings
        )
        self._weights_digest: str | None = None

    @property
    def compile_count(self) -> int:
        """How many times the shared batch function was traced (1 after any evaluation of
        one input shape, however many sweeps, batches and evaluators)."""
        return self._step.trace_count

    # --- call sizes -----------------------------------------------------------------------------

    def call_sizes(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """(chunk_size, images_per_call) of the model calls for images [H, W, C].

        Sizes the config leaves as None come from its memory budget and the temporary bytes
        per image of one forward pass (XLA's memory analysis of the compiled forward).
        """
        cfg, u = self.config, len(self.params)
        if cfg.chunk_size is not None:
            return min(cfg.chunk_size, u), cfg.images_per_call or self.batch_size
        ndev = self.mesh.devices.size
        chunk, per_call = call_sizes_for_budget(
            self.bytes_per_image(image_shape),
            self.batch_size,
            ndev,
            u,
            cfg.memory_budget_mb << 20,
        )
        return chunk, cfg.images_per_call or per_call

    def bytes_per_image(self, image_shape: tuple[int, ...]) -> float:
        """Temporary bytes per image of the model on one device (0 when XLA does not say)."""
        n = min(8, self.batch_size // self.mesh.devices.size)
        return self._step.bytes_per_image(
            self._variables, tuple(image_shape), self.params.shape[1], n
        )

    def compiled(self, image_shape: tuple[int, ...]) -> jax.stages.Compiled:
        """The compiled batch function `run` calls for images [H, W, C].

        After a `run` of the same shapes this traces and compiles nothing new (jit's caches);
        its `memory_analysis()` gives the bytes XLA assigns to one batch call, `as_text()` its
        optimised HLO.
        """
        u = len(self.params)
        chunk, per_call = self.call_sizes(image_shape)
        n = self.batch_size
        data = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._data_sharding)
        index = self.sweep_index
        return self._step.jitted.lower(
            self._variables,
            data((n, *image_shape), jnp.float32),
            data((n,), jnp.int32),
            data((n,), jnp.bool_),
            data((n,), jnp.int32),
            jax.ShapeDtypeStruct((u + -u % chunk, self.params.shape[1]), jnp.float32),
            None if index is None else jax.ShapeDtypeStruct(index.shape, jnp.int32),
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct(self.pairs.shape, jnp.int32),
            jax.ShapeDtypeStruct(self.flip_pairs.shape, jnp.int32),
            num_params=u,
            chunk_size=chunk,
            images_per_call=per_call,
        ).compile()

    # --- host side ------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The evaluator's part of a run identity: the weights' content, the sweep (and its
        shared entries), its reference entry and pairs, and the config."""
        if self._weights_digest is None:
            self._weights_digest = run_identity.digest_arrays(jax.device_get(self._variables))
        sweep = {"params": self.params, "pairs": self.pairs, "flip_pairs": self.flip_pairs}
        if self.sweep_index is not None:
            sweep["sweep_index"] = self.sweep_index
        return {
            "weights_sha256": self._weights_digest,
            "sweep_sha256": run_identity.digest_arrays(sweep),
            "reference_index": int(self.protocol.reference_index),
            "config": dataclasses.asdict(self.config),
            "batch_size": self.batch_size,
            "shiftbench": run_identity.package_version(),
        }

    def run(
        self,
        batches: Batches | Callable[[int], Batches],
        *,
        state_path: str | None = None,
        identity: Mapping[str, Any] | None = None,
        save_every: int = 20,
        total_batches: int | None = None,
        progress_every: int = 10,
    ) -> EvalResult:
        """Evaluates every batch under the protocol.

        Args:
          batches: this host's (images float32 [n, H, W, C] in [0, 1], labels int32 [n]) per
            global batch, n <= batch_size / process_count (the last may be short: it is
            padded and masked); or a function `start_batch -> iterable` starting at that
            batch, so a resumed run does not read the batches it already evaluated.
          state_path: when given (local or gs://), the running sums are saved there every
            `save_every` batches, at the end and when interrupted (KeyboardInterrupt); a run
            that finds a state of the same identity
            resumes after its last batch, one that finds another identity starts afresh (and
            logs what differs).
          identity: what else determines the numbers (model, data, protocol options): stored
            with the state; the evaluator adds its own part (`Evaluator.identity`).
          save_every: batches between saved states.
          total_batches: number of batches, for the ETA in progress logs (optional).
          progress_every: log progress every this many batches (0: never).

        Returns:
          An `EvalResult`.

        Raises:
          FloatingPointError: the classifier returned NaN or inf logits for some batch (named).
        """
        full_identity = {**(identity or {}), "evaluation": self.identity()}
        state = eval_state.resume(state_path, full_identity)
        start_time = time.perf_counter()
        if callable(batches):
            batches = batches(state.num_batches)
        else:
            batches = itertools.islice(batches, state.num_batches, None)
        try:
            self._loop(batches, state, state_path, save_every, total_batches, progress_every)
        except KeyboardInterrupt:  # keep every batch summed so far: a rerun resumes after it
            if state_path:
                eval_state.save(state_path, state)
            raise
        if state_path:
            eval_state.save(state_path, state)
        return self._finalise(state, time.perf_counter() - start_time)

    def _loop(self, batches, state, state_path, save_every, total_batches, progress_every):
        """Evaluates the batches into `state`, saving it every `save_every` batches."""
        u = len(self.params)  # distinct entries evaluated
        t = len(self.protocol.params)  # sweep entries measured
        reference_index = np.int32(self.protocol.reference_index)
        start = state.num_batches
        pending = None
        staged = {}  # chunk size -> the sweep on the device, staged once per sweep
        start_time = time.perf_counter()
        for b, batch in enumerate(batches, start=start):
            images, lab = batch_input.checked(batch, b, self.protocol, self.config.convert_uint8)
            chunk, per_call = self.call_sizes(images.shape[1:])
            if chunk not in staged:
                # device_put stages data without compiling anything (jnp.asarray compiles a
                # small XLA program per new shape): one compile per sweep.
                pad = np.repeat(self.params[-1:], -u % chunk, axis=0)
                staged[chunk] = jax.device_put(
                    (np.concatenate([self.params, pad]), self.sweep_index, self.pairs)
                    + (self.flip_pairs,)
                )
            sweep_params, sweep_entries, sweep_pairs, sweep_flip_pairs = staged[chunk]
            args = batch_input.global_batch(
                images, lab, b * self.batch_size, self.batch_size, self._data_sharding
            )
            try:
                out = self._step.jitted(
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
            except NameError as e:  # e.g. flax BatchNorm(axis_name=...) in training mode
                if "unbound axis name" not in str(e):
                    raise
                raise ValueError(
                    f"apply_fn reduces over a named axis ({e}): a model in training mode? "
                    "Evaluate it in inference mode, e.g. model.apply(variables, images, "
                    "train=False) (BatchNorm with use_running_average=True)."
                ) from None
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

    def _collect(self, state: eval_state.EvalState, out, b: int, state_path, save_every: int):
        """Adds batch b's sums to `state` (and saves it every `save_every` batches)."""
        out = jax.device_get(out)
        if out["bad_images"]:
            raise FloatingPointError(
                f"the classifier returned NaN/inf logits for {int(out['bad_images'])} "
                f"image(s) of batch {b} (images {b * self.batch_size}.."
                f"{(b + 1) * self.batch_size - 1})."
            )
        if self.config.outputs == "logits" and int(out["prob_like_images"]) == int(out["count"]):
            raise ValueError(
                "the classifier's outputs look like probabilities (every row non-negative and "
                "summing to 1), and the evaluator takes a softmax of them: return logits, or "
                "pass EvalConfig(outputs='probabilities')."
            )
        keep = np.asarray(out["curve_valid"], bool)
        n = self.config.num_curves
        new = np.asarray(out["curves"])[:, keep]
        old = state.curves if state.curves.size else np.zeros((len(new), 0), new.dtype)
        state.curves = np.concatenate([old, new], axis=1)[:, :n]
        labels = np.asarray(out["curve_labels"])[keep]
        state.curve_labels = np.concatenate([state.curve_labels, labels])[:n]
        per_batch = ("bad_images", "prob_like_images")
        summed = {k: v for k, v in out.items() if not k.startswith("curve") and k not in per_batch}
        state.totals = (
            summed if state.totals is None else jax.tree.map(np.add, state.totals, summed)
        )
        state.num_batches = b + 1
        if state_path and (b + 1) % save_every == 0:
            eval_state.save(state_path, state)

    def _finalise(self, state: eval_state.EvalState, wall_time_s: float) -> EvalResult:
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
            pairs=self.pairs,
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


def evaluate(
    apply_fn: Callable[..., Any],
    batches: Batches,
    protocol: Protocol,
    config: EvalConfig = EvalConfig(),
    **kwargs: Any,
) -> EvalResult:
    """`Evaluator(apply_fn, protocol, config, **kwargs).run(batches)`: one call.

    Repeated calls with the same `apply_fn`, protocol transform, mesh and metric settings
    reuse the compiled batch function. For the CLI's speed with a
    `benchmarks.inference.classifiers.Classifier`, pass `apply_fn, variables =
    clf.inference(protocol.output_shape)` (BatchNorm folded, convs on the CPU kernel), and call
    `benchmarks.configure_xla_cpu()` before the first JAX computation.
    """
    return Evaluator(apply_fn, protocol, config, **kwargs).run(batches)
