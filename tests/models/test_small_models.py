"""Tests that the stride switch of the small nets is right (models/architectures/small.py, models/registry.py).

Tiny widths and 2-4 images of 32x32 keep them fast. Variables are drawn with numpy (random
BN statistics, so that eval-mode BN is not the identity); jax initialisers compile slowly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.inference import classifiers
from models import registry
from models.architectures import small

WIDTH = 4
FAMILIES = {  # id -> (registry name, extra fields)
    "vgg": ("vgg_small", {}),
    "allconv": ("allconv", {}),
    "resnetA": ("resnet20", {"shortcut": "A"}),
    "resnetB": ("resnet20", {"shortcut": "B", "depth": 8}),
}
MODES = ("subsample", "blur", "aps", "full")


def _build(family, **fields):
    name, extra = FAMILIES[family]
    return registry.build(name, **{"width": WIDTH, **extra, **fields})


def _images(n=2, size=32, channels=3, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, channels))


@functools.lru_cache(maxsize=None)
def _variables(family, padding, head="gap", channels=3):
    """Random variables (params and BN statistics) of a model, drawn with numpy: no compile."""
    model = _build(family, padding=padding, head=head)
    return classifiers.random_variables(model, (32, 32, channels))


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_parameter_trees_identical_across_modes(family, head):
    x = _images()
    variants = [(mode, 0, "zero", 4) for mode in MODES] + [
        ("blur", 1, "circular", 1),
        ("aps", 2, "circular", 5),
        ("subsample", 1, "zero", 4),
    ]
    trees = [
        _shapes(
            jax.eval_shape(
                _build(
                    family, stride_mode=mode, full_stages=k, padding=padding, head=head, blur_size=b
                ).init,
                jax.random.key(0),
                x,
            )
        )
        for mode, k, padding, b in variants
    ]
    assert all(tree == trees[0] for tree in trees[1:])
    assert set(trees[0]) == {"params", "batch_stats"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["zero", "circular"])
@pytest.mark.parametrize(
    "fields",
    [
        dict(stride_mode="full"),
        dict(full_stages=1),
        dict(stride_mode="blur", blur_size=1, full_stages=1),
    ],
)
def test_full_sampled_at_stride_lattice_equals_strided(family, padding, fields):
    """Same weights: the full stages' dense maps, sampled at the stride lattice, equal the
    strided model's maps; with a flatten head (which reads the lattice) logits are equal too."""
    variables, x = _variables(family, padding, "flatten"), _images()
    strided = _build(family, padding=padding, head="flatten")
    full = _build(family, padding=padding, head="flatten", **fields)
    logits_s, feats_s = strided.apply(variables, x)
    logits_f, feats_f = full.apply(variables, x)
    strides_s, strides_f = strided.feature_strides(), full.feature_strides()
    assert strides_f["stage3"] < strides_s["stage3"]
    for name, feat in feats_s.items():
        lattice = strides_s[name] // strides_f[name]
        # Float32 rounding scales with the map (values up to ~40): an absolute 1e-5 alone
        # fails on some CPUs' summation orders for entries that cancel to ~0.02.
        atol = max(1e-5, 1e-6 * float(np.abs(feat).max()))
        np.testing.assert_allclose(
            feats_f[name][:, ::lattice, ::lattice], feat, rtol=1e-4, atol=atol, err_msg=name
        )
    np.testing.assert_allclose(logits_f, logits_s, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["blur", "aps"])
def test_full_last_stage_keeps_earlier_stages(family, mode):
    """stride_mode applies to the stages before the full ones: those maps are unchanged."""
    variables, x = _variables(family, "circular"), _images()
    feats = _build(family, stride_mode=mode, padding="circular").apply(variables, x)[1]
    model = _build(family, stride_mode=mode, full_stages=1, padding="circular")
    feats_f = model.apply(variables, x)[1]
    for name in ("stage1", "stage2"):
        np.testing.assert_allclose(feats_f[name], feats[name], rtol=1e-5, atol=1e-6)
    assert feats_f["stage3"].shape[1:3] == feats_f["stage2"].shape[1:3] == (16, 16)


def _rolls(x, shifts):
    return [jnp.roll(x, s, axis=(1, 2)) for s in shifts]


SHIFTS = [(1, 0), (0, 3), (5, 7), (-2, 1), (3, -3)]


