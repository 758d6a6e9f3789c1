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

The torch peers use twins with the same dilation and padding (`benchmarks.studies.throughput.torch_twins`;
for EfficientNet-Lite0 the reference PyTorch code itself, `efficientnet-lite-pytorch`).

In one process, on the same images and sweep, in alternating rounds (so that the load of a
shared machine hits every variant alike):

  (a) evaluator     `benchmarks.core.evaluator.Evaluator.run`: one jitted call per batch that crops,
                    runs the model and reduces every metric;
  (b) bare_forward  the jitted model alone on already-cropped batches of the same total size;
  (c) python_loop   a Python loop over the sweep calling the jitted crop + model per parameter;
  (d) torch_eager   when torch is installed (and, for EfficientNet-Lite0, the reference code
                    efficientnet-lite-pytorch): the same crops and model in PyTorch eager
                    (`benchmarks.studies.throughput.torch_twins`, weights copied, channels_last,
                    inference mode), a loop over the sweep, as the published reference codes evaluate.
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

import os

import jax
from absl import flags, logging

from benchmarks.cli import flags as sb_flags
from benchmarks.results import report
from benchmarks.studies.throughput import measure, tables, torch_loops, workloads
from benchmarks.studies.throughput.config import VARIANTS, ThroughputConfig

FLAGS = flags.FLAGS
_DEFAULTS = ThroughputConfig()

flags.DEFINE_list(
    "protocols", list(workloads.SETUPS), f"Protocols to measure, of {list(workloads.SETUPS)}."
)
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to measure, of {list(VARIANTS)}.")
flags.DEFINE_list(
    "scaling_factors",
    [str(f) for f in _DEFAULTS.scaling_factors],
    "Sweep lengths, in multiples of the base.",
)
flags.DEFINE_list(
    "device_counts",
    [str(n) for n in _DEFAULTS.device_counts],
    "Simulated CPU device counts to compare.",
)
flags.DEFINE_bool(
    "torch_passive_wait",
    True,
    "OMP_WAIT_POLICY=PASSIVE for torch (unless set): spin-waiting OpenMP workers slow the JAX "
    "variants of the same process, and torch itself when other processes load the cores.",
)
flags.DEFINE_string("output_dir", "runs/throughput", "Where throughput.json is written.")
sb_flags.define_config_flags(ThroughputConfig)
sb_flags.define_cluster_flags()


def _positive_ints(flag: str) -> tuple[int, ...]:
    """The list flag `flag` as positive integers."""
    values = getattr(FLAGS, flag)
    if not all(v.isdigit() and int(v) > 0 for v in values):
        raise sb_flags.FlagError(f"--{flag}={','.join(values)}: positive integers expected.")
    return tuple(int(v) for v in values)


def _config_from_flags() -> ThroughputConfig:
    """The checked `ThroughputConfig` of the flags; the protocols' sizes checked too."""
    bad = [p for p in FLAGS.protocols if p not in workloads.SETUPS]
    if bad or not FLAGS.protocols:
        raise sb_flags.FlagError(
            f"--protocols={','.join(FLAGS.protocols)}: choose from {list(workloads.SETUPS)}."
        )
    config = sb_flags.config_from_flags(
        ThroughputConfig,
        variants=tuple(FLAGS.variants),
        scaling_factors=_positive_ints("scaling_factors"),
        device_counts=_positive_ints("device_counts"),
    )
    if FLAGS.multihost:  # the peers are one-device programs; only (a) spans processes
        if config.variants != ("evaluator",):
            raise sb_flags.FlagError(
                f"--variants={','.join(config.variants)}: across processes only 'evaluator' "
                "runs (the other variants are one-device peers); pass --variants=evaluator."
            )
        if config.device_counts:
            raise sb_flags.FlagError(
                "--device_counts starts one-process children; pass --device_counts= with "
                "--multihost."
            )
    return config


def _check_sizes(config: ThroughputConfig) -> None:
    """Each protocol's max shift and batch size, on the devices of the joined cluster."""
    for name in FLAGS.protocols:
        try:
            setup = workloads.setup_for(name, config)
        except ValueError as e:
            raise sb_flags.FlagError(sb_flags.flag_message(str(e))) from None
        sb_flags.check_batch_size(setup.batch_size)


def main() -> None:
    config = _config_from_flags()
    sb_flags.join_cluster()
    _check_sizes(config)
    if FLAGS.torch_passive_wait:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    load_start = os.getloadavg()
    record = {
        "config": sb_flags.flag_values(),
        "versions": report.versions(),
        "cpu_count": os.cpu_count(),
        "device_count": jax.device_count(),
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_WAIT_POLICY")},
        "protocols": {},
    }
    torch_runtime = torch_loops.runtime()
    if torch_runtime:
        record["versions"]["torch"], record["torch_threads"] = torch_runtime
    record["peak_gflops"] = measure.matmul_peak_gflops()
    for name in FLAGS.protocols:
        logging.info("measuring %s", name)
        record["protocols"][name] = measure.measure(name, config, record["peak_gflops"])
    record["load_average"] = {"start": load_start, "end": os.getloadavg()}
    if report.is_writer():
        report.write_json(os.path.join(FLAGS.output_dir, "throughput.json"), record)
        tables.print_tables(record)


if __name__ == "__main__":
    sb_flags.run_main(main)
