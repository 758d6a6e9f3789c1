"""Throughput of the evaluator against a bare forward, a Python loop and a PyTorch eager loop.

    python -m benchmarks.throughput                                   # both protocols, full size
    python -m benchmarks.throughput --protocols=resnet20 --repeats=3 --device_counts=1
    python -m benchmarks.throughput --protocols=resnet20 --batch_size=8 --crop_size=16 \
        --max_shift=2 --repeats=1 --scaling_base=2 --device_counts=1  # a quick smoke run

Six protocols, each on one model with seeded random weights and images (throughput does
not depend on their values):

| protocol | model | images | sweep | batch |
|---|---|---|---|---|
| resnet20 | CIFAR ResNet-20 (models/architectures/small.py) | 40 px -> 32 px crops | 9 x 9 grid of shifts 0..8 | 256 |
| resnet50 | ResNet-50 (models/architectures/resnet.py) | 234 px -> 224 px crops | 9 diagonal shifts 0..8 (Azulay) | 16 |
| resnet20_circular | ResNet-20, circular padding | as resnet20 | as resnet20 | 256 |
| resnet20_full | ResNet-20, `full` (no subsampling, dilated) | as resnet20 | 9 diagonal shifts 0..8 | 64 |
| resnet20_full_circular | ResNet-20, `full`, circular padding | as resnet20 | 9 diagonal shifts 0..8 | 64 |
| efficientnet_lite0 | EfficientNet-Lite0 (models/architectures/efficientnet_lite.py) | as resnet50 | as resnet50 | 16 |

The torch peers use twins with the same dilation and padding (`benchmarks.studies.torch_reference`;
for EfficientNet-Lite0 the reference PyTorch code itself, `efficientnet-lite-pytorch`).

In one process, on the same images and sweep, in alternating rounds (so that the load of a
shared machine hits every variant alike):

  (a) evaluator     `benchmarks.core.evaluator.Evaluator.run`: one jitted call per batch that crops,
                    runs the model and reduces every metric;
  (b) bare_forward  the jitted model alone on already-cropped batches of the same total size;
  (c) python_loop   a Python loop over the sweep calling the jitted crop + model per parameter;
  (d) torch_eager   when torch is installed (and, for EfficientNet-Lite0, the reference code
                    efficientnet-lite-pytorch): the same crops and model in PyTorch eager
                    (`benchmarks.studies.torch_reference`, weights copied, channels_last, inference
                    mode), a loop over the sweep, as the published reference codes evaluate.
  (e) torch_compile (d) with the twin under `torch.compile` (--torch_compile_mode), compiled
                    by its first call before the timed rounds (that call's time is reported
                    as its compile time); skipped with a note where torch or its compiler
                    is missing.

(a), (b) and (c) run the same JAX classifier: with --fast (default) the inference rewrites of
`benchmarks.inference.fastpath` (BatchNorm folded; convolutions with their ReLU and residual on the
direct CPU kernel of `benchmarks.kernels.cpu_conv`, or 1x1 convs as dots where it does not run;
EfficientNet-Lite's own layers are left as they are), under the package's XLA CPU settings (`benchmarks.runtime.xla_defaults`;
SHIFTBENCH_NO_XLA_DEFAULTS=1 measures without them). The evaluator's chunk size and images
per call come from --memory_budget_mb and XLA's temporary bytes per image of the bare forward. torch runs with OMP_WAIT_POLICY=PASSIVE
(--torch_passive_wait): libgomp's spin-waiting workers keep burning the cores after each torch
call, which slows the JAX variants of the same process (by ~8% with libgomp's default policy,
1.8x with ACTIVE, ResNet-20 on 2 idle cores) and halves torch's own throughput when other
processes load the cores.

Reported: images x transforms per second of each (median over rounds) and the GFLOP/s it
means (XLA's FLOP count of the plain model) as a fraction of the machine's measured fp32 peak
(a 2048^3 matmul timed in the same run), the ratios a/b, a/c, a/d, a/e (medians over rounds of
the per-round time ratios), compile counts and compile seconds,
XLA's bytes per batch call, cross-checks of the variants' predictions, how the evaluator's cost
grows with the number of transforms (--scaling_factors x --scaling_base) and with simulated
devices (a child process per entry of --device_counts), and, with --profile, where one
evaluator round spends its time per XLA op. Printed as markdown tables and written to
--output_dir/throughput.json, with the load average at start and end (timings on a shared
machine are noisy: compare ratios of one run).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from benchmarks.cli import flags as sb_flags
from benchmarks.core import evaluator, protocols
from benchmarks.data import datasets
from benchmarks.inference import classifiers
from benchmarks.results import report

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Setup:
    """One throughput protocol: a model and a crop-shift sweep.

    Attributes:
      model: `models.registry` name.
      num_classes: its classes.
      crop_size: side of the crops the model sees (px).
      slack: image side minus crop side (px); shifts run over 0..max_shift <= slack.
      sweep: `protocols.SWEEPS` shape of the shifts.
      max_shift: largest shift (px).
      batch_size: images per batch.
      fields: the model's subsampling switch, as (field, value) pairs.
    """

    model: str
    num_classes: int
    crop_size: int
    slack: int
    sweep: str
    max_shift: int
    batch_size: int
    fields: tuple[tuple[str, str], ...] = ()


_CIRCULAR = (("padding", "circular"),)
_FULL = (("stride_mode", "full"),)
SETUPS = {
    "resnet20": Setup("resnet20", 10, 32, 8, "grid", 8, 256),
    "resnet50": Setup("resnet50", 1000, 224, 10, "diagonal", 8, 16),
    "resnet20_circular": Setup("resnet20", 10, 32, 8, "grid", 8, 256, _CIRCULAR),
    "resnet20_full": Setup("resnet20", 10, 32, 8, "diagonal", 8, 64, _FULL),
    "resnet20_full_circular": Setup("resnet20", 10, 32, 8, "diagonal", 8, 64, _FULL + _CIRCULAR),
    "efficientnet_lite0": Setup("efficientnet_lite0", 1000, 224, 10, "diagonal", 8, 16),
}
VARIANTS = ("evaluator", "bare_forward", "python_loop", "torch_eager", "torch_compile")
TORCH_VARIANTS = ("torch_eager", "torch_compile")
TORCH_COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = (
    COMPILE_EVENT,
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)

flags.DEFINE_list("protocols", list(SETUPS), f"Protocols to measure, of {list(SETUPS)}.")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to measure, of {list(VARIANTS)}.")
flags.DEFINE_integer("repeats", 5, "Alternating timed rounds of every variant.", lower_bound=1)
flags.DEFINE_integer("num_batches", 1, "Batches per timed round.", lower_bound=1)
flags.DEFINE_integer(
    "batch_size", None, "Images per batch (default: the protocol's).", lower_bound=1
)
flags.DEFINE_integer("crop_size", None, "Crop side in px (default: the protocol's).", lower_bound=8)
flags.DEFINE_integer("max_shift", None, "Largest shift (default: the protocol's).", lower_bound=1)
flags.DEFINE_integer(
    "chunk_size", None, "Evaluator chunk size (default: from --memory_budget_mb).", lower_bound=1
)
flags.DEFINE_integer(
    "images_per_call",
    None,
    "Images per evaluator model call (default: from --memory_budget_mb).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "memory_budget_mb",
    evaluator.DEFAULT_MEMORY_BUDGET_MB,
    "Activation bytes one evaluator call may use per device; sets the chunk size and the "
    "images per call.",
    lower_bound=1,
)
flags.DEFINE_bool(
    "fast", True, "Apply benchmarks.inference.fastpath rewrites to the JAX classifier."
)
flags.DEFINE_bool(
    "torch_passive_wait",
    True,
    "OMP_WAIT_POLICY=PASSIVE for torch (unless set): spin-waiting OpenMP workers slow the JAX "
    "variants of the same process, and torch itself when other processes load the cores.",
)
flags.DEFINE_bool("scaling", True, "Measure cost against the number of transforms.")
flags.DEFINE_integer("scaling_base", 2, "Sweep length of the x1 scaling point.", lower_bound=2)
flags.DEFINE_list("scaling_factors", ["1", "4", "16"], "Sweep lengths, in multiples of the base.")
flags.DEFINE_list("device_counts", ["1", "8"], "Simulated CPU device counts to compare.")
flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: torch's).")
flags.DEFINE_enum(
    "torch_compile_mode", "default", list(TORCH_COMPILE_MODES), "torch.compile mode of (e)."
)
flags.DEFINE_bool("profile", False, "Profile one evaluator round per XLA op.")
flags.DEFINE_integer("seed", 0, "Seed of images, labels and weights.")
flags.DEFINE_string("output_dir", "runs/throughput", "Where throughput.json is written.")
sb_flags.define_cluster_flags()


# --- compile accounting ----------------------------------------------------------------------

_EVENTS: list[tuple[str, float]] = []


def _listen(event: str, duration: float, **_: Any) -> None:
    if event in TRACE_EVENTS:
        _EVENTS.append((event, duration))


def _compiles_since(mark: int) -> tuple[int, float]:
    """(backend compiles, seconds of tracing + lowering + compiling) since `_EVENTS[mark]`."""
    events = _EVENTS[mark:]
    return sum(e == COMPILE_EVENT for e, _ in events), sum(d for _, d in events)


def _memory(compiled: jax.stages.Compiled) -> dict[str, int]:
    """XLA's buffer bytes of one call: arguments, outputs, temporaries and their peak sum."""
    m = compiled.memory_analysis()
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
    }
    out["peak_bytes"] = sum(out.values()) - int(m.alias_size_in_bytes)
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured fp32 peak: GFLOP/s of a jitted [n, n] @ [n, n] matmul (2 n^3
    FLOPs), median of `repeats` calls after one warm-up."""
    a = jax.device_put(np.random.default_rng(0).random((n, n), dtype=np.float32))
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(seconds)) / 1e9


# --- the protocol and its data ---------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """What every variant evaluates: a protocol, a classifier, batches of images and labels."""

    name: str
    protocol: protocols.Protocol
    corners: np.ndarray  # [T, 2] top-left (y, x) of each crop window
    classifier: classifiers.Classifier
    logits: Callable[[Any, jax.Array], jax.Array]  # the JAX classifier (a, b, c)
    variables: Any  # its variables
    batches: list[tuple[np.ndarray, np.ndarray]]  # [(images [B, S, S, 3], labels [B])]
    batch_size: int

    @property
    def host_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This process's slice of every batch (the evaluator's input; all of it on 1 host)."""
        return [datasets.local_batches(x, y, self.batch_size)[0] for x, y in self.batches]

    @property
    def work(self) -> int:
        """Images x transforms per round."""
        return len(self.batches) * self.batch_size * len(self.protocol.params)


