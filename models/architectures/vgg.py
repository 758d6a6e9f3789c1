"""VGG16 as in Keras Applications (keras.applications.VGG16), with the subsampling switch.

Five blocks of 3x3 convs (+ bias + ReLU; widths 64, 128, 256, 512, 512; 2, 2, 3, 3, 3 convs),
each ending in MaxPool 2x2 / 2 (the block's only subsampling, so stage k = block k, cumulative
stride 2^k); then Flatten (H, W, C order) + fc1 4096 + ReLU + fc2 4096 + ReLU + predictions 1000.
Keras 'caffe' preprocessing happens inside; ImageNet input 224 x 224 (Flatten fixes the size
the fully connected weights were made for: 7 x 7 x 512 at 224). Returned logits are before
Keras' softmax.

Parameter names are Keras' layer names ('block1_conv1', ..., 'fc1', 'fc2', 'predictions'),
so models/weights/keras_weights.py loads Keras files directly. On a 'full' map the head reads the
stride lattice [::D, ::D] (as models/architectures/small.py), which is exactly the 'subsample' net's map.
"""

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from models.layers.conv import Conv, ReLU, max_pool
from models.layers.preprocessing import KerasPort

BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (width, convs) per block
IMAGE_SIZE = 224


class VGG16(KerasPort):
    """Keras VGG16 (fields: see preprocessing.KerasPort; stages 'stage1'..'stage5' = blocks).

    __call__(x [N, H, W, 3] in [0, 1], train=False) -> (logits [N, 1000], {'stage1': [N, h, w,
    64], ..., 'stage5': [N, h, w, 512]}), each map after its block's pool. `train` is unused
    (VGG16 has neither batch norm nor dropout in Keras).
    """

    STAGE_FACTORS = (2, 2, 2, 2, 2)
    PREPROCESSING = "caffe"
    MIN_IMAGE_SIZE = 32  # five VALID 2x2 pools

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> tuple[jax.Array, dict]:
        """x [N, H, W, 3] in [0, 1] -> (logits [N, 1000], per-stage feature maps)."""
        h, dilation, features = self._preprocess(x), 1, {}
        for block, (width, convs) in enumerate(BLOCKS, start=1):
            for i in range(1, convs + 1):
                h = ReLU()(
                    Conv(width, 3, 1, "SAME", dilation, self.padding, name=f"block{block}_conv{i}")(
                        h
                    )
                )
            sub = self._subsampler(block, dilation)
            h = max_pool(h, 2, sub.op_stride, "VALID", dilation, self.padding)
            h, dilation = sub.downsample(h), sub.out_dilation
            features[f"stage{block}"] = h
        h = h[:, ::dilation, ::dilation].reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(4096, name="fc1")(h))
        h = nn.relu(nn.Dense(4096, name="fc2")(h))
        return nn.Dense(1000, name="predictions")(h), features
