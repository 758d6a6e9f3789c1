"""InceptionResNetV2 as in Keras Applications (keras.applications.InceptionResNetV2), switchable.

Keras' layout: every conv2d_bn unit is Conv (no bias) + BN (scale=False, epsilon 1e-3) + ReLU;
the stride-2 stem convs, the stem max pools and the stride-2 layers of the reduction blocks
mixed_6a / mixed_7a are VALID-padded, so a 299 input gives 149, 147, 73, 71, 35, 17, 8 pixels.
Inception-ResNet blocks add `scale` x (1x1 conv with bias of their concatenated branches) to
their input: 10 x block35 (0.17), 20 x block17 (0.1), 10 x block8 (0.2; the last one 1.0 and
no ReLU); then conv_7b (1536) + global average pool + predictions (1000). Keras 'tf'
preprocessing ([-1, 1]) happens inside; ImageNet input 299 x 299, minimum 75; returned logits
are before Keras' softmax.

Stages, each starting with one stride-2 step (cumulative strides 2, 4, 8, 16, 32):
'stage1' = Conv 3x3 / 2 + two 3x3 convs (147 x 147 x 64 at 299); 'stage2' = MaxPool 3 / 2 +
1x1 and 3x3 convs (71 x 71 x 192); 'stage3' = MaxPool 3 / 2 + mixed_5b + block35s (35 x 35 x
320); 'stage4' = mixed_6a + block17s (17 x 17 x 1088); 'stage5' = mixed_7a + block8s + conv_7b
(8 x 8 x 1536). In mixed_6a / mixed_7a all branches run at the switch's stride and the
`Subsampler` acts once on their concatenation (one APS phase for all branches).

Parameter names are Keras' layer names: Keras names most conv2d_bn units itself, per class in
creation order, and the port uses the canonical form of those names ('conv2d_1' ..
'conv2d_203', 'batch_normalization_1' ..; see models/weights/keras_weights.py), besides the explicit
'block35_1_conv', ..., 'conv_7b', 'conv_7b_bn', 'predictions'.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from models.layers.conv import Conv, ReLU, avg_pool, global_avg_pool, max_pool
from models.layers.preprocessing import KerasPort
from models.layers.subsampling import Subsampler

IMAGE_SIZE = 299
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Keras' default


class _ConvBN:
    """Keras' conv2d_bn units of one forward pass, named as Keras names them.

    Unnamed units get 'conv2d_k' / 'batch_normalization_k', k = 1, 2, ... in creation order.
    """

    def __init__(self, padding_mode: str, train: bool):
        self.padding_mode, self.train, self.created = padding_mode, train, 0

    def __call__(
        self,
        x: jax.Array,
        features: int,
        kernel: int | tuple[int, int],
        dilation: int,
        stride: int = 1,
        padding: str = "SAME",
        name: str | None = None,
    ) -> jax.Array:
        """Conv (no bias) + BN (no scale) + ReLU: x [N, H, W, C] -> [N, h, w, features]."""
        if name is None:
            self.created += 1
            name, bn_name = f"conv2d_{self.created}", f"batch_normalization_{self.created}"
        else:
            bn_name = f"{name}_bn"
        x = Conv(
            features,
            kernel,
            stride,
            padding,
            dilation,
            self.padding_mode,
            use_bias=False,
            name=name,
        )(x)
        x = nn.BatchNorm(
            use_running_average=not self.train,
            use_scale=False,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            name=bn_name,
        )(x)
        return ReLU()(x)


# block type -> (residual scale, branches as ((features, kernel), ...) of conv2d_bn units)
_BLOCKS = {
    "block35": (0.17, (((32, 1),), ((32, 1), (32, 3)), ((32, 1), (48, 3), (64, 3)))),
    "block17": (0.1, (((192, 1),), ((128, 1), (160, (1, 7)), (192, (7, 1))))),
    "block8": (0.2, (((192, 1),), ((192, 1), (224, (1, 3)), (256, (3, 1))))),
}
# reduction block -> its stride-2 branches (the last unit of each is the VALID stride-2 conv)
_REDUCTIONS = {
    "mixed_6a": (((384, 3),), ((256, 1), (256, 3), (384, 3))),
    "mixed_7a": (((256, 1), (384, 3)), ((256, 1), (288, 3)), ((256, 1), (288, 3), (320, 3))),
}


class InceptionResNetV2(KerasPort):
    """Keras InceptionResNetV2 (fields: see preprocessing.KerasPort; stages as module doc).

    __call__(x [N, H, W, 3] in [0, 1], train=False) -> (logits [N, 1000], {'stage1': [N, h, w,
    64], 'stage2': [.., 192], 'stage3': [.., 320], 'stage4': [.., 1088], 'stage5': [.., 1536]}).
    H, W >= 75 unless padding is 'circular'. train=True uses batch statistics
    (mutable=['batch_stats']).
    """

    STAGE_FACTORS = (2, 2, 2, 2, 2)
    PREPROCESSING = "tf"
    MIN_IMAGE_SIZE = 75  # Keras' minimum: the VALID stem and reduction layers

    def _residual(
        self,
        x: jax.Array,
        conv_bn: _ConvBN,
        block: str,
        index: int,
        dilation: int,
        scale: float | None = None,
    ) -> jax.Array:
        """Keras inception_resnet_block '<block>_<index>': x + scale * conv(concat(branches))."""
        default_scale, branches = _BLOCKS[block]
        outputs = []
        for branch in branches:
            h = x
            for features, kernel in branch:
                h = conv_bn(h, features, kernel, dilation)
            outputs.append(h)
        up = Conv(x.shape[-1], 1, 1, "SAME", dilation, self.padding, name=f"{block}_{index}_conv")(
            jnp.concatenate(outputs, axis=-1)
        )
        return x + (default_scale if scale is None else scale) * up

    def _reduction(self, x: jax.Array, conv_bn: _ConvBN, block: str, sub: Subsampler) -> jax.Array:
        """mixed_6a / mixed_7a: stride-2 branches and max pool, concatenated, then `sub`."""
        outputs = []
        for branch in _REDUCTIONS[block]:
            h = x
            for i, (features, kernel) in enumerate(branch, start=1):
                last = i == len(branch)
                h = conv_bn(
                    h,
                    features,
                    kernel,
                    sub.dilation,
                    sub.op_stride if last else 1,
                    "VALID" if last else "SAME",
                )
            outputs.append(h)
        outputs.append(max_pool(x, 3, sub.op_stride, "VALID", sub.dilation, self.padding))
        return sub.downsample(jnp.concatenate(outputs, axis=-1))

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> tuple[jax.Array, dict]:
        """x [N, H, W, 3] in [0, 1] -> (logits [N, 1000], per-stage feature maps)."""
        conv_bn, features = _ConvBN(self.padding, train), {}
        sub = self._subsampler(1, 1)
        h = sub.downsample(conv_bn(self._preprocess(x), 32, 3, 1, sub.op_stride, "VALID"))
        d = sub.out_dilation
        h = conv_bn(conv_bn(h, 32, 3, d, padding="VALID"), 64, 3, d)
        features["stage1"] = h

        sub = self._subsampler(2, d)
        h = sub.downsample(max_pool(h, 3, sub.op_stride, "VALID", d, self.padding))
        d = sub.out_dilation
        h = conv_bn(conv_bn(h, 80, 1, d, padding="VALID"), 192, 3, d, padding="VALID")
        features["stage2"] = h

        sub = self._subsampler(3, d)
        h = sub.downsample(max_pool(h, 3, sub.op_stride, "VALID", d, self.padding))
        d = sub.out_dilation
        branch_0 = conv_bn(h, 96, 1, d)
        branch_1 = conv_bn(conv_bn(h, 48, 1, d), 64, 5, d)
        branch_2 = conv_bn(conv_bn(conv_bn(h, 64, 1, d), 96, 3, d), 96, 3, d)
        branch_pool = conv_bn(avg_pool(h, 3, 1, "SAME", d, self.padding), 64, 1, d)
        h = jnp.concatenate([branch_0, branch_1, branch_2, branch_pool], axis=-1)  # mixed_5b
        for index in range(1, 11):
            h = nn.relu(self._residual(h, conv_bn, "block35", index, d))
        features["stage3"] = h

        sub = self._subsampler(4, d)
        h, d = self._reduction(h, conv_bn, "mixed_6a", sub), sub.out_dilation
        for index in range(1, 21):
            h = nn.relu(self._residual(h, conv_bn, "block17", index, d))
        features["stage4"] = h

        sub = self._subsampler(5, d)
        h, d = self._reduction(h, conv_bn, "mixed_7a", sub), sub.out_dilation
        for index in range(1, 10):
            h = nn.relu(self._residual(h, conv_bn, "block8", index, d))
        h = self._residual(h, conv_bn, "block8", 10, d, scale=1.0)
        h = conv_bn(h, 1536, 1, d, name="conv_7b")
        features["stage5"] = h
        return nn.Dense(1000, name="predictions")(global_avg_pool(h)), features