def crop_corners(params: np.ndarray, max_shift: int, slack: int) -> np.ndarray:
    """[T, 2] top-left corners of the crop windows of shifts `params` [T, 2] (the content moves
    by +shift: the window starts at base - shift, as `benchmarks.core.protocols` crops)."""
    base = max_shift + (slack - max_shift) // 2
    return (base - np.round(params)).astype(np.int64)


def build_workload(name: str) -> Workload:
    """The protocol `name` at the flag-given sizes, with seeded weights, images and labels."""
    setup = SETUPS[name]
    crop = FLAGS.crop_size or setup.crop_size
    max_shift = FLAGS.max_shift or setup.max_shift
    batch_size = FLAGS.batch_size or setup.batch_size
    if max_shift > setup.slack:
        raise sb_flags.FlagError(f"--max_shift={max_shift} exceeds the slack {setup.slack} px.")
    sb_flags.check_batch_size(batch_size)
    side = crop + setup.slack
    protocol = protocols.build(
        "crop",
        (side, side, 3),
        sweep=setup.sweep,
        max_shift=max_shift,
        min_shift=0,
        crop_size=crop,
    )
    corners = crop_corners(protocol.params, max_shift, setup.slack)
    probe = np.random.default_rng(1).random((side, side, 3), dtype=np.float32)
    for p, (y, x) in zip(protocol.params, corners):  # the torch loop crops the same windows
        np.testing.assert_array_equal(
            protocol.transform(probe, p), probe[y : y + crop, x : x + crop]
        )
    model = classifiers.build_model(setup.model, setup.num_classes, **dict(setup.fields))
    classifier = classifiers.Classifier(
        model, classifiers.random_variables(model, (crop, crop, 3), FLAGS.seed), "random (numpy)"
    )
    logits, variables = classifier.inference((crop, crop, 3), FLAGS.fast)
    rng = np.random.default_rng(FLAGS.seed)
    batches = [
        (
            rng.random((batch_size, side, side, 3), dtype=np.float32),
            rng.integers(0, setup.num_classes, batch_size).astype(np.int32),
        )
        for _ in range(FLAGS.num_batches)
    ]
    return Workload(name, protocol, corners, classifier, logits, variables, batches, batch_size)


