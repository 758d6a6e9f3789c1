"""The Keras Applications ports (models/architectures/vgg.py, resnet.py, inception_resnet_v2.py) and their
weight loading (models/weights/keras_weights.py).

Against Keras: each model is built with keras.applications (weights=None, fixed seed; batch-norm
statistics, gammas and biases then set to random values so that a mix-up of them shows), saved
in both HDF5 formats, loaded into the flax port and run on the same random images: logits and
softmax must agree. All Keras checks of one model are one test, so that under pytest-xdist only
one worker builds it. Inputs are small (VGG16 and ResNet50 at 64 px, InceptionResNetV2 at its
minimum, 75 px) to keep the file within the CI budget.

The subsampling variants are checked on random variables: same parameter tree, 'full' maps on
the stride lattice equal the plain maps, APS with circular padding is shift invariant.
"""

import dataclasses
import functools
import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported (it then needs no TensorFlow)

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.inference import classifiers
from models import registry
from models.layers.preprocessing import keras_preprocess
from models.weights import keras_weights

keras = pytest.importorskip("keras")

SEED = 0
# model name -> (keras.applications constructor, its module (preprocess_input), test input px)
CASES = {
    "vgg16": ("VGG16", "vgg16", 64),
    "resnet50": ("ResNet50", "resnet50", 64),
    "inception_resnet_v2": ("InceptionResNetV2", "inception_resnet_v2", 75),
}


def _slow_irv2(*cases):
    """Parametrize cases; those of inception_resnet_v2 (first element) marked slow."""
    return [
        pytest.param(*c, marks=pytest.mark.slow)
        if c[0] == "inception_resnet_v2"
        else pytest.param(*c)
        for c in cases
    ]


@dataclasses.dataclass
class Reference:
    """A randomly initialised Keras model, its weight files and its outputs."""

    model: object  # the keras.Model (classifier_activation=None: returns logits)
    size: int  # input pixels
    images: np.ndarray  # [2, size, size, 3] in [0, 1]
    logits: np.ndarray  # [2, 1000], Keras' output on preprocess_input(255 * images)
    files: dict  # format ('keras3' | 'legacy') -> path