@pytest.mark.parametrize("family", FAMILIES)
def test_full_circular_gap_logits_invariant_to_circular_shifts(family):
    variables, x = _variables(family, "circular"), _images()
    model = _build(family, stride_mode="full", padding="circular")
    logits = model.apply(variables, x)[0]
    for shifted in _rolls(x, SHIFTS):
        np.testing.assert_allclose(model.apply(variables, shifted)[0], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_aps_circular_top1_consistency_is_one(family):
    variables, x = _variables(family, "circular"), _images(4, seed=3)
    aps = _build(family, stride_mode="aps", padding="circular")
    plain = _build(family, stride_mode="subsample", padding="circular")
    logits = aps.apply(variables, x)[0]
    for shifted in _rolls(x, SHIFTS):
        shifted_logits = aps.apply(variables, shifted)[0]
        np.testing.assert_array_equal(shifted_logits.argmax(-1), logits.argmax(-1))
        np.testing.assert_allclose(shifted_logits, logits, rtol=1e-4, atol=1e-5)
    # the plain strided net with the same weights is not invariant (the test can fail)
    plain_logits = plain.apply(variables, x)[0]
    assert np.abs(plain.apply(variables, _rolls(x, [(1, 1)])[0])[0] - plain_logits).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["zero", "circular"])
def test_blur_size_1_equals_subsample(family, padding):
    variables, x = _variables(family, padding), _images()
    logits_s, feats_s = _build(family, padding=padding).apply(variables, x)
    blur1 = _build(family, stride_mode="blur", blur_size=1, padding=padding)
    logits_b, feats_b = blur1.apply(variables, x)
    np.testing.assert_allclose(logits_b, logits_s, rtol=1e-4, atol=1e-5)
    for name in feats_s:
        np.testing.assert_allclose(feats_b[name], feats_s[name], rtol=1e-4, atol=1e-5)
    logits_b4 = _build(family, stride_mode="blur", blur_size=4, padding=padding).apply(
        variables, x
    )[0]
    assert np.abs(logits_b4 - logits_s).max() > 1e-4