# --- the variants: each a zero-argument callable that evaluates every batch and blocks --------


def make_evaluator(
    w: Workload, chunk_size: int, images_per_call: int
) -> tuple[evaluator.Evaluator, Callable[[], Any]]:
    """(a): the evaluator and a runner returning its accuracy per parameter [T]."""
    config = evaluator.EvalConfig(
        batch_size=w.batch_size, chunk_size=chunk_size, images_per_call=images_per_call
    )
    ev = evaluator.Evaluator(w.logits, w.protocol, config, variables=w.variables)
    batches = w.host_batches  # sliced once, outside the timed calls

    def run():
        return ev.run(batches, progress_every=0).accuracy_per_param

    return ev, run


def make_bare_forward(
    w: Workload, forward: Callable
) -> tuple[jax.stages.Compiled, Callable[[], Any]]:
    """(b): the jitted model `forward` on pre-cropped batches [B, h, w, C], one call per
    (batch, shift). Returns (the compiled forward, runner)."""
    crop_all = jax.jit(jax.vmap(jax.vmap(w.protocol.transform, (0, None)), (None, 0)))
    params = jax.device_put(w.protocol.params)
    cropped = [list(crop_all(jax.device_put(x), params)) for x, _ in w.batches]  # T x [B, ...]
    variables = jax.device_put(w.variables)

    def run():
        return jax.block_until_ready([forward(variables, x) for xs in cropped for x in xs])

    return forward.lower(variables, cropped[0][0]).compile(), run


