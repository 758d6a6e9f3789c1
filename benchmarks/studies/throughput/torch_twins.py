"""PyTorch twins of two flax models, with the flax weights copied over (optional: needs torch).

The throughput benchmark compares the evaluator with the way the published reference codes
evaluate shift invariance: a PyTorch eager loop over the sweep, `model.eval()`, `no_grad`,
channels_last (`benchmarks.studies.throughput.torch_loops`). These are the same architectures
written in `torch.nn`:

- `CifarResNet`: `models.architectures.small.CifarResNet` (resnet20/32/44/56) with shortcut 'A', head 'gap',
  stride_mode 'subsample' (the plain net the papers evaluate) or 'full' (no subsampling, the
  later convolutions dilated, as the flax switch does), padding 'zero' or 'circular'.
- `ResNet50`: `models.architectures.resnet.ResNet50` (Keras' layout, biases on every conv, 'caffe'
  preprocessing inside), stride_mode 'subsample', padding 'zero'.

- `EfficientNetLite`: `models.architectures.efficientnet_lite.EfficientNetLite` (lite0/1/2) as the reference
  PyTorch code itself (`efficientnet_lite_pytorch.EfficientNet`, the code the port is checked
  against; optional: `pip install efficientnet-lite-pytorch`, not part of any extra),
  with the model's (255 x - 127) / 128 preprocessing in front; stride_mode 'subsample',
  padding 'zero', built for the input size it will see (the reference fixes its TF 'SAME' pads
  for that size).

All take images [N, 3, H, W] float32 in [0, 1] (any memory format) and return logits [N, K].
`from_flax(model, variables)` builds the twin of a flax module and copies its variables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import efficientnet_lite, resnet, small
from models.layers import preprocessing


def _tensor(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def _copy_conv(conv: nn.Conv2d, params: dict) -> None:
    """flax kernel [kh, kw, cin, cout] (+ bias) -> torch weight [cout, cin, kh, kw]."""
    conv.weight.copy_(_tensor(params["kernel"]).permute(3, 2, 0, 1))
    if conv.bias is not None:
        conv.bias.copy_(_tensor(params["bias"]))


def _copy_bn(bn: nn.BatchNorm2d, params: dict, stats: dict) -> None:
    bn.weight.copy_(_tensor(params["scale"]))
    bn.bias.copy_(_tensor(params["bias"]))
    bn.running_mean.copy_(_tensor(stats["mean"]))
    bn.running_var.copy_(_tensor(stats["var"]))


def _copy_dense(linear: nn.Linear, params: dict) -> None:
    linear.weight.copy_(_tensor(params["kernel"]).T)
    linear.bias.copy_(_tensor(params["bias"]))


class _ConvBN(nn.Module):
    """Conv + BatchNorm, the twin of a flax conv/BN pair (dilated, zero or circular padding)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int,
        pad: int,
        bias: bool,
        eps: float,
        dilation: int = 1,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, k, stride, pad * dilation, dilation, bias=bias, padding_mode=padding_mode
        )
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def load(self, params: dict, stats: dict, conv: str, bn: str) -> None:
        _copy_conv(self.conv, params[conv])
        _copy_bn(self.bn, params[bn], stats[bn])