def _relative_error(a, b):
    return float(np.sum((a - b) ** 2) / np.sum(b**2))


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_equivariance_only_for_multiples_of_the_stride(family):
    """||Phi(T_d x) - T_{d/s} Phi(x)||^2 / ||Phi(x)||^2 is ~0 iff s divides d (circular, plain);
    for other d, neither rounding of d/s explains the shifted features."""
    variables, x = _variables(family, "circular"), _images()
    model = _build(family, padding="circular")
    feats = model.apply(variables, x)[1]
    strides = model.feature_strides()
    assert strides == {"stage1": 1, "stage2": 2, "stage3": 4}
    for d in [(4, 0), (0, -8), (4, 12), (1, 0), (2, 2), (0, 3)]:
        shifted = model.apply(variables, jnp.roll(x, d, axis=(1, 2)))[1]
        for name, s in strides.items():
            rolls = {
                (qy, qx) for qy in (d[0] // s, -(-d[0] // s)) for qx in (d[1] // s, -(-d[1] // s))
            }
            errors = [
                _relative_error(np.asarray(shifted[name]), np.roll(feats[name], q, axis=(1, 2)))
                for q in rolls
            ]
            if d[0] % s == 0 and d[1] % s == 0:
                assert errors[0] < 1e-10, (name, d)
            else:
                assert min(errors) > 1e-3, (name, d)


@pytest.mark.parametrize(
    "family, mode, check_jit",
    [
        ("vgg", "full", True),
        ("allconv", "blur", False),
        ("resnetA", "aps", True),
        ("resnetB", "subsample", False),
    ],
)
def test_jit_and_batched_equal_eager_and_looped(family, mode, check_jit):
    variables, x = _variables(family, "zero"), _images(3)
    model = _build(family, stride_mode=mode)
    eager = model.apply(variables, x)[0]
    looped = jnp.concatenate([model.apply(variables, x[n : n + 1])[0] for n in range(3)])
    np.testing.assert_allclose(looped, eager, rtol=1e-4, atol=1e-5)
    if check_jit:
        np.testing.assert_allclose(
            jax.jit(model.apply)(variables, x)[0], eager, rtol=1e-4, atol=1e-5
        )


def test_train_mode_uses_batch_statistics():
    model, x = _build("resnetA"), _images(4)
    variables = _variables("resnetA", "zero")
    (logits, feats), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10) and feats["stage3"].shape == (4, 8, 8, 4 * WIDTH)
    # running mean <- 0.9 running mean + 0.1 batch mean (of the stem conv's output)
    conv = jax.lax.conv_general_dilated(
        (x - 0.5) / 0.25,
        variables["params"]["stem"]["conv"]["kernel"],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    old = variables["batch_stats"]["stem"]["bn"]["mean"]
    np.testing.assert_allclose(
        updates["batch_stats"]["stem"]["bn"]["mean"],
        0.9 * old + 0.1 * conv.mean((0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )
    assert np.abs(model.apply(variables, x)[0] - logits).max() > 1e-3


@pytest.mark.parametrize("depth, n", [(20, 3), (32, 5), (44, 7), (56, 9)])
def test_cifar_resnet_parameter_counts(depth, n):
    """He et al. 2016 option-A counts (0.27M, 0.46M, 0.66M, 0.85M), worked out per layer."""
    model = registry.build(f"resnet{depth}")
    params = jax.eval_shape(model.init, jax.random.key(0), _images(1))["params"]
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    stem, stage1 = 3 * 9 * 16 + 32, n * (2 * 9 * 16 * 16 + 64)
    stage2 = 9 * 16 * 32 + 9 * 32 * 32 + 128 + (n - 1) * (2 * 9 * 32 * 32 + 128)
    stage3 = 9 * 32 * 64 + 9 * 64 * 64 + 256 + (n - 1) * (2 * 9 * 64 * 64 + 256)
    assert count == stem + stage1 + stage2 + stage3 + 64 * 10 + 10
    assert len([k for k in params if k.startswith("BasicBlock")]) == 3 * n


def test_shortcut_b_adds_projections_only_where_shapes_change():
    params = jax.eval_shape(_build("resnetB", depth=14).init, jax.random.key(0), _images(1))[
        "params"
    ]
    with_projection = sorted(k for k, v in params.items() if "shortcut" in v)
    assert with_projection == ["BasicBlock_2", "BasicBlock_4"]


def test_mnist_sized_single_channel_input():
    x = _images(2, 28, 1)
    variables = _variables("vgg", "circular", channels=1)
    for mode in ("aps", "full"):
        model = registry.build("vgg_small", width=WIDTH, stride_mode=mode, padding="circular")
        logits, feats = model.apply(variables, x)
        assert logits.shape == (2, 10)
        assert feats["stage3"].shape[1] == (28 if mode == "full" else 7)


@pytest.mark.parametrize(
    "mode, full_stages, want",
    [
        ("subsample", 0, {"stage1": 1, "stage2": 2, "stage3": 4}),
        ("aps", 1, {"stage1": 1, "stage2": 2, "stage3": 2}),
        ("blur", 2, {"stage1": 1, "stage2": 1, "stage3": 1}),
        ("full", 0, {"stage1": 1, "stage2": 1, "stage3": 1}),
    ],
)
def test_feature_strides(mode, full_stages, want):
    for family in FAMILIES:
        assert _build(family, stride_mode=mode, full_stages=full_stages).feature_strides() == want


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(stride_mode="strided"), "stride_mode"),
        (dict(padding="reflect"), "padding"),
        (dict(head="max"), "head"),
        (dict(full_stages=3), "full_stages"),
        (dict(blur_size=0), "blur_size"),
        (dict(blur_size=8), "blur_size"),
        (dict(width=0), "width"),
        (dict(num_classes=0), "num_classes"),
        (dict(mean=(0.5, 0.5), std=(0.25,)), "mean and std"),
        (dict(std=(0.0,)), "std"),
    ],
)
def test_invalid_fields_raise(fields, match):
    for family in FAMILIES:
        with pytest.raises(ValueError, match=match):
            _build(family, **fields)


@pytest.mark.parametrize(
    "fields, match",
    [(dict(depth=21), "depth"), (dict(depth=2), "depth"), (dict(shortcut="C"), "shortcut")],
)
def test_invalid_resnet_fields_raise(fields, match):
    with pytest.raises(ValueError, match=match):
        small.CifarResNet(**fields)


def test_invalid_input_raises():
    model = _build("vgg", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="x must be"):
        model.init(jax.random.key(0), _images(1, channels=1))
    with pytest.raises(ValueError, match="x must be"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_registry():
    assert {"vgg_small", "allconv", "resnet20", "resnet32", "resnet44", "resnet56"} <= set(
        registry.MODELS
    )
    model = registry.build("resnet56", stride_mode="blur")
    assert isinstance(model, small.CifarResNet) and model.depth == 56
    assert model.stride_mode == "blur"
    assert registry.input_size("allconv") == 32
    with pytest.raises(ValueError, match="resnet20"):
        registry.build("resnet18")
    with pytest.raises(ValueError, match="vgg_small"):
        registry.input_size("nope")
