"""Keras Applications input preprocessing, for images in the project's convention.

Our models take float32 images in [0, 1], NHWC, RGB. Keras Applications models expect
what `keras.applications.<model>.preprocess_input` makes of 0..255 RGB pixels:

- 'caffe' (VGG16, ResNet50): RGB -> BGR, then subtract the ImageNet mean pixel
  (B, G, R) = (103.939, 116.779, 123.68); no scaling, so values lie in about [-124, 152].
- 'tf' (InceptionResNetV2): x / 127.5 - 1, i.e. [-1, 1].
"""

import jax
import jax.numpy as jnp

KERAS_PREPROCESSING_MODES = ("caffe", "tf")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def keras_preprocess(images: jax.typing.ArrayLike, mode: str) -> jax.Array:
    """Map images in [0, 1] to the input a Keras Applications model expects.

    Args:
      images: [..., 3] float RGB in [0, 1] (e.g. [N, H, W, 3]).
      mode: 'caffe' (BGR, 0..255 minus the mean pixel) or 'tf' (RGB scaled to [-1, 1]).

    Returns:
      [..., 3] float32: 'caffe' gives BGR channels, 'tf' keeps RGB.

    Raises:
      ValueError: unknown `mode`.
    """
    if mode not in KERAS_PREPROCESSING_MODES:
        raise ValueError(f"mode must be one of {KERAS_PREPROCESSING_MODES}, got {mode!r}")
    pixels = jnp.asarray(images, jnp.float32) * 255.0
    if mode == "tf":
        return pixels / 127.5 - 1.0
    return pixels[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
