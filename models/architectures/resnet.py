"""ResNet50 (v1) as in Keras Applications (keras.applications.ResNet50), with the switch.

Keras' layout, which differs from torchvision's: conv1 = ZeroPadding 3 + Conv 7x7 / 2 (with
bias) + BN + ReLU, pool1 = ZeroPadding 1 + MaxPool 3x3 / 2; then stacks conv2..conv5 of 3, 4,
6, 3 bottleneck blocks (widths 64, 128, 256, 512, expansion 4) whose first block has a 1x1
conv + BN shortcut and puts the stride (2, except conv2: 1) on the first 1x1 conv of both
paths; every conv has a bias, BN epsilon 1.001e-5. Head: global average pool + predictions
(1000). Keras 'caffe' preprocessing happens inside; ImageNet input 224 x 224; returned logits
are before Keras' softmax.

Stages: 'stage1' = conv1 + pool1 (two stride-2 layers, cumulative stride 4), 'stage2' .. 'stage5'
= conv2 .. conv5 (strides 4, 8, 16, 32). With the switch, a strided 1x1 conv runs at stride 1 and
its block's `Subsampler` follows the ReLU of the main path's first conv and the shortcut's BN,
both with one APS phase (the main path's). Parameter names are Keras' layer names
('conv1_conv', 'conv2_block1_0_bn', ..., 'predictions').
"""

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from models.layers.conv import Conv, ReLU, global_avg_pool, max_pool
from models.layers.preprocessing import KerasPort
from models.layers.subsampling import Subsampler

STACKS = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks) of conv2..conv5
IMAGE_SIZE = 224
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.99  # Keras' default


class ResNet50(KerasPort):
    """Keras ResNet50 (fields: see preprocessing.KerasPort; 'stage1'..'stage5' = conv1..conv5).

    __call__(x [N, H, W, 3] in [0, 1], train=False) -> (logits [N, 1000], {'stage1': [N, h, w,
    64], 'stage2': [.., 256], 'stage3': [.., 512], 'stage4': [.., 1024], 'stage5': [.., 2048]}).
    train=True uses batch statistics (apply with mutable=['batch_stats']).
    """

    STAGE_FACTORS = (4, 1, 2, 2, 2)
    PREPROCESSING = "caffe"

    def _conv_bn(
        self,
        x: jax.Array,
        features: int,
        kernel: int,
        stride: int,
        padding,
        dilation: int,
        name: str,
        train: bool,
    ) -> jax.Array:
        """Keras' Conv2D (with bias) + BatchNormalization, layers '<name>_conv', '<name>_bn'."""
        x = Conv(features, kernel, stride, padding, dilation, self.padding, name=f"{name}_conv")(x)
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            name=f"{name}_bn",
        )(x)

    def _block(
        self, x: jax.Array, width: int, sub: Subsampler, shortcut: bool, name: str, train: bool
    ) -> jax.Array:
        """Keras residual_block_v1: x [N, H, W, C] -> [N, H / f, W / f, 4 width], f = sub.factor."""
        h = ReLU()(
            self._conv_bn(x, width, 1, sub.op_stride, "VALID", sub.dilation, f"{name}_1", train)
        )
        phase = sub.phase(h)
        h = sub.downsample(h, phase)
        h = ReLU()(self._conv_bn(h, width, 3, 1, "SAME", sub.out_dilation, f"{name}_2", train))
        h = self._conv_bn(h, 4 * width, 1, 1, "VALID", sub.out_dilation, f"{name}_3", train)
        if shortcut:
            x = sub.downsample(
                self._conv_bn(
                    x, 4 * width, 1, sub.op_stride, "VALID", sub.dilation, f"{name}_0", train
                ),
                phase,
            )
        return ReLU()(h, x)

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> tuple[jax.Array, dict]:
        """x [N, H, W, 3] in [0, 1] -> (logits [N, 1000], per-stage feature maps)."""
        sub = self._subsampler(1, 1)
        h = ReLU()(self._conv_bn(self._preprocess(x), 64, 7, sub.op_stride, 3, 1, "conv1", train))
        h = sub.downsample(h)
        sub = self._subsampler(1, sub.out_dilation)
        h = sub.downsample(max_pool(h, 3, sub.op_stride, 1, sub.dilation, self.padding))
        dilation, features = sub.out_dilation, {"stage1": h}
        for stage, (width, blocks) in enumerate(STACKS, start=2):
            for block in range(1, blocks + 1):
                sub = (
                    self._subsampler(stage, dilation)
                    if block == 1 and stage > 2
                    else Subsampler("subsample", 1, dilation, self.blur_size, self.padding)
                )
                h = self._block(h, width, sub, block == 1, f"conv{stage}_block{block}", train)
                dilation = sub.out_dilation
            features[f"stage{stage}"] = h
        return nn.Dense(1000, name="predictions")(global_avg_pool(h)), features
