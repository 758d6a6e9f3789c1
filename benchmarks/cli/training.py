"""Training from an entry point: `train` into --output_dir, its refusals as one flag line.

Only the training entry points (`stride_ablation`, `dataset_bias`) import this module, so the
others start without optax.
"""

from __future__ import annotations

import os

import jax

from benchmarks.cli.flags import FLAGS, FlagError
from benchmarks.core import evaluator, run_identity
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
        raise FlagError(
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
        raise FlagError(f"--output_dir={FLAGS.output_dir}: {e} Use a new --output_dir.") from None