def make_python_loop(w: Workload) -> Callable[[], Any]:
    """(c): a Python loop over the sweep; returns top-1 [T, N] (batches concatenated)."""
    step = jax.jit(
        lambda v, images, p: w.logits(v, jax.vmap(w.protocol.transform, (0, None))(images, p))
    )
    images = [jax.device_put(x) for x, _ in w.batches]
    params = [jax.device_put(p) for p in w.protocol.params]
    variables = jax.device_put(w.variables)

    def run():
        out = [[step(variables, x, p) for x in images] for p in params]
        return np.stack([np.concatenate([np.argmax(l, -1) for l in row]) for row in out])

    return run


def make_torch_loop(w: Workload, compile_mode: str | None) -> tuple[Callable[[], Any], Any]:
    """(d), or (e) with `compile_mode`: the torch twin (under `torch.compile(mode=...)` for
    (e)) in a loop over the sweep; returns (runner -> top-1 [T, N], the eager twin)."""
    import torch

    from benchmarks.studies import torch_reference

    if FLAGS.torch_threads:
        torch.set_num_threads(FLAGS.torch_threads)
    twin = torch_reference.from_flax(
        w.classifier.model, w.classifier.variables, w.protocol.output_shape[0]
    )
    twin = twin.to(memory_format=torch.channels_last)
    forward = twin if compile_mode is None else torch.compile(twin, mode=compile_mode)
    images = [
        torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        for x, _ in w.batches
    ]
    h = w.protocol.output_shape[0]

    def run():
        with torch.inference_mode():
            out = [
                [
                    forward(
                        x[:, :, y : y + h, c : c + h].contiguous(memory_format=torch.channels_last)
                    )
                    for x in images
                ]
                for y, c in w.corners
            ]
            return np.stack([np.concatenate([l.argmax(-1).numpy() for l in row]) for row in out])

    return run, twin


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_missing(model: str) -> str | None:
    """Why the torch peers of `model` cannot run (a one-line note), or None."""
    if not _torch_available():
        return "torch is not installed: (d) and (e) skipped"
    if model.startswith("efficientnet") and not importlib.util.find_spec(
        "efficientnet_lite_pytorch"
    ):
        return (
            "efficientnet-lite-pytorch (the reference code) is not installed: (d) and (e) skipped"
        )
    return None


# --- measurements ----------------------------------------------------------------------------


