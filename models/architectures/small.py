"""Small CNNs for 28-32 px inputs whose subsampling is a switch (see models/layers/subsampling.py).

Three families, three stages each (stage k > 1 starts with a stride-2 layer):
- `VGGSmall`: stage widths (w, 2w, 4w); each stage = [MaxPool 2x2/2 for k > 1] + `depth`
  x (Conv 3x3 + BN + ReLU).
- `CifarResNet`: He et al. 2016 CIFAR ResNet, depth = 6n + 2 (20, 32, 44, 56): stem Conv 3x3 +
  BN + ReLU, then stages of n basic blocks of widths (w, 2w, 4w); the first block of stages 2, 3
  has stride 2. `shortcut`: 'A' = identity, subsampled, channels zero-padded; 'B' = 1x1
  projection + BN where the shape changes.
- `AllConvNet`: Springenberg-style, stage widths (w, 2w, 2w); each stage = [Conv 3x3 stride 2 +
  BN + ReLU for k > 1] + `depth` x (Conv 3x3 + BN + ReLU).
Head: 'gap' = global average pool + Dense; 'flatten' = flatten + Dense (on a 'full' map it reads
the stride lattice [::D, ::D], so that parameters keep their shapes).

Fields shared by all families:
  num_classes; stride_mode 'subsample' | 'blur' | 'aps' | 'full'; blur_size 1..7;
  full_stages 0..2: stride_mode applies to the strided stages (2 and 3) except the last
  `full_stages` of them, which are 'full' (stride_mode 'full' makes both full);
  padding 'zero' | 'circular' (every conv and pool); width; depth; head 'gap' | 'flatten';
  mean, std: per-channel (or one value for all) normalisation of the [0, 1] input.
All modes have identical parameter trees. Interface:
  model.apply(variables, x [N, H, W, C] float32 in [0, 1], train=False)
    -> (logits [N, num_classes], {'stage1': [N, h, w, c], 'stage2': ..., 'stage3': ...})
  (train=True needs mutable=['batch_stats']); model.feature_strides() -> {'stage1': 1, ...}: the
  cumulative stride of each returned map (a shift by d moves it by d / stride): 1, 2, 4, except
  that 'full' stages add no stride (their maps are dense).
Named variants: vgg_small, resnet20, resnet32, resnet44, resnet56, allconv (functools.partial).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from models.layers.conv import (
    PADDING_MODES,
    Conv,
    ReLU,
    check_choice,
    check_int,
    global_avg_pool,
    max_pool,
)
from models.layers.subsampling import MAX_BLUR_SIZE, STRIDE_MODES, Subsampler, stage_modes

HEADS = ("gap", "flatten")
SHORTCUTS = ("A", "B")
NUM_STAGES = 3
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm; fields as `conv.Conv`. Returns [N, h, w, features]."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding_mode: str = "zero"

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool) -> jax.Array:
        """x [N, H, W, Cin] -> [N, h, w, features]; BN uses batch stats when train."""
        x = Conv(
            self.features,
            self.kernel_size,
            self.stride,
            "SAME",
            self.dilation,
            self.padding_mode,
            use_bias=False,
            name="conv",
        )(x)
        return nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name="bn"
        )(x)


class SmallNet(nn.Module):
    """Fields and plumbing shared by the small families (see the module docstring)."""

    num_classes: int = 10
    stride_mode: str = "subsample"
    blur_size: int = 4
    full_stages: int = 0
    padding: str = "zero"
    width: int = 16
    depth: int = 2
    head: str = "gap"
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.25,)

    def __post_init__(self):
        check_int("num_classes", self.num_classes)
        check_choice("stride_mode", self.stride_mode, STRIDE_MODES)
        check_int("blur_size", self.blur_size, 1, MAX_BLUR_SIZE)
        check_int("full_stages", self.full_stages, 0, NUM_STAGES - 1)
        check_choice("padding", self.padding, PADDING_MODES)
        check_int("width", self.width)
        check_int("depth", self.depth)
        check_choice("head", self.head, HEADS)
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(
                f"mean and std must be non-empty, of equal lengths, std > 0; got mean "
                f"{self.mean!r}, std {self.std!r}"
            )
        super().__post_init__()

    def _modes(self) -> tuple[str, ...]:
        """The mode of each strided stage (stages 2 .. NUM_STAGES)."""
        return stage_modes(self.stride_mode, self.full_stages, NUM_STAGES - 1)

    def feature_strides(self) -> dict[str, int]:
        """Cumulative stride of each returned feature map: {'stage1': 1, 'stage2': 2, ...}."""
        strides, stride = {"stage1": 1}, 1
        for k, mode in enumerate(self._modes(), start=2):
            stride *= 1 if mode == "full" else 2
            strides[f"stage{k}"] = stride
        return strides

    def circular_period(self, image_shape: tuple[int, ...]) -> int | None:
        """S such that circular shifts of the input that differ by multiples of S (on both axes)
        give the same logits, or None when no such S is known.

        With circular padding in every conv and pool, each layer commutes with circular shifts
        by multiples of its cumulative stride, so such inputs give feature maps that are
        circular permutations of one another, and the GAP head the same logits (up to the
        float32 order of its sum). S is the total stride (1 for 'full'); H and W must be
        multiples of it. None with zero padding (the borders do not move with the content),
        a flatten head (positions reach the classifier), or sizes not divisible by S.

        Args:
          image_shape: (H, W[, C]) of the model's input, px.
        """
        if self.padding != "circular" or self.head != "gap":
            return None
        period = max(self.feature_strides().values())
        h, w = image_shape[:2]
        return period if h % period == 0 and w % period == 0 else None

    def _subsampler(self, stage: int, dilation: int) -> Subsampler:
        """The stride-2 switch at the start of `stage` (2 .. NUM_STAGES)."""
        return Subsampler(self._modes()[stage - 2], 2, dilation, self.blur_size, self.padding)

    def _normalise(self, x: ArrayLike) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4 or len(self.mean) not in (1, x.shape[-1]):
            raise ValueError(
                f"x must be [N, H, W, C] with C = len(mean) or len(mean) = 1, got "
                f"shape {x.shape} and mean {self.mean!r}"
            )
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

    def _head(self, h: jax.Array, dilation: int) -> jax.Array:
        """Logits [N, num_classes] from the last map h, computed at `dilation`."""
        if self.head == "gap":
            h = global_avg_pool(h)
        else:
            h = h[:, ::dilation, ::dilation].reshape(h.shape[0], -1)
        return nn.Dense(self.num_classes, name="classifier")(h)


class VGGSmall(SmallNet):
    """VGG-style stack: per stage [MaxPool 2x2/2] + depth x (Conv 3x3 + BN + ReLU)."""

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False):
        """x [N, H, W, C] in [0, 1] -> (logits [N, K], {'stage1'..'stage3': [N, h, w, c]})."""
        h, dilation, features = self._normalise(x), 1, {}
        for stage in range(1, NUM_STAGES + 1):
            if stage > 1:
                sub = self._subsampler(stage, dilation)
                h = max_pool(h, 2, sub.op_stride, "VALID", dilation, self.padding)
                h, dilation = sub.downsample(h), sub.out_dilation
            for _ in range(self.depth):
                h = ReLU()(
                    ConvBN(self.width * 2 ** (stage - 1), 3, 1, dilation, self.padding)(h, train)
                )
            features[f"stage{stage}"] = h
        return self._head(h, dilation), features


class AllConvNet(SmallNet):
    """All-convolutional net: per stage [Conv 3x3 stride 2] + depth x Conv 3x3 (+ BN + ReLU)."""

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False):
        """x [N, H, W, C] in [0, 1] -> (logits [N, K], {'stage1'..'stage3': [N, h, w, c]})."""
        h, dilation, features = self._normalise(x), 1, {}
        for stage, width in enumerate((self.width, 2 * self.width, 2 * self.width), start=1):
            if stage > 1:
                sub = self._subsampler(stage, dilation)
                h = ReLU()(ConvBN(width, 3, sub.op_stride, dilation, self.padding)(h, train))
                h, dilation = sub.downsample(h), sub.out_dilation
            for _ in range(self.depth):
                h = ReLU()(ConvBN(width, 3, 1, dilation, self.padding)(h, train))
            features[f"stage{stage}"] = h
        return self._head(h, dilation), features


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; `sub` is its stride switch (factor 1 for plain blocks).

    Main path: Conv 3x3 (stride) + BN + ReLU [+ downsample] + Conv 3x3 + BN; shortcut 'A' or 'B'
    where the shape changes; both paths share the APS phase of the main path.
    """

    features: int
    sub: Subsampler
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x [N, H, W, Cin] -> [N, H / f, W / f, features] (dense for 'full')."""
        sub, pm = self.sub, self.sub.padding_mode
        h = ReLU()(ConvBN(self.features, 3, sub.op_stride, sub.dilation, pm)(x, train))
        phase = sub.phase(h)
        h = sub.downsample(h, phase)
        h = ConvBN(self.features, 3, 1, sub.out_dilation, pm)(h, train)
        if sub.factor == 1 and x.shape[-1] == self.features:
            return ReLU()(h, x)
        if self.shortcut == "B":
            s = ConvBN(self.features, 1, sub.op_stride, sub.dilation, pm, name="shortcut")(x, train)
        else:
            s = x[:, :: sub.op_stride, :: sub.op_stride]
            extra = self.features - x.shape[-1]
            s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return ReLU()(h, sub.downsample(s, phase))


class CifarResNet(SmallNet):
    """He et al. 2016 CIFAR ResNet (depth 6n + 2) with a stride switch; width = stage-1 width."""

    depth: int = 20
    shortcut: str = "A"

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56), got {self.depth!r}"
            )
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False):
        """x [N, H, W, C] in [0, 1] -> (logits [N, K], {'stage1'..'stage3': [N, h, w, c]})."""
        h = ReLU()(
            ConvBN(self.width, 3, 1, 1, self.padding, name="stem")(self._normalise(x), train)
        )
        dilation, features = 1, {}
        for stage in range(1, NUM_STAGES + 1):
            for block in range((self.depth - 2) // 6):
                sub = (
                    self._subsampler(stage, dilation)
                    if stage > 1 and block == 0
                    else Subsampler("subsample", 1, dilation, self.blur_size, self.padding)
                )
                h = BasicBlock(self.width * 2 ** (stage - 1), sub, self.shortcut)(h, train)
                dilation = sub.out_dilation
            features[f"stage{stage}"] = h
        return self._head(h, dilation), features


vgg_small = functools.partial(VGGSmall)
allconv = functools.partial(AllConvNet)
resnet20 = functools.partial(CifarResNet, depth=20)
resnet32 = functools.partial(CifarResNet, depth=32)
resnet44 = functools.partial(CifarResNet, depth=44)
resnet56 = functools.partial(CifarResNet, depth=56)
