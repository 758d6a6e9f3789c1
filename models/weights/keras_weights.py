"""Keras Applications ImageNet weights (HDF5) -> flax variables of the ports in models/.

Two file formats are read, both with h5py:

- legacy (the files Keras distributes for weights='imagenet', and Keras 2 `save_weights`):
  root attr 'layer_names' lists the layers; group <layer> has attr 'weight_names', each a
  path inside that group to one array ('conv1_conv/kernel:0'). Keras splits a long list
  attribute into 'layer_names0', 'layer_names1', ...; a full-model file nests all of it in
  a 'model_weights' group.
- Keras 3 `model.save_weights('x.weights.h5')`: group 'layers/<class_name>[_k]/vars' whose attr
  'name' is the layer's name and whose datasets '0', '1', ... are its variables in order.

Either way a layer's arrays come in Keras' variable order: Conv2D / Dense (kernel, bias),
BatchNormalization (gamma, beta, moving_mean, moving_variance; no gamma when scale=False).
Kernels are HWIO / [in, out], the same layout as flax `nn.Conv` / `nn.Dense`.

The ports name every Keras layer that holds weights exactly as Keras does, so that
variables['params'][<keras layer name>] holds its kernel/bias/scale and
variables['batch_stats'][<keras layer name>] its moving mean/var. Keras numbers layers it
names itself (InceptionResNetV2's conv2d_bn units) per class in creation order, from a
session-dependent start ('conv2d_1' in Keras 2, 'conv2d' then 'conv2d_1' in Keras 3, higher
if other models were built first). Both sides are therefore compared in a canonical form:
those automatic names renumbered 1, 2, ... per class in the order of their suffix.
"""

import hashlib
import os
import re
import tempfile
import urllib.request
from collections.abc import Mapping

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from models import registry

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
CACHE_ENV = "SHIFTBENCH_CACHE"
# model name -> (ImageNet weights with top, below KERAS_WEIGHTS_URL; Keras' md5 of it)
IMAGENET_FILES = {
    "vgg16": (
        "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "64373286793e3c8b2b4e3219cbf3544b",
    ),
    "resnet50": (
        "resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        "2cb95161c43110f7111970584f804107",
    ),
    "inception_resnet_v2": (
        "inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
        "e693bd0210a403b3192acc6073ad2e96",
    ),
}

_AUTO_NAME = re.compile(r"^(conv2d|batch_normalization|dense)(?:_(\d+))?$")


def canonical_layer_names(names: list[str]) -> dict[str, str]:
    """Map layer names to their canonical form (see module docstring).

    Args:
      names: layer names of one model, e.g. ['conv2d', 'conv2d_1', 'block35_1_conv'].

    Returns:
      name -> canonical name; Keras' automatic names renumbered from 1 per class in suffix
      order ('conv2d' -> 'conv2d_1', 'conv2d_1' -> 'conv2d_2'), other names unchanged.
    """
    auto: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = _AUTO_NAME.match(name)
        if match:
            auto.setdefault(match[1], []).append((int(match[2] or 0), name))
    canonical = {name: name for name in names}
    for prefix, numbered in auto.items():
        for rank, (_, name) in enumerate(sorted(numbered), start=1):
            canonical[name] = f"{prefix}_{rank}"
    return canonical


def _text(value) -> str:
    """An HDF5 string attribute (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr_list(group: h5py.Group, name: str) -> list[str]:
    """A list attribute that Keras may have split into '<name>0', '<name>1', ... (64 KiB cap)."""
    if name in group.attrs:
        return list(map(_text, group.attrs[name]))
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values += map(_text, group.attrs[f"{name}{chunk}"])
        chunk += 1
    return values


def _legacy_layers(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    layers = {}
    for name in _attr_list(group, "layer_names"):
        weight_names = _attr_list(group[name], "weight_names")
        if weight_names:
            layers[name] = [np.asarray(group[name][w]) for w in weight_names]
    return layers


def _keras3_layers(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    layers = {}
    for layer in group.values():
        variables = layer["vars"]
        if len(variables):
            layers[_text(variables.attrs["name"])] = [
                np.asarray(variables[str(i)]) for i in range(len(variables))
            ]
    return layers


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Read the weights of every layer in a Keras HDF5 weights file (either format).

    Args:
      path: a legacy Keras weights file ('*_tf_kernels.h5', or a full-model .h5 with a
        'model_weights' group) or a Keras 3 '*.weights.h5' file.

    Returns:
      layer name -> its arrays in Keras variable order; layers without weights left out.

    Raises:
      ValueError: the file is missing, not HDF5, in neither format, or lacks an array that
        its own index names.
    """
    try:
        with h5py.File(path, "r") as f:
            group = f.get("model_weights", f)
            if _attr_list(group, "layer_names"):
                return _legacy_layers(group)
            if "layers" in group:
                return _keras3_layers(group["layers"])
    except (OSError, KeyError) as error:
        raise ValueError(
            f"weights file {path!r} cannot be read as Keras HDF5 weights: {error}"
        ) from error
    raise ValueError(
        f"weights file {path!r} is not a Keras weights file: it has neither a 'layer_names' "
        "attribute (legacy format) nor a 'layers' group (Keras 3 .weights.h5)"
    )