def timed_rounds(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each runner per round; the runners alternate within every round."""
    seconds = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def scaling_transforms(
    ev: evaluator.Evaluator, w: Workload, base: int, factors: list[int]
) -> list[dict[str, Any]]:
    """Evaluator cost for sweeps of base x factor parameters (the protocol's sweep repeated),
    with the call sizes and variables of `ev`."""
    rows = []
    image_shape = w.batches[0][0].shape[1:]
    first = w.host_batches[:1]
    for factor in factors:
        params = np.resize(w.protocol.params, (base * factor, w.protocol.params.shape[1]))
        sweep = evaluator.Evaluator(
            w.logits, w.protocol.with_sweep(params, 0), ev.config, variables=w.variables
        )
        mark = len(_EVENTS)
        sweep.run(first, progress_every=0)  # compile
        compiles, compile_s = _compiles_since(mark)
        start = time.perf_counter()
        sweep.run(first, progress_every=0)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "factor": factor,
                "num_transforms": len(params),
                "seconds_per_batch": seconds,
                "rate": w.batch_size * len(params) / seconds,
                "compiles": compiles,
                "compile_s": compile_s,
                **_memory(sweep.compiled(image_shape)),
            }
        )
    for row in rows:  # seconds per transform relative to the x1 sweep
        row["cost_per_transform_vs_x1"] = (row["seconds_per_batch"] / row["num_transforms"]) / (
            rows[0]["seconds_per_batch"] / rows[0]["num_transforms"]
        )
    return rows


def scaling_devices(name: str, counts: list[int], own: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluator at each simulated device count: this process's figure for its own count,
    a child process (XLA_FLAGS=--xla_force_host_platform_device_count=n) for the others."""
    rows = []
    for n in counts:
        if n == jax.device_count():
            rows.append({"devices": n, **own})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                sys.executable,
                "-m",
                "benchmarks.throughput",
                f"--protocols={name}",
                "--variants=evaluator",
                "--device_counts=",
                "--noscaling",
                f"--output_dir={tmp}",
            ]
            for flag in (
                "repeats",
                "num_batches",
                "batch_size",
                "crop_size",
                "max_shift",
                "chunk_size",
                "images_per_call",
                "memory_budget_mb",
                "fast",
                "seed",
            ):
                value = getattr(FLAGS, flag)
                if value is not None:
                    args.append(f"--{flag}={value}")
            env = dict(
                os.environ,
                JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                f"--xla_force_host_platform_device_count={n}",
            )
            proc = subprocess.run(args, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"the {n}-device run failed:\n{proc.stderr[-3000:]}")
            with open(os.path.join(tmp, "throughput.json")) as f:
                child = json.load(f)["protocols"][name]
        rows.append({"devices": n, **_device_row(child)})
    return rows


def _device_row(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "rate": result["rates"]["evaluator"],
        "chunk_size": result["chunk_size"],
        "images_per_call": result["images_per_call"],
        "compile_count": result["compile"]["evaluator"]["compile_count"],
        "peak_bytes": result["memory"]["evaluator"]["peak_bytes"],
    }


def profile_ops(run: Callable[[], Any], hlo: str, top: int = 15) -> dict[str, Any]:
    """Milliseconds per XLA op of one `run()` (summed over threads), by op and by category.

    Categories from the optimised HLO `hlo`: 'library (YNNPACK) <op>' for library fusions,
    'convolution' / 'dot' for XLA's own (Eigen) kernels, 'loop fusion <op>' for elementwise
    fusions (<op> is the last op named in the fusion's metadata). Eigen convolutions finish on
    Eigen's thread pool after their op event ends, so they are undercounted: compare the op
    total with `wall_ms` x threads.
    """
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        start = time.perf_counter()
        run()
        wall_ms = (time.perf_counter() - start) * 1e3
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(
            glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)[0]
        )
    per_op: collections.Counter = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                if re.fullmatch(r"[a-z_\-]+(\.\d+)?", event.name):  # an HLO instruction
                    per_op[event.name] += event.duration_ns / 1e6
    per_category: collections.Counter = collections.Counter()
    for op, ms in per_op.items():
        per_category[_category(op, hlo)] += ms
    total = sum(per_op.values())
    return {
        "wall_ms": wall_ms,
        "total_op_ms": total,
        "by_category": [
            {"category": c, "ms": ms, "share": ms / total} for c, ms in per_category.most_common()
        ],
        "top_ops": [
            {"op": op, "category": _category(op, hlo), "ms": ms, "share": ms / total}
            for op, ms in per_op.most_common(top)
        ],
    }


def _category(op: str, hlo: str) -> str:
    line = re.search(rf"%{re.escape(op)} = .*", hlo)
    if not line:
        return "other"
    line = line.group(0)
    name = re.search(r'op_name="([^"]+)"', line)
    last = name.group(1).split("/")[-1] if name else "?"
    if "__ynn_fusion" in line or "__xnn_fusion" in line:
        return f"library (YNNPACK) {last}"
    if "shiftbench_conv2d" in line:
        return "convolution (cpu_conv kernel)"
    if " convolution(" in line:
        return "convolution"
    if " dot(" in line:
        return "dot"
    if "kind=kLoop" in line or "kind=kInput" in line:
        return f"loop fusion {last}"
    opcode = re.search(r"= \S+ ([\w-]+)\(", line)
    return opcode.group(1) if opcode else "other"