class _BasicBlock(nn.Module):
    """CIFAR ResNet basic block with shortcut 'A' (subsampled identity, channels zero-padded);
    its first conv at `dilation`, its second at `out_dilation` (2x for a 'full' block)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        dilation: int = 1,
        out_dilation: int = 1,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        eps = small._BN_EPSILON
        self.stride, self.extra = stride, cout - cin
        self.c0 = _ConvBN(cin, cout, 3, stride, 1, False, eps, dilation, padding_mode)
        self.c1 = _ConvBN(cout, cout, 3, 1, 1, False, eps, out_dilation, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.relu(self.c0(x)))
        if self.stride == 1 and self.extra == 0:
            return F.relu(h + x)
        s = x[:, :, :: self.stride, :: self.stride]
        s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(h + s)


class CifarResNet(nn.Module):
    """Twin of `models.architectures.small.CifarResNet` (shortcut 'A', 'gap' head; subsampling plain, or
    none with `full`; padding_mode 'zeros' or 'circular', torch's names)."""

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        mean,
        std,
        channels: int = 3,
        full: bool = False,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.register_buffer("mean", _tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", _tensor(std).reshape(1, -1, 1, 1))
        eps = small._BN_EPSILON
        self.stem = _ConvBN(channels, width, 3, 1, 1, False, eps, 1, padding_mode)
        blocks, cin, dilation = [], width, 1
        for stage in range(small.NUM_STAGES):
            for b in range((depth - 2) // 6):
                cout = width * 2**stage
                strided = stage > 0 and b == 0
                stride = 1 if full or not strided else 2
                out = 2 * dilation if full and strided else dilation
                blocks.append(_BasicBlock(cin, cout, stride, dilation, out, padding_mode))
                cin, dilation = cout, out
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] in [0, 1] -> logits [N, num_classes]."""
        h = F.relu(self.stem((x - self.mean) / self.std))
        for block in self.blocks:
            h = block(h)
        return self.classifier(h.mean(dim=(2, 3)))

    def load(self, variables: dict) -> None:
        p, s = variables["params"], variables["batch_stats"]
        self.stem.load(p["stem"], s["stem"], "conv", "bn")
        for i, block in enumerate(self.blocks):
            name = f"BasicBlock_{i}"
            block.c0.load(p[name]["ConvBN_0"], s[name]["ConvBN_0"], "conv", "bn")
            block.c1.load(p[name]["ConvBN_1"], s[name]["ConvBN_1"], "conv", "bn")
        _copy_dense(self.classifier, p["classifier"])


class _Bottleneck(nn.Module):
    """Keras residual_block_v1: 1x1 (stride) / 3x3 / 1x1 convs with biases, BN after each."""

    def __init__(self, cin: int, width: int, stride: int, shortcut: bool):
        super().__init__()
        eps = resnet.BN_EPSILON
        self.c1 = _ConvBN(cin, width, 1, stride, 0, True, eps)
        self.c2 = _ConvBN(width, width, 3, 1, 1, True, eps)
        self.c3 = _ConvBN(width, 4 * width, 1, 1, 0, True, eps)
        self.c0 = _ConvBN(cin, 4 * width, 1, stride, 0, True, eps) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c3(F.relu(self.c2(F.relu(self.c1(x)))))
        return F.relu(h + (x if self.c0 is None else self.c0(x)))


class ResNet50(nn.Module):
    """Twin of `models.architectures.resnet.ResNet50` (Keras layout, 'caffe' preprocessing inside)."""

    def __init__(self):
        super().__init__()
        self.register_buffer(
            "mean_bgr", torch.tensor(preprocessing.CAFFE_MEAN_BGR).reshape(1, 3, 1, 1)
        )
        self.conv1 = _ConvBN(3, 64, 7, 2, 3, True, resnet.BN_EPSILON)
        blocks, cin, self.names = [], 64, []
        for stage, (width, count) in enumerate(resnet.STACKS, start=2):
            for b in range(1, count + 1):
                stride = 2 if b == 1 and stage > 2 else 1
                blocks.append(_Bottleneck(cin, width, stride, b == 1))
                self.names.append(f"conv{stage}_block{b}")
                cin = 4 * width
        self.blocks = nn.ModuleList(blocks)
        self.predictions = nn.Linear(cin, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, H, W] RGB in [0, 1] -> logits [N, 1000]."""
        h = x.flip(1) * 255.0 - self.mean_bgr
        h = F.max_pool2d(F.relu(self.conv1(h)), 3, 2, 1)
        for block in self.blocks:
            h = block(h)
        return self.predictions(h.mean(dim=(2, 3)))

    def load(self, variables: dict) -> None:
        p, s = variables["params"], variables["batch_stats"]
        self.conv1.load(p, s, "conv1_conv", "conv1_bn")
        for name, block in zip(self.names, self.blocks):
            for i in (0, 1, 2, 3):
                layer = getattr(block, f"c{i}")
                if layer is not None:
                    layer.load(p, s, f"{name}_{i}_conv", f"{name}_{i}_bn")
        _copy_dense(self.predictions, p["predictions"])


class EfficientNetLite(nn.Module):
    """The reference `efficientnet_lite_pytorch.EfficientNet` behind the model's preprocessing.

    image_size: the square input it will see (default the model's nominal size): the reference
    fixes its TF 'SAME' pads for it when built.
    """

    def __init__(self, model: efficientnet_lite.EfficientNetLite, image_size: int | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # optional: the reference code

        keys = ("width_multiplier", "depth_multiplier", "input_size")
        fields = tuple(getattr(model, k) for k in keys)
        names = {  # the named variants, functools.partial of EfficientNetLite
            tuple(getattr(efficientnet_lite, alias).keywords[k] for k in keys): alias
            for alias in efficientnet_lite.PRETRAINED
        }
        if fields not in names:
            raise ValueError(
                "model: the reference code has lite0/1/2 only (width, depth, input size "
                f"{sorted(names)}), got {fields}."
            )
        self.net = EfficientNet.from_name(
            names[fields].replace("_", "-"),
            num_classes=model.num_classes,
            image_size=image_size or model.input_size,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = efficientnet_lite.INPUT_STD
        return self.net((x * 255.0 - efficientnet_lite.INPUT_MEAN) / scale)

    def load(self, variables: dict) -> None:
        state = efficientnet_lite.state_dict_from_variables(variables, list(self.net.state_dict()))
        self.net.load_state_dict({k: _tensor(v) for k, v in state.items()}, strict=False)


def from_flax(model: Any, variables: dict, image_size: int | None = None) -> nn.Module:
    """The torch twin of flax `model` (CifarResNet, ResNet50, EfficientNetLite) in eval mode,
    weights copied. image_size: the square input size the twin will see (EfficientNetLite only,
    whose reference code fixes its pads for it; default the model's nominal size).

    Raises:
      ValueError: a model or a variant (stride_mode, padding, shortcut, head) without a twin.
    """
    mode, padding = getattr(model, "stride_mode", None), getattr(model, "padding", None)
    cifar = (
        isinstance(model, small.CifarResNet)
        and mode in ("subsample", "full")
        and model.full_stages == 0
        and padding in ("zero", "circular")
    )
    if cifar:
        if model.shortcut != "A" or model.head != "gap":
            raise ValueError(
                f"model: the torch twin has shortcut 'A' and head 'gap', got shortcut "
                f"{model.shortcut!r}, head {model.head!r}."
            )
        channels = variables["params"]["stem"]["conv"]["kernel"].shape[2]
        twin = CifarResNet(
            model.depth,
            model.width,
            model.num_classes,
            model.mean,
            model.std,
            channels,
            full=mode == "full",
            padding_mode="circular" if padding == "circular" else "zeros",
        )
    elif isinstance(model, resnet.ResNet50) and mode == "subsample" and padding == "zero":
        twin = ResNet50()
    elif (
        isinstance(model, efficientnet_lite.EfficientNetLite)
        and mode == "subsample"
        and padding == "zero"
    ):
        twin = EfficientNetLite(model, image_size)
    else:
        raise ValueError(
            f"model: torch twins exist for CifarResNet (stride_mode 'subsample' or 'full', "
            f"padding 'zero' or 'circular'), ResNet50 and EfficientNetLite ('subsample', "
            f"'zero'), got {type(model).__name__} ({mode!r}, {padding!r})."
        )
    with torch.no_grad():
        twin.load(variables)
    return twin.eval()
