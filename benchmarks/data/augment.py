"""Training-time data augmentation: random pad-and-crop shifts, random embedding, random flips.

Per-image functions take an image `[H, W, C]` and return one image; `augment_batch` draws one key
per image and vmaps them, so every image of a batch gets its own random transform. Everything is
jit-able; the static arguments (kind, max_shift, canvas_size) are checked in Python first.
Empty pixels are filled with 0 (black).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from benchmarks.core import transforms

AUGMENTATIONS = ("none", "crop", "embed", "flip")


def shift_image(image: ArrayLike, shift: ArrayLike, max_shift: int) -> jax.Array:
    """Translates an image by an integer shift with zero fill (pad by `max_shift`, then crop).

    Args:
      image: [H, W, C].
      shift: int [2], (dy, dx) in pixels, each in [-max_shift, max_shift] (values outside are
        clipped to that range). out[y, x] = image[y - dy, x - dx], 0 where that is outside.
      max_shift: static int >= 0, the largest |dy|, |dx|.

    Returns:
      [H, W, C], same dtype as `image`.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}.")
    image = jnp.asarray(image)
    shift = jnp.clip(jnp.asarray(shift, jnp.int32), -max_shift, max_shift)
    padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    return transforms.crop(padded, max_shift - shift, out_size=image.shape[:2])


def embed_image(image: ArrayLike, offset: ArrayLike, canvas_size: int) -> jax.Array:
    """Pastes an image into a zero canvas.

    Args:
      image: [H, W, C] with H, W <= canvas_size.
      offset: int [2], (top, left) of the image in the canvas, in [0, canvas_size - H] x
        [0, canvas_size - W] (values outside are clipped to that range).
      canvas_size: static int, the side of the square canvas in pixels.

    Returns:
      [canvas_size, canvas_size, C], float32 (`benchmarks.core.transforms.embed` without resizing).
    """
    image = jnp.asarray(image)
    h, w = image.shape[:2]
    if canvas_size < max(h, w):
        raise ValueError(f"canvas_size must be >= the image size {h}x{w}, got {canvas_size!r}.")
    offset = jnp.clip(
        jnp.asarray(offset, jnp.int32), 0, jnp.array([canvas_size - h, canvas_size - w])
    )
    return transforms.embed(image, offset, canvas_size=(canvas_size,) * 2, image_size=(h, w))


def random_shift(key: ArrayLike, image: ArrayLike, max_shift: int) -> jax.Array:
    """`shift_image` with (dy, dx) uniform in [-max_shift, max_shift]^2. [H,W,C] -> [H,W,C]."""
    shift = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
    return shift_image(image, shift, max_shift)


def random_embed(key: ArrayLike, image: ArrayLike, canvas_size: int) -> jax.Array:
    """`embed_image` at a uniform random position. [H,W,C] -> [canvas_size, canvas_size, C]."""
    h, w = jnp.shape(image)[:2]
    if canvas_size < max(h, w):
        raise ValueError(f"canvas_size must be >= the image size {h}x{w}, got {canvas_size!r}.")
    offset = jax.random.randint(key, (2,), 0, jnp.array([canvas_size - h + 1, canvas_size - w + 1]))
    return embed_image(image, offset, canvas_size)


def random_flip(key: ArrayLike, image: ArrayLike) -> jax.Array:
    """Mirrors the image left-right with probability 1/2. [H,W,C] -> [H,W,C]."""
    image = jnp.asarray(image)
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def augment_batch(
    key: ArrayLike, images: ArrayLike, kind: str, max_shift: int = 0, canvas_size: int = 0
) -> jax.Array:
    """Applies an independent random augmentation to every image of a batch.

    Args:
      key: PRNG key; image i uses `jax.random.split(key, N)[i]`.
      images: [N, H, W, C].
      kind: one of AUGMENTATIONS: 'none' (identity), 'crop' (`random_shift` by up to max_shift
        px), 'embed' (`random_embed` into a canvas_size canvas), 'flip' (`random_flip`).
      max_shift: static int >= 0 for 'crop'.
      canvas_size: static int >= H, W for 'embed'.

    Returns:
      [N, H, W, C], or [N, canvas_size, canvas_size, C] for 'embed'.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"kind must be one of {AUGMENTATIONS}, got {kind!r}.")
    images = jnp.asarray(images)
    if kind == "none":
        return images
    per_image = {
        "crop": lambda k, im: random_shift(k, im, max_shift),
        "embed": lambda k, im: random_embed(k, im, canvas_size),
        "flip": random_flip,
    }[kind]
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(per_image)(keys, images)