def write_legacy_h5(model, path) -> None:
    """Write `model`'s weights as Keras' distributed ImageNet files are laid out.

    Root attr 'layer_names' (every layer, in model order); per layer a group with attr
    'weight_names' ('<layer>/<variable>:0'), each the path of a dataset inside that group.
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(w))


def _randomise(model, rng: np.random.Generator) -> None:
    """Random batch-norm statistics, gammas and biases (Keras initialises them to 0 / 1)."""
    for layer in model.layers:
        for w in layer.weights:
            if w.name in ("gamma", "moving_variance"):
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
            elif w.name in ("beta", "moving_mean", "bias"):
                w.assign(rng.normal(0.0, 0.2, w.shape).astype(np.float32))


def _keras_logits(model, module: str, images: np.ndarray) -> np.ndarray:
    preprocess = getattr(keras.applications, module).preprocess_input
    return np.asarray(model.predict(preprocess(255.0 * images), verbose=0))


def _make_reference(name: str, directory) -> Reference:
    constructor, module, size = CASES[name]
    keras.utils.set_random_seed(SEED)
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    _randomise(model, np.random.default_rng(SEED))
    images = np.random.default_rng(SEED + 1).random((2, size, size, 3), dtype=np.float32)
    files = {
        "keras3": str(directory / f"{name}.weights.h5"),
        "legacy": str(directory / f"{name}_tf_dim_ordering_tf_kernels.h5"),
    }
    model.save_weights(files["keras3"])
    write_legacy_h5(model, files["legacy"])
    return Reference(model, size, images, _keras_logits(model, module, images), files)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(name) -> Reference, built once per model and module."""
    built = {}

    def get(name: str) -> Reference:
        if name not in built:
            built[name] = _make_reference(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


def _random_variables(name: str) -> dict:
    """Random variables (He-scaled kernels) of model `name` at its test input size (CASES).

    Only VGG16's (fully connected head) depend on the input size.
    """
    size = CASES[name][2]
    return classifiers.random_variables(registry.build(name), (size, size, 3), SEED)


@functools.cache
def _jitted_apply(name: str, **fields):
    """jax.jit(model.apply) of registry model `name`, one per variant (compiles are reused)."""
    return jax.jit(registry.build(name, **fields).apply)


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def _relative_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_canonical_layer_names_renumber_keras_automatic_names():
    names = [
        "conv2d",
        "conv2d_10",
        "conv2d_2",
        "conv2d_1",
        "batch_normalization_7",
        "block35_1_conv",
        "conv_7b_bn",
        "dense_3",
    ]
    assert keras_weights.canonical_layer_names(names) == {
        "conv2d": "conv2d_1",
        "conv2d_1": "conv2d_2",
        "conv2d_2": "conv2d_3",
        "conv2d_10": "conv2d_4",
        "batch_normalization_7": "batch_normalization_1",
        "block35_1_conv": "block35_1_conv",
        "conv_7b_bn": "conv_7b_bn",
        "dense_3": "dense_1",
    }


@pytest.mark.parametrize(
    "mode,module", [("caffe", "vgg16"), ("caffe", "resnet50"), ("tf", "inception_resnet_v2")]
)
def test_keras_preprocess_matches_keras(mode, module):
    images = np.random.default_rng(3).random((2, 5, 4, 3), dtype=np.float32)
    expected = getattr(keras.applications, module).preprocess_input(255.0 * images)
    np.testing.assert_allclose(keras_preprocess(images, mode), expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(
        jax.jit(keras_preprocess, static_argnums=1)(images, mode), expected, rtol=1e-6, atol=1e-4
    )


@pytest.mark.parametrize(
    "images,mode,match",
    [
        (np.zeros((1, 4, 4, 3)), "torch", "mode"),
        (np.zeros((4, 4, 3)), "caffe", "images"),
        (np.zeros((1, 4, 4, 1)), "tf", "images"),
    ],
)
def test_keras_preprocess_rejects_bad_input(images, mode, match):
    with pytest.raises(ValueError, match=match):
        keras_preprocess(images, mode)


@pytest.mark.parametrize("name", _slow_irv2(*[(n,) for n in CASES]))
def test_port_matches_keras(reference, name):
    """Both file formats load into the port, which then computes Keras' logits and softmax."""
    ref = reference(name)
    for path in ref.files.values():
        variables = keras_weights.load_keras_weights(name, path, ref.size)
        logits, features = _jitted_apply(name)(variables, ref.images)
        assert logits.shape == (2, 1000)
        assert _relative_error(logits, ref.logits) < 1e-4, path
        assert np.max(np.abs(jax.nn.softmax(logits) - _softmax(ref.logits))) < 1e-4, path
    strides = registry.build(name).feature_strides()
    assert list(features) == list(strides) == [f"stage{k}" for k in range(1, 6)]
    for stage, stride in strides.items():  # VALID layers: at most ceil(size / stride)
        assert 0 < features[stage].shape[1] <= -(-ref.size // stride)
    # the test's legacy file is laid out as Keras' ImageNet files: Keras itself reads it
    ref.model.set_weights([np.zeros_like(w) for w in ref.model.get_weights()])
    ref.model.load_weights(ref.files["legacy"])
    np.testing.assert_array_equal(_keras_logits(ref.model, CASES[name][1], ref.images), ref.logits)


def test_mismatched_file_names_first_bad_layer(reference, tmp_path):
    ref = reference("vgg16")
    bad = tmp_path / "bad.h5"
    with open(ref.files["legacy"], "rb") as good:
        bad.write_bytes(good.read())
    with h5py.File(bad, "r+") as f:
        del f["block1_conv2/block1_conv2/kernel:0"]
        f["block1_conv2/block1_conv2"].create_dataset("kernel:0", data=np.zeros((3, 3, 64, 32)))
    with pytest.raises(
        ValueError,
        match=r"'block1_conv2', kernel: expected shape "
        r"\(3, 3, 64, 64\), found \(3, 3, 64, 32\)",
    ):
        keras_weights.load_keras_weights("vgg16", str(bad), ref.size)
    with pytest.raises(ValueError, match="no weights for layer 'conv1_bn'"):
        keras_weights.load_keras_weights("resnet50", ref.files["keras3"])
    with pytest.raises(ValueError, match=r"expected shape \(512, 4096\), found \(2048, 4096\)"):
        keras_weights.load_keras_weights("vgg16", ref.files["keras3"], 32)
    not_hdf5 = tmp_path / "not.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(ValueError, match="cannot be read as Keras HDF5"):
        keras_weights.load_keras_weights("vgg16", str(not_hdf5))
    with pytest.raises(ValueError, match="model_name"):
        keras_weights.load_keras_weights("vgg19", ref.files["keras3"])


def test_read_legacy_file_with_split_attributes(tmp_path):
    """Keras splits long attributes ('layer_names0', 'layer_names1', ...); both parts count."""
    path = tmp_path / "split.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights")  # the layout of a full-model file
        group.attrs["layer_names0"] = [b"fc1", b"flatten"]
        group.attrs["layer_names1"] = [b"fc2"]
        for name, arrays in [
            ("fc1", [np.ones((2, 3)), np.zeros(3)]),
            ("flatten", []),
            ("fc2", [np.full((3, 1), 2.0)]),
        ]:
            layer = group.create_group(name)
            layer.attrs["weight_names"] = [f"{name}/w{i}:0".encode() for i in range(len(arrays))]
            for i, array in enumerate(arrays):
                layer.create_dataset(f"{name}/w{i}:0", data=array)
    layers = keras_weights.read_keras_h5(str(path))
    assert list(layers) == ["fc1", "fc2"]
    np.testing.assert_array_equal(layers["fc1"][0], np.ones((2, 3)))
    np.testing.assert_array_equal(layers["fc2"][0], np.full((3, 1), 2.0))


def test_keras_to_flax_counts_and_extra_layers():
    template = {"params": {"fc1": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}}}
    layers = {"fc1": [np.ones((2, 3)), np.full(3, 2.0)]}
    variables = keras_weights.keras_to_flax(layers, template)
    np.testing.assert_array_equal(variables["params"]["fc1"]["kernel"], np.ones((2, 3)))
    np.testing.assert_array_equal(variables["params"]["fc1"]["bias"], np.full(3, 2.0))
    with pytest.raises(ValueError, match=r"'fc1': expected 2 arrays \(kernel, bias\), found 1"):
        keras_weights.keras_to_flax({"fc1": [np.ones((2, 3))]}, template)
    with pytest.raises(ValueError, match=r"does not have: \['fc9'\]"):
        keras_weights.keras_to_flax({**layers, "fc9": [np.ones(1)]}, template)


def test_keras_to_flax_batch_norm_order():
    """Keras (gamma, beta, moving_mean, moving_variance) -> scale, bias, mean, var."""
    template = {
        "params": {"bn": {"scale": jnp.zeros(2), "bias": jnp.zeros(2)}},
        "batch_stats": {"bn": {"mean": jnp.zeros(2), "var": jnp.zeros(2)}},
    }
    layers = {"bn": [np.full(2, float(i)) for i in range(4)]}
    variables = keras_weights.keras_to_flax(layers, template)
    assert {k: float(v[0]) for k, v in variables["params"]["bn"].items()} == {
        "scale": 0.0,
        "bias": 1.0,
    }
    assert {k: float(v[0]) for k, v in variables["batch_stats"]["bn"].items()} == {
        "mean": 2.0,
        "var": 3.0,
    }


@pytest.mark.parametrize("name", _slow_irv2(*[(n,) for n in CASES]))
def test_every_variant_has_the_same_parameter_tree(name):
    size = CASES[name][2]
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = [
        _shapes(jax.eval_shape(registry.build(name, **fields).init, jax.random.key(0), x))
        for fields in [
            {},
            {"stride_mode": "blur"},
            {"stride_mode": "full"},
            {"stride_mode": "aps", "padding": "circular"},
        ]
    ]
    assert all(s == shapes[0] for s in shapes[1:])


@pytest.mark.parametrize(
    "name,fields,size",
    _slow_irv2(
        # 'full' everywhere costs ~s^2 more compute, hence ResNet50 at 8 px
        ("vgg16", {"full_stages": 2}, 64),
        ("resnet50", {"stride_mode": "full"}, 8),
        ("inception_resnet_v2", {"full_stages": 2}, 75),
    ),
)
def test_full_variant_sampled_on_lattice_is_subsample(name, fields, size):
    variables = _random_variables(name)
    images = np.random.default_rng(SEED).random((1, size, size, 3), dtype=np.float32)
    plain, full = registry.build(name), registry.build(name, **fields)
    logits, features = _jitted_apply(name)(variables, images)
    full_logits, full_features = _jitted_apply(name, **fields)(variables, images)
    for stage, stride in plain.feature_strides().items():
        ratio = stride // full.feature_strides()[stage]
        sampled = full_features[stage][:, ::ratio, ::ratio]
        assert sampled.shape == features[stage].shape, stage
        assert _relative_error(sampled, features[stage]) < 1e-4, stage
    if name == "vgg16":  # the flatten head reads the lattice: the same logits
        assert _relative_error(full_logits, logits) < 1e-4


def _circular_shifts(images):
    """A different circular shift of each image [N, H, W, 3]."""
    return jnp.stack(
        [jnp.roll(image, (3 * i + 1, 1 - 5 * i), (0, 1)) for i, image in enumerate(images)]
    )


@pytest.mark.parametrize("name", _slow_irv2(*[(n,) for n in CASES]))
def test_aps_circular_is_invariant_to_circular_shifts(name):
    """APS with circular padding: logits unchanged by circular shifts (Chaman & Dokmanic)."""
    size = 64  # every stride divides it
    variables = _random_variables(name)
    images = np.random.default_rng(SEED).random((2, size, size, 3), dtype=np.float32)
    apply = _jitted_apply(name, stride_mode="aps", padding="circular")
    logits = apply(variables, images)[0]
    assert _relative_error(apply(variables, _circular_shifts(images))[0], logits) < 1e-4


def test_aps_batched_looped_vmapped_agree():
    """APS picks its phase per example: a batch, a loop and a vmap give the same logits; the
    plain circular net, unlike APS, changes under the shifts."""
    variables = _random_variables("resnet50")
    images = np.random.default_rng(SEED).random((2, 32, 32, 3), dtype=np.float32)
    images = jnp.concatenate([images, _circular_shifts(images)])
    apply = _jitted_apply("resnet50", stride_mode="aps", padding="circular")
    logits = apply(variables, images)[0]
    looped = jnp.concatenate([apply(variables, images[i : i + 1])[0] for i in range(4)])
    vmapped = jax.vmap(lambda x: apply(variables, x[None])[0][0])(images)
    assert _relative_error(looped, logits) < 1e-5
    assert _relative_error(vmapped, logits) < 1e-5
    assert _relative_error(logits[2:], logits[:2]) < 1e-4
    plain = _jitted_apply("resnet50", padding="circular")(variables, images)[0]
    assert _relative_error(plain[2:], plain[:2]) > 1e-2


@pytest.mark.parametrize(
    "name,fields,expected",
    [
        ("vgg16", {}, (2, 4, 8, 16, 32)),
        ("vgg16", {"full_stages": 2}, (2, 4, 8, 8, 8)),
        ("resnet50", {}, (4, 4, 8, 16, 32)),
        ("resnet50", {"stride_mode": "blur", "full_stages": 3}, (4, 4, 4, 4, 4)),
        ("resnet50", {"stride_mode": "full"}, (1, 1, 1, 1, 1)),
        ("inception_resnet_v2", {"full_stages": 1}, (2, 4, 8, 16, 16)),
    ],
)
def test_feature_strides(name, fields, expected):
    strides = registry.build(name, **fields).feature_strides()
    assert strides == {f"stage{k}": s for k, s in enumerate(expected, start=1)}


@pytest.mark.parametrize(
    "name,fields,match",
    [
        ("vgg16", {"stride_mode": "strided"}, "stride_mode"),
        ("vgg16", {"full_stages": 6}, "full_stages"),
        ("resnet50", {"full_stages": 5}, "full_stages"),
        ("inception_resnet_v2", {"blur_size": 8}, "blur_size"),
        ("inception_resnet_v2", {"padding": "reflect"}, "padding"),
    ],
)
def test_bad_fields_raise(name, fields, match):
    with pytest.raises(ValueError, match=match):
        registry.build(name, **fields)


@pytest.mark.parametrize("name,size", [("vgg16", 31), ("inception_resnet_v2", 74)])
def test_too_small_images_raise(name, size):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    with pytest.raises(ValueError, match=f"at least {size + 1} x {size + 1} pixels"):
        jax.eval_shape(registry.build(name).init, jax.random.key(0), x)
    jax.eval_shape(registry.build(name, padding="circular").init, jax.random.key(0), x)


def test_imagenet_weights_cache_and_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv(keras_weights.CACHE_ENV, str(tmp_path))
    cached = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    cached.write_bytes(b"cached")
    assert keras_weights.imagenet_weights_path("resnet50") == str(cached)

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras_weights.urllib.request, "urlopen", offline)
    with pytest.raises(ValueError, match="cannot download .*vgg16_weights_tf_dim_ordering"):
        keras_weights.load_keras_weights("vgg16", "imagenet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached.name]  # no partial file left
