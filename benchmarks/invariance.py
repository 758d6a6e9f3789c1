"""Evaluates one model on one dataset under one transformation sweep.

    python -m benchmarks.invariance --model=resnet20 --checkpoint=runs/ablation/... \
        --dataset=cifar10 --data_dir=../shared/data/tfds --split='test[80%:]' \
        --transform=crop --max_shift=4

Writes to --output_dir: results.json (config, metrics, versions, wall_time_s), per_param.csv
(accuracy and true-class probability per sweep parameter, P(top-1 change) to the next one),
sweep.png (accuracy and P(top-1 change) against the shift) and curves.png (true-class
probability of a few images, Azulay Fig. 1). An interrupted run started again with the same
flags resumes after its last saved batch (eval_state.npz); a run of another identity (model,
weights content, data, protocol, evaluator config) in the same --output_dir starts afresh and
logs what differs. Definitions of every protocol and metric: README.md ("Definitions").
"""

from __future__ import annotations

import os
import time

import jax
from absl import flags, logging

from benchmarks.cli import flags as sb_flags
from benchmarks.core import evaluator
from benchmarks.data import datasets
from benchmarks.inference import classifiers, fastpath
from benchmarks.results import report, sweep_record
from benchmarks.runtime import xla_defaults

FLAGS = flags.FLAGS

sb_flags.define_data_flags()
sb_flags.define_protocol_flags()
sb_flags.define_eval_flags()
sb_flags.define_cluster_flags()
flags.DEFINE_bool(
    "share_phases",
    True,
    "--transform=circular: evaluate circular shifts of the same phase once when the model "
    "declares a shift period (circular padding, GAP head); the results are the same.",
)
flags.DEFINE_integer(
    "cpu_devices",
    None,
    "Simulated CPU devices the batch is sharded over (XLA's host device count; ignored on an "
    "accelerator; default: XLA's, one). Results do not depend on it; speed does "
    "(WORKSPACE_NOTES.md).",
    lower_bound=1,
)
sb_flags.define_model_flags()
flags.adopt_module_key_flags(sb_flags)  # --help lists the flags of the configs too


def main() -> None:
    _set_cpu_devices()
    sb_flags.join_cluster()
    sb_flags.check_batch_size(FLAGS.batch_size)
    start = time.perf_counter()
    dataset = datasets.open_dataset(FLAGS.dataset, FLAGS.split, FLAGS.data_dir)
    image_shape = datasets.example_shape(dataset, FLAGS.image_size)
    protocol = sb_flags.protocol_from_flags(image_shape)
    classifier = sb_flags.classifier_from_flags(dataset.num_classes, protocol.output_shape)
    config = sb_flags.eval_config_from_flags()
    period = (
        classifiers.shift_period(classifier.model, protocol.output_shape)
        if FLAGS.share_phases
        else None
    )
    logits, variables = classifier.inference(protocol.output_shape, FLAGS.fast)
    ev = evaluator.Evaluator(logits, protocol, config, variables=variables, shift_period=period)
    sharing = None
    if ev.sweep_index is not None:
        sharing = {"period": period, "distinct": len(ev.params), "entries": len(protocol.params)}
        logging.info(
            "circular shifts share phases (period %d): %d distinct of %d", *sharing.values()
        )
    n = len(dataset) if FLAGS.num_images is None else min(FLAGS.num_images, len(dataset))
    counts = datasets.ReadCounts()  # the images --image_size had to upscale

    def batches_from(start_batch: int):
        return datasets.iterate_batches(
            dataset,
            FLAGS.batch_size,
            n,
            FLAGS.image_size,
            jax.process_index(),
            jax.process_count(),
            start_batch=start_batch,
            counts=counts,
        )

    logging.info(
        "%s (%s) on %d images of %s[%s]; %s",
        FLAGS.model,
        classifier.source,
        n,
        FLAGS.dataset,
        FLAGS.split,
        protocol.describe(),
    )
    identity = {
        "model": {"name": FLAGS.model, "fields": sb_flags.switch_from_flags()},
        "data": dataset.identity(n, FLAGS.image_size),
        "protocol": {"name": protocol.name, "options": protocol.options},
        "inference": fastpath.identity(FLAGS.fast),
    }
    result = ev.run(
        batches_from,
        identity=identity,
        state_path=os.path.join(FLAGS.output_dir, "eval_state.npz"),
        total_batches=-(-n // FLAGS.batch_size),
    )
    num_upscaled = counts.global_counts().num_upscaled
    if report.is_writer():
        wall_time_s = time.perf_counter() - start
        config = {**sb_flags.flag_values(), "weights_source": classifier.source}
        sweep_record.write_sweep_record(
            FLAGS.output_dir,
            config,
            protocol,
            result,
            wall_time_s,
            num_upscaled,
            sharing,
            classifier.notes,
        )


def _set_cpu_devices() -> None:
    """--cpu_devices into XLA_FLAGS, before the CPU backend starts."""
    if FLAGS.cpu_devices is None:
        return
    try:
        xla_defaults.set_cpu_device_count(FLAGS.cpu_devices)
    except ValueError as e:
        raise sb_flags.FlagError(f"--cpu_devices={FLAGS.cpu_devices} {e}.") from None


if __name__ == "__main__":
    sb_flags.run_main(main)