def model_flops_per_image(w: Workload) -> float:
    """XLA's FLOP count of the plain model (its HLO before compiling) per image. Counted on
    the plain model: XLA cannot see inside the fast path's custom calls (`benchmarks.kernels.cpu_conv`)."""
    images = jax.ShapeDtypeStruct((w.batch_size, *w.protocol.output_shape), jnp.float32)
    lowered = jax.jit(w.classifier.logits).lower(w.classifier.variables, images)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / w.batch_size


def measure(name: str) -> dict[str, Any]:
    """Every measurement of one protocol, as a JSON-able record."""
    w = build_workload(name)
    t = len(w.protocol.params)
    image_shape = w.batches[0][0].shape[1:]
    out: dict[str, Any] = {
        "model": SETUPS[name].model,
        "fields": dict(SETUPS[name].fields),
        "batch_size": w.batch_size,
        "num_transforms": t,
        "num_batches": len(w.batches),
        "input_shape": list(w.protocol.output_shape),
        "image_shape": list(image_shape),
        "fast": FLAGS.fast,
    }
    variants = [v for v in VARIANTS if v in FLAGS.variants]
    note = _torch_missing(SETUPS[name].model)
    if note and any(v in TORCH_VARIANTS for v in variants):
        variants = [v for v in variants if v not in TORCH_VARIANTS]
        out["torch_note"] = note
    # The bare forward's memory per image sets the evaluator's call sizes.
    forward = jax.jit(w.logits)
    mark = len(_EVENTS)
    bare_compiled, bare_run = make_bare_forward(w, forward)
    bare_memory = _memory(bare_compiled)
    bare_compile = _compiles_since(mark)
    out["flops_per_image"] = model_flops_per_image(w)
    per_image = bare_memory["temp_bytes"] / w.batch_size
    chunk, images_per_call = evaluator.call_sizes_for_budget(
        per_image, w.batch_size, jax.device_count(), t, FLAGS.memory_budget_mb << 20
    )
    out["chunk_size"] = chunk = FLAGS.chunk_size or chunk
    out["images_per_call"] = images_per_call = FLAGS.images_per_call or images_per_call
    ev, ev_run = make_evaluator(w, chunk, images_per_call)
    runners = {"evaluator": ev_run, "bare_forward": bare_run}
    if "python_loop" in variants:
        runners["python_loop"] = make_python_loop(w)
    twin = None
    if "torch_eager" in variants:
        runners["torch_eager"], twin = make_torch_loop(w, None)
    if "torch_compile" in variants:
        runners["torch_compile"], twin = make_torch_loop(w, FLAGS.torch_compile_mode)
    runners = {k: v for k, v in runners.items() if k in variants}
    compile_info, results = {}, {}
    for key, run in list(runners.items()):  # warm up (compile), keep results to cross-check
        mark, start = len(_EVENTS), time.perf_counter()
        if key == "torch_compile":
            try:
                results[key] = run()
            except Exception as e:  # Inductor needs a C++ compiler; report, do not fail
                del runners[key]
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                out["torch_compile_note"] = f"torch.compile failed, (e) skipped: {first}"
                logging.warning("%s", out["torch_compile_note"])
                continue
        else:
            results[key] = run()
        compiles, compile_s = _compiles_since(mark)
        if key == "bare_forward":  # compiled above, for its memory analysis
            compiles, compile_s = compiles + bare_compile[0], compile_s + bare_compile[1]
        compile_info[key] = {
            "compiles": compiles,
            "compile_s": compile_s,
            "first_call_s": time.perf_counter() - start,
        }
    compile_info["evaluator"]["compile_count"] = ev.compile_count
    mark = len(_EVENTS)
    seconds = timed_rounds(runners, FLAGS.repeats)
    out["compiles_during_rounds"] = _compiles_since(mark)[0]
    if "torch_compile" in seconds:  # its first call traced and compiled the twin
        info = compile_info["torch_compile"]
        info["compiles"] = 1
        info["compile_s"] = info["first_call_s"] - float(np.median(seconds["torch_compile"]))
        info["mode"] = FLAGS.torch_compile_mode
    out["compile"] = compile_info
    out["seconds"] = seconds
    out["rates"] = {k: w.work / float(np.median(s)) for k, s in seconds.items()}
    # The JAX model's FLOPs (XLA's count of the bare forward) at each variant's rate.
    out["gflops"] = {k: v * out["flops_per_image"] / 1e9 for k, v in out["rates"].items()}
    out["ratios"] = {
        f"evaluator/{k}": float(np.median(np.asarray(s) / np.asarray(seconds["evaluator"])))
        for k, s in seconds.items()
        if k != "evaluator"
    }
    out["memory"] = {
        "evaluator": _memory(ev.compiled(image_shape)),
        "bare_forward": bare_memory,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10,
    }
    out["agreement"] = agreement(w, forward, results, twin)
    if FLAGS.scaling:
        out["scaling_transforms"] = scaling_transforms(
            ev, w, FLAGS.scaling_base, [int(f) for f in FLAGS.scaling_factors]
        )
    if FLAGS.device_counts:
        out["scaling_devices"] = scaling_devices(
            name, [int(n) for n in FLAGS.device_counts], _device_row(out)
        )
    if FLAGS.profile:
        out["profile"] = profile_ops(ev_run, ev.compiled(image_shape).as_text())
    return out


