"""What the Keras Applications ports share: Keras' input preprocessing and the switch fields.

Our models take float32 images in [0, 1], NHWC, RGB. Keras Applications models expect
what `keras.applications.<model>.preprocess_input` makes of 0..255 RGB pixels:

- 'caffe' (VGG16, ResNet50): RGB -> BGR, then subtract the ImageNet mean pixel
  (B, G, R) = (103.939, 116.779, 123.68); no scaling, so values lie in about [-124, 152].
- 'tf' (InceptionResNetV2): x / 127.5 - 1, i.e. [-1, 1].

`KerasPort` is the base of models/architectures/vgg.py, resnet.py and inception_resnet_v2.py: the fields
of the subsampling switch (as models/architectures/small.py), their checks, the per-stage modes and the
cumulative feature strides. A port lists the subsampling factor of each stage in
STAGE_FACTORS (1: a stage without a strided layer; 4: two stride-2 layers), its
preprocessing in PREPROCESSING and its smallest input in MIN_IMAGE_SIZE.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers.conv import PADDING_MODES, check_choice, check_int
from models.layers.subsampling import MAX_BLUR_SIZE, STRIDE_MODES, Subsampler, stage_modes

KERAS_PREPROCESSING_MODES = ("caffe", "tf")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def keras_preprocess(images: jax.typing.ArrayLike, mode: str) -> jax.Array:
    """Map images in [0, 1] to the input a Keras Applications model expects.

    Args:
      images: [N, H, W, 3] float RGB in [0, 1].
      mode: 'caffe' (BGR, 0..255 minus the mean pixel) or 'tf' (RGB scaled to [-1, 1]).

    Returns:
      [N, H, W, 3] float32: 'caffe' gives BGR channels, 'tf' keeps RGB.

    Raises:
      ValueError: unknown `mode`, or `images` not of shape [N, H, W, 3].
    """
    check_choice("mode", mode, KERAS_PREPROCESSING_MODES)
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] RGB, got shape {images.shape}")
    pixels = images * 255.0
    if mode == "tf":
        return pixels / 127.5 - 1.0
    return pixels[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)


class KerasPort(nn.Module):
    """Base of the Keras Applications ports: switch fields, stage modes, feature strides.

    Fields: stride_mode 'subsample' | 'blur' | 'aps' | 'full'; blur_size 1..7; full_stages:
    how many of the last strided stages are 'full' (0 .. number of strided stages); padding
    'zero' | 'circular' (every conv and pool). Parameter trees are the same in every mode.
    """

    stride_mode: str = "subsample"
    blur_size: int = 4
    full_stages: int = 0
    padding: str = "zero"

    # class constants, set by each port (not dataclass fields: no annotation)
    STAGE_FACTORS = ()  # subsampling factor of each stage
    PREPROCESSING = "caffe"  # keras_preprocess mode
    MIN_IMAGE_SIZE = 1  # smallest input (pixels) with padding 'zero' (VALID layers shrink maps)

    def __post_init__(self):
        check_choice("stride_mode", self.stride_mode, STRIDE_MODES)
        check_int("blur_size", self.blur_size, 1, MAX_BLUR_SIZE)
        check_int("full_stages", self.full_stages, 0, self._num_strided())
        check_choice("padding", self.padding, PADDING_MODES)
        super().__post_init__()

    @classmethod
    def _num_strided(cls) -> int:
        return sum(f > 1 for f in cls.STAGE_FACTORS)

    def _stage_mode(self, stage: int) -> str:
        """The mode of the strided layers of `stage` (1-based; 'subsample' if it has none)."""
        if self.STAGE_FACTORS[stage - 1] == 1:
            return "subsample"
        modes = stage_modes(self.stride_mode, self.full_stages, self._num_strided())
        return modes[sum(f > 1 for f in self.STAGE_FACTORS[: stage - 1])]

    def _subsampler(self, stage: int, dilation: int) -> Subsampler:
        """The switch of one stride-2 layer of `stage`, whose input is at `dilation`."""
        return Subsampler(self._stage_mode(stage), 2, dilation, self.blur_size, self.padding)

    def _preprocess(self, images: jax.typing.ArrayLike) -> jax.Array:
        """[N, H, W, 3] in [0, 1] -> the Keras model's input (see keras_preprocess).

        Raises ValueError if H or W < MIN_IMAGE_SIZE with padding 'zero'.
        """
        x = keras_preprocess(images, self.PREPROCESSING)
        if self.padding == "zero" and min(x.shape[1:3]) < self.MIN_IMAGE_SIZE:
            raise ValueError(
                f"images must be at least {self.MIN_IMAGE_SIZE} x "
                f"{self.MIN_IMAGE_SIZE} pixels for {type(self).__name__} with "
                f"padding 'zero', got shape {x.shape}"
            )
        return x

    def feature_strides(self) -> dict[str, int]:
        """Cumulative stride of each returned feature map, {'stage1': s1, ...}.

        A shift of the input by d moves map k by d / s_k; 'full' stages add no stride.
        """
        strides, stride = {}, 1
        for stage, factor in enumerate(self.STAGE_FACTORS, start=1):
            stride *= 1 if self._stage_mode(stage) == "full" else factor
            strides[f"stage{stage}"] = stride
        return strides
