"""Reading the orbax checkpoints `benchmarks.training.train` writes, without optax.

A training workdir holds `checkpoint/<step>/` with two items: `state` ({'step', 'variables',
'opt_state'}, orbax's standard pytree format) and `meta` (JSON: config, run identity, history,
wall time, final loss). Evaluating a trained model needs only the variables: `restore_variables`
reads that subtree alone (a partial restore into the model's own shapes, nothing computed or
compiled), so it needs neither the optimizer nor the training config.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import linen as nn


def checkpoint_dir(workdir: str) -> epath.Path:
    """The checkpoint folder of a `train` workdir, as the absolute path orbax needs (local
    paths made absolute, gs:// kept)."""
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def load_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON metadata (config, identity, history, wall_time_s, final_loss) of `step`."""
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def load_state(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
    """The training state of checkpoint `step`, in the structure (and shardings) of `target`."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    return manager.restore(step, args=args).state


def restore_variables(workdir: str, model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The model variables of the latest checkpoint that `train` wrote in `workdir`.

    Args:
      workdir: a `train` workdir.
      model: the module that was trained there.
      input_shape: (H, W, C) of the images the model sees (for 'embed' training: the canvas).

    Returns:
      The flax variables ({'params': ..., and e.g. 'batch_stats': ...}) on the first local
      device.

    Raises:
      ValueError: workdir does not exist or holds no checkpoint.
    """
    if not epath.Path(workdir).is_dir():
        raise ValueError(f"workdir={workdir!r} does not exist.")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False)
    )
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes)
    read_only = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(checkpoint_dir(workdir), options=read_only) as manager:
        step = manager.latest_step()
        if step is None:
            raise ValueError(
                f"workdir={workdir!r} holds no checkpoint of benchmarks.training.train."
            )
        item = {"variables": target}
        args = ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        )
        return manager.restore(step, args=ocp.args.Composite(state=args)).state["variables"]