def agreement(w: Workload, forward: Callable, results: dict[str, Any], twin: Any) -> dict[str, Any]:
    """Cross-checks: the variants' top-1 per transform, fast (`forward`) vs plain JAX logits,
    torch vs JAX logits."""
    out = {}
    labels = np.concatenate([lab for _, lab in w.batches])
    if "python_loop" in results:
        top1 = results["python_loop"]
        if "evaluator" in results:
            accuracy = np.mean(top1 == labels, axis=1)
            out["evaluator_vs_loop_accuracy_max_diff"] = float(
                np.max(np.abs(accuracy - results["evaluator"]))
            )
        if "torch_eager" in results:
            out["torch_vs_loop_top1_agreement"] = float(np.mean(results["torch_eager"] == top1))
        if "torch_compile" in results:
            out["torch_compile_vs_loop_top1_agreement"] = float(
                np.mean(results["torch_compile"] == top1)
            )
    for key in TORCH_VARIANTS:  # accuracy per transform of each torch peer vs the evaluator
        if key in results and "evaluator" in results:
            accuracy = np.mean(results[key] == labels, axis=1)
            out[f"evaluator_vs_{key}_accuracy_max_diff"] = float(
                np.max(np.abs(accuracy - results["evaluator"]))
            )
    reference = w.protocol.params[w.protocol.reference_index]
    images = jax.vmap(w.protocol.transform, (0, None))(w.batches[0][0], reference)
    plain = np.asarray(jax.jit(w.classifier.logits)(w.classifier.variables, images))
    scale = float(np.max(np.abs(plain)))
    if FLAGS.fast:
        fast = np.asarray(forward(w.variables, images))
        out["fast_vs_plain_max_rel_diff"] = float(np.max(np.abs(fast - plain)) / scale)
        out["fast_vs_plain_top1_agreement"] = float(np.mean(fast.argmax(-1) == plain.argmax(-1)))
    if twin is not None:
        import torch

        with torch.inference_mode():
            logits = twin(
                torch.from_numpy(np.array(images))  # a writable copy
                .permute(0, 3, 1, 2)
                .contiguous(memory_format=torch.channels_last)
            ).numpy()
        out["torch_vs_plain_max_rel_diff"] = float(np.max(np.abs(logits - plain)) / scale)
    return out


# --- output ----------------------------------------------------------------------------------


