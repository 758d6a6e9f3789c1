"""What the evaluator is handed, checked before any compute, and made into global arrays.

Every host feeds `(images, labels)` for its slice of each global batch: images float32
[n, H, W, C] in [0, 1] of the protocol's input shape, labels int [n]. `checked` refuses
anything else with a ValueError naming the batch and what it expected; `global_batch` pads a
short slice, masks the padding and forms the arrays sharded over the mesh's batch axis.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from benchmarks.core.protocols import Protocol

RANGE_TOLERANCE = 1e-3  # float images may overshoot [0, 1] by this much (resampling rounding)


def checked(
    batch: Any, b: int, protocol: Protocol, convert_uint8: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [n, H, W, C] in [0, 1], labels [n]) of batch b, checked against
    `protocol.input_shape`.

    Args:
      batch: what the batch iterator yielded.
      b: its index, for the messages.
      protocol: the protocol the images are for.
      convert_uint8: accept uint8 images in 0..255 (divided by 255).

    Raises:
      ValueError: not an (images, labels) pair; images not [n, *input_shape]; labels not n
        integers; uint8 images without `convert_uint8`; values outside [0, 1].
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            f"batches must yield (images [n, H, W, C], labels [n]) pairs; batch {b} is a "
            f"{type(batch).__name__}."
        )
    images, labels = np.asarray(batch[0]), np.asarray(batch[1])
    want = tuple(protocol.input_shape)
    if images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(
            f"images of batch {b} have shape {images.shape}; protocol {protocol.name!r} takes "
            f"images [n, {', '.join(map(str, want))}] (input_shape={want}): resize them, or "
            "build the protocol for their shape."
        )
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels of batch {b} must be {len(images)} integers [n], got {labels.dtype} "
            f"{labels.shape}."
        )
    if images.dtype == np.uint8:
        if not convert_uint8:
            raise ValueError(
                f"images of batch {b} are uint8; the protocols take float images in [0, 1] "
                "(divide by 255, or pass EvalConfig(convert_uint8=True))."
            )
        images = images.astype(np.float32) / 255.0
    elif images.dtype.kind != "f":
        raise ValueError(f"images of batch {b} are {images.dtype}; give float32 in [0, 1].")
    images = images.astype(np.float32)
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"images of batch {b} hold values in [{low:g}, {high:g}]; the protocols take "
            "images in [0, 1] (their fills and interpolation assume it)."
        )
    return images, labels


def global_batch(
    images: np.ndarray, labels: np.ndarray, start: int, batch_size: int, sharding: NamedSharding
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """This host's slice padded to batch_size / process_count, as global arrays.

    Args:
      images: float32 [n, H, W, C], n <= batch_size / process_count.
      labels: int [n].
      start: global index of the batch's first image (seeds the per-image draws).
      batch_size: global images per batch.
      sharding: the batch-axis sharding of the mesh.

    Returns:
      (images [B, H, W, C], labels int32 [B], valid bool [B], index int32 [B]), B = batch_size.

    Raises:
      ValueError: the slice holds more than batch_size / process_count images.
    """
    local = batch_size // jax.process_count()
    n = len(labels)
    if n > local:
        raise ValueError(f"a batch of {n} images exceeds the per-host batch size {local}.")
    pad = local - n
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros((pad,), np.int32)]).astype(np.int32)
    valid = np.arange(local) < n
    index = (start + jax.process_index() * local + np.arange(local)).astype(np.int32)
    make = lambda a: jax.make_array_from_process_local_data(sharding, a)  # noqa: E731
    return make(images), make(labels), make(valid), make(index)