def _keras_order(name: str, template: Mapping) -> list[tuple[str, str]]:
    """(collection, variable) pairs of one layer in Keras' variable order."""
    params = template["params"].get(name, {})
    if name in template.get("batch_stats", {}):
        return [("params", v) for v in ("scale", "bias") if v in params] + [
            ("batch_stats", "mean"),
            ("batch_stats", "var"),
        ]
    return [("params", v) for v in ("kernel", "bias") if v in params]


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def keras_to_flax(
    layers: Mapping[str, list[np.ndarray]], template: Mapping, source: str = "weights file"
) -> dict:
    """Place Keras layer weights into a flax variables tree of the same model.

    Args:
      layers: layer name -> arrays in Keras variable order (as `read_keras_h5` returns).
      template: the port's variables (arrays or jax.ShapeDtypeStruct), {'params': {layer:
        {...}}, 'batch_stats': {layer: {...}}}, keyed by canonical Keras layer names.
      source: what to call the weights in error messages (e.g. the file path).

    Returns:
      variables with the template's structure: float32 jax arrays from `layers`.

    Raises:
      ValueError: naming the first layer (in natural name order) that is missing from
        `layers`, has another number of arrays, or an array of another shape (expected vs
        found); or listing the layers of `layers` that the model does not have.
    """
    found = {
        canonical: layers[name] for name, canonical in canonical_layer_names(list(layers)).items()
    }
    model_layers = sorted({*template["params"], *template.get("batch_stats", {})}, key=_natural_key)
    variables: dict = {collection: {} for collection in template}
    for name in model_layers:
        order = _keras_order(name, template)
        if name not in found:
            raise ValueError(f"{source} does not fit: it has no weights for layer {name!r}")
        if len(found[name]) != len(order):
            raise ValueError(
                f"{source} does not fit at layer {name!r}: expected {len(order)} arrays "
                f"({', '.join(var for _, var in order)}), found {len(found[name])}"
            )
        for (collection, var), array in zip(order, found[name]):
            expected = tuple(template[collection][name][var].shape)
            if tuple(array.shape) != expected:
                raise ValueError(
                    f"{source} does not fit at layer {name!r}, {var}: expected shape "
                    f"{expected}, found {tuple(array.shape)}"
                )
            variables[collection].setdefault(name, {})[var] = jnp.asarray(array, jnp.float32)
    extra = sorted(set(found) - set(model_layers), key=_natural_key)
    if extra:
        raise ValueError(f"{source} does not fit: layers the model does not have: {extra}")
    return variables


def _check_model_name(model_name: str) -> None:
    if model_name not in IMAGENET_FILES:
        raise ValueError(f"model_name must be one of {sorted(IMAGENET_FILES)}, got {model_name!r}")


def imagenet_weights_path(model_name: str) -> str:
    """Local path of Keras' ImageNet weights for `model_name`, downloading them if needed.

    The file is cached in $SHIFTBENCH_CACHE (default ~/.cache/shiftbench) and checked
    against Keras' md5 when downloaded.

    Args:
      model_name: 'vgg16', 'resnet50' or 'inception_resnet_v2'.

    Returns:
      path of the cached '<model>_weights_tf_dim_ordering_tf_kernels.h5'.

    Raises:
      ValueError: unknown model_name, download failure (offline) or md5 mismatch.
    """
    _check_model_name(model_name)
    file, expected_md5 = IMAGENET_FILES[model_name]
    cache = os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/shiftbench")
    path = os.path.join(cache, os.path.basename(file))
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    url = KERAS_WEIGHTS_URL + file
    md5 = hashlib.md5()
    with tempfile.NamedTemporaryFile(dir=cache, delete=False) as partial:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    md5.update(chunk)
                    partial.write(chunk)
        except OSError as error:
            os.unlink(partial.name)
            raise ValueError(
                f"cannot download {url} (offline? pass a local copy as the weights path): {error}"
            ) from error
    if md5.hexdigest() != expected_md5:
        os.unlink(partial.name)
        raise ValueError(f"{url} downloaded with md5 {md5.hexdigest()}, expected {expected_md5}")
    os.replace(partial.name, path)
    return path


def load_keras_weights(model_name: str, weights: str, image_size: int | None = None) -> dict:
    """Flax variables for a port in models/ from Keras Applications weights.

    The variables fit every variant of the model (stride_mode, full_stages, padding): the
    parameter tree is the same in all of them.

    Args:
      model_name: 'vgg16', 'resnet50' or 'inception_resnet_v2'.
      weights: 'imagenet' (Keras' ImageNet file, downloaded into the cache) or the path of a
        Keras HDF5 weights file (legacy or Keras 3 .weights.h5) of the model with its top.
      image_size: input size (pixels, square) the weights were made for; only VGG16's fully
        connected head depends on it. Default: the model's ImageNet size (224, 224, 299).

    Returns:
      {'params': ..., 'batch_stats': ...} (VGG16: 'params' only), float32, for
      `model.apply(variables, images)`.

    Raises:
      ValueError: unknown model_name, unreadable file, or a file that does not fit the
        model (naming the first layer that does not, expected vs found shape).
    """
    _check_model_name(model_name)
    path = imagenet_weights_path(model_name) if weights == "imagenet" else weights
    layers = read_keras_h5(path)
    size = registry.input_size(model_name) if image_size is None else image_size
    template = jax.eval_shape(
        registry.build(model_name).init,
        jax.random.key(0),
        jnp.zeros((1, size, size, 3), jnp.float32),
    )
    return keras_to_flax(layers, template, source=f"weights file {path!r}")