def print_tables(record: dict[str, Any]) -> None:
    """Markdown tables of one run's record."""
    for name, r in record["protocols"].items():
        print(
            f"\n## {name}: {r['model']}, batch {r['batch_size']}, {r['num_transforms']} "
            f"transforms, chunk {r['chunk_size']} x {r['images_per_call']} images per call, "
            f"fast={r['fast']}\n"
        )
        rows = [
            {
                "variant": k,
                "images x transforms / s": round(v, 1),
                "median s / round": round(float(np.median(r["seconds"][k])), 3),
                "evaluator / variant": round(r["ratios"].get(f"evaluator/{k}", 1.0), 3),
                "GFLOP/s": round(r["gflops"][k], 1),
                "of peak": round(r["fraction_of_peak"][k], 3),
            }
            for k, v in r["rates"].items()
        ]
        print(report.markdown_table(rows, list(rows[0]), 3))
        for note in ("torch_note", "torch_compile_note"):
            if r.get(note):
                print(f"\n{r[note]}")
        c = r["compile"]
        print(
            f"\ncompiles: evaluator {c['evaluator']['compile_count']} trace(s), "
            + ", ".join(
                f"{k} {v['compiles']} compile(s) {v['compile_s']:.1f} s" for k, v in c.items()
            )
            + f"; during timed rounds: {r['compiles_during_rounds']}"
        )
        mem = r["memory"]
        print(
            f"XLA bytes per call: evaluator {mem['evaluator']['peak_bytes'] / 2**20:.1f} MiB, "
            f"bare forward {mem['bare_forward']['peak_bytes'] / 2**20:.1f} MiB; "
            f"process max RSS {mem['max_rss_bytes'] / 2**20:.0f} MiB"
        )
        print("agreement: " + ", ".join(f"{k} {v:.3g}" for k, v in r["agreement"].items()))
        if r.get("scaling_transforms"):
            cols = [
                "factor",
                "num_transforms",
                "seconds_per_batch",
                "rate",
                "cost_per_transform_vs_x1",
                "compiles",
                "peak_bytes",
            ]
            print("\n" + report.markdown_table(r["scaling_transforms"], cols, 3))
        if r.get("scaling_devices"):
            print(
                "\n" + report.markdown_table(r["scaling_devices"], list(r["scaling_devices"][0]), 1)
            )
        if r.get("profile"):
            p = r["profile"]
            print(
                f"\nprofile of one round: {p['wall_ms']:.0f} ms wall, {p['total_op_ms']:.0f} ms "
                "attributed to XLA ops (Eigen convolutions are undercounted):\n"
            )
            print(report.markdown_table(p["by_category"], ["category", "ms", "share"], 3))


def main() -> None:
    for flag, values, allowed in (
        ("protocols", FLAGS.protocols, SETUPS),
        ("variants", FLAGS.variants, VARIANTS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise sb_flags.FlagError(f"--{flag}={','.join(values)}: choose from {list(allowed)}.")
    if "evaluator" not in FLAGS.variants:
        raise sb_flags.FlagError("--variants must include 'evaluator' (the ratios' numerator).")
    if FLAGS.multihost:  # the peers are one-device programs; only (a) spans processes
        if FLAGS.variants != ["evaluator"]:
            raise sb_flags.FlagError(
                f"--variants={','.join(FLAGS.variants)}: across processes only 'evaluator' "
                "runs (the other variants are one-device peers); pass --variants=evaluator."
            )
        if FLAGS.device_counts:
            raise sb_flags.FlagError(
                "--device_counts starts one-process children; pass --device_counts= with "
                "--multihost."
            )
    for flag in ("scaling_factors", "device_counts"):
        values = getattr(FLAGS, flag)
        if not all(v.isdigit() and int(v) > 0 for v in values):
            raise sb_flags.FlagError(f"--{flag}={','.join(values)}: positive integers expected.")
    sb_flags.join_cluster()
    if FLAGS.torch_passive_wait:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    jax.monitoring.register_event_duration_secs_listener(_listen)
    load_start = os.getloadavg()
    record = {
        "config": sb_flags.flag_values(),
        "versions": report.versions(),
        "cpu_count": os.cpu_count(),
        "device_count": jax.device_count(),
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_WAIT_POLICY")},
        "protocols": {},
    }
    if _torch_available():
        import torch

        record["versions"]["torch"] = torch.__version__
        record["torch_threads"] = torch.get_num_threads()
    record["peak_gflops"] = matmul_peak_gflops()
    for name in FLAGS.protocols:
        logging.info("measuring %s", name)
        record["protocols"][name] = measure(name)
        record["protocols"][name]["fraction_of_peak"] = {
            k: v / record["peak_gflops"] for k, v in record["protocols"][name]["gflops"].items()
        }
    record["load_average"] = {"start": load_start, "end": os.getloadavg()}
    if not report.is_writer():
        return
    report.write_json(os.path.join(FLAGS.output_dir, "throughput.json"), record)
    print_tables(record)
    print(f"\nmeasured fp32 peak (2048^3 matmul): {record['peak_gflops']:.0f} GFLOP/s")
    print(
        f"\nload average (1, 5, 15 min) at start {load_start}, at end {os.getloadavg()}; "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    sb_flags.run_main(main)
