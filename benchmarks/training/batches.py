"""What training is fed: the examples of each step (seeded epochs, pure in the step), checked
and placed on the devices."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from benchmarks.training.config import TrainConfig


@functools.lru_cache(maxsize=1)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """A permutation of range(num_examples) for one epoch, int [num_examples]."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), epoch)
    return np.asarray(jax.random.permutation(key, num_examples))


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Example indices of batch `step`, a pure function of its arguments.

    Epoch e = step // (num_examples // batch_size) visits a seeded random permutation of the
    examples in consecutive batch_size chunks (the num_examples % batch_size left over are skipped
    that epoch), so within an epoch no example repeats.

    Returns:
      int [batch_size], values in [0, num_examples).
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_size must be in [1, num_examples={num_examples}], got {batch_size!r}."
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}.")
    epoch, position = divmod(step, num_examples // batch_size)
    return _epoch_order(seed, epoch, num_examples)[
        position * batch_size : (position + 1) * batch_size
    ]


def check_data(
    images: ArrayLike, labels: ArrayLike, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Validates the training arrays; returns float32 [N,H,W,C] and int32 [N] numpy arrays."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be float [N, H, W, C], got {images.dtype} {images.shape}.")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be int [N={images.shape[0]}], got {labels.dtype} {labels.shape}."
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got min {labels.min()}.")
    if config.batch_size > len(labels):
        raise ValueError(
            f"TrainConfig.batch_size must be <= the number of examples {len(labels)}, "
            f"got {config.batch_size}."
        )
    if config.augmentation == "embed" and config.canvas_size < max(images.shape[1:3]):
        raise ValueError(
            f"TrainConfig.canvas_size must be >= the image size "
            f"{images.shape[1]}x{images.shape[2]}, got {config.canvas_size}."
        )
    return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def shardings(
    mesh: Mesh | None, batch_size: int
) -> tuple[NamedSharding | None, NamedSharding | None]:
    """(batch sharding over mesh axis 'batch', replicated sharding), or (None, None) without mesh."""
    if mesh is None:
        return None, None
    if "batch" not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named 'batch', got axes {mesh.axis_names}.")
    if batch_size % mesh.shape["batch"]:
        raise ValueError(
            f"TrainConfig.batch_size={batch_size} must be a multiple of the mesh "
            f"'batch' axis size {mesh.shape['batch']}."
        )
    return NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())


def device_batch(
    images: np.ndarray, labels: np.ndarray, idx: np.ndarray, sharding: NamedSharding | None
) -> tuple[jax.Array, jax.Array]:
    """The batch images[idx], labels[idx] on the devices: split over `sharding`'s batch axis,
    each process gathering and copying only the rows of its own devices; or on the default
    device without a sharding."""
    if sharding is None:
        return jax.device_put((images[idx], labels[idx]))
    return tuple(
        jax.make_array_from_callback(
            (len(idx), *a.shape[1:]), sharding, lambda index, a=a: a[idx[index[0]]]
        )
        for a in (images, labels)
    )
