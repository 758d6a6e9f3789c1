"""Training from an entry point: `train` into --output_dir, its refusals as one flag line,
and the run-then-record shape of the training studies.

Only the training entry points (`stride_ablation`, `dataset_bias`) import this module, so the
others start without optax.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax

from benchmarks.cli import flags as sb_flags
from benchmarks.core import evaluator, run_identity
from benchmarks.data import datasets
from benchmarks.results import report
from benchmarks.training import train


def train_in_output_dir(model, images, labels, config, workdir: str, identity: dict):
    """`benchmarks.training.train.train` into `workdir` (under --output_dir) with the run
    `identity`, its batches split over every device of every process; a checkpoint there of
    another run is refused as one FlagError line naming what differs.

    Returns:
      The `TrainResult`.

    Raises:
      FlagError: --train_batch_size does not split over the devices, or the identity differs.
    """
    if config.batch_size % jax.device_count():
        raise sb_flags.FlagError(
            f"--train_batch_size={config.batch_size} is not divisible by the number of devices "
            f"({jax.device_count()})."
        )
    try:
        return train.train(
            model,
            images,
            labels,
            config,
            os.path.join(workdir, "checkpoint"),
            mesh=evaluator.default_mesh(),
            identity=identity,
        )
    except run_identity.IdentityMismatch as e:
        raise sb_flags.FlagError(
            f"--output_dir={sb_flags.FLAGS.output_dir}: {e} Use a new --output_dir."
        ) from None


def run_study(run: Callable[..., list], write: Callable[..., None], config: Any) -> None:
    """`run(config, data, eval config, --output_dir, train_fn=train_in_output_dir)`, then, on
    process 0, `write(--output_dir, results, flag values, wall time s)`."""
    start = time.perf_counter()
    output_dir = sb_flags.FLAGS.output_dir
    results = run(
        config,
        sb_flags.config_from_flags(datasets.DataConfig),
        sb_flags.eval_config_from_flags(),
        output_dir,
        train_fn=train_in_output_dir,
    )
    if report.is_writer():
        write(output_dir, results, sb_flags.flag_values(), time.perf_counter() - start)
