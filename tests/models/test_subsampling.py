"""Tests of models/layers/subsampling.py against independent numpy references and hand-worked cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.layers import conv
from models.layers import subsampling as S


def _rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _np_pad(x, pads, mode, value=0.0):
    widths = ((0, 0), *pads, (0, 0))
    if mode == "zero":
        return np.pad(x, widths, constant_values=value)
    return np.pad(x, widths, mode={"circular": "wrap", "reflect": "reflect"}[mode])


def _np_taps(xp, kh, kw, stride, dilation):
    """All window taps of padded xp [N, H, W, C]: list of ((i, j), [N, h, w, C])."""
    h = (xp.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    w = (xp.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    return [
        (
            (i, j),
            xp[
                :,
                i * dilation : i * dilation + stride * (h - 1) + 1 : stride,
                j * dilation : j * dilation + stride * (w - 1) + 1 : stride,
            ],
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _np_conv(x, kernel, stride, pads, dilation, mode):
    xp = _np_pad(x, pads, mode)
    taps = _np_taps(xp, kernel.shape[0], kernel.shape[1], stride, dilation)
    return sum(t.astype(np.float64) @ kernel[i, j] for (i, j), t in taps)


@pytest.mark.parametrize(
    "padding, kernel, mode, expected",
    [
        ("SAME", 3, "zero", ((1, 1), (1, 1))),
        ("SAME", 2, "zero", ((0, 1), (0, 1))),
        ("SAME", (1, 7), "zero", ((0, 0), (3, 3))),
        ("VALID", 3, "zero", ((0, 0), (0, 0))),
        (3, 7, "zero", ((3, 3), (3, 3))),
        (((1, 0), (2, 1)), 3, "zero", ((1, 0), (2, 1))),
        ("VALID", 2, "circular", ((0, 1), (0, 1))),
        ("VALID", 3, "circular", ((0, 2), (0, 2))),
        (((1, 0), (1, 5)), 3, "circular", ((1, 1), (1, 1))),
        ("SAME", (3, 1), "circular", ((1, 1), (0, 0))),
    ],
)
def test_resolve_padding(padding, kernel, mode, expected):
    assert conv.resolve_padding(padding, kernel, mode) == expected


@pytest.mark.parametrize(
    "padding, kernel, mode, match",
    [
        ("same", 3, "zero", "padding"),
        (-1, 3, "zero", "padding"),
        (((1,), (1,)), 3, "zero", "padding"),
        ("SAME", 3, "reflect", "padding_mode"),
        ("SAME", 0, "zero", "kernel_size"),
        (3, 3, "circular", "circular padding"),
    ],
)
def test_resolve_padding_errors(padding, kernel, mode, match):
    with pytest.raises(ValueError, match=match):
        conv.resolve_padding(padding, kernel, mode)


CONV_CASES = [  # stride, dilation, padding, padding_mode, kernel (kh, kw), numeric pads
    (1, 1, "SAME", "zero", (3, 3), ((1, 1), (1, 1))),
    (2, 1, "SAME", "zero", (3, 3), ((1, 1), (1, 1))),
    (2, 1, 3, "zero", (7, 7), ((3, 3), (3, 3))),
    (1, 2, "SAME", "zero", (3, 3), ((2, 2), (2, 2))),
    (2, 1, "VALID", "zero", (3, 3), ((0, 0), (0, 0))),
    (1, 3, "SAME", "circular", (3, 3), ((3, 3), (3, 3))),
    (2, 1, "VALID", "circular", (2, 2), ((0, 1), (0, 1))),
    (1, 1, "SAME", "zero", (1, 7), ((0, 0), (3, 3))),
    (2, 2, ((1, 0), (0, 1)), "zero", (2, 2), ((2, 0), (0, 2))),
]


@pytest.mark.parametrize("stride, dilation, padding, mode, ks, pads", CONV_CASES)
def test_conv2d_matches_numpy(stride, dilation, padding, mode, ks, pads):
    x, kernel = _rand((2, 9, 10, 3)), _rand((*ks, 3, 4), 1)
    got = conv.conv2d(x, kernel, stride, padding, dilation, mode)
    np.testing.assert_allclose(
        got, _np_conv(x, kernel, stride, pads, dilation, mode), rtol=1e-5, atol=1e-5
    )


def test_conv2d_grouped_is_per_group_conv():
    x, kernel = _rand((1, 6, 6, 4)), _rand((3, 3, 2, 4), 1)
    got = conv.conv2d(x, kernel, feature_group_count=2)
    pads = ((1, 1), (1, 1))
    want = np.concatenate(
        [
            _np_conv(x[..., :2], kernel[..., :2], 1, pads, 1, "zero"),
            _np_conv(x[..., 2:], kernel[..., 2:], 1, pads, 1, "zero"),
        ],
        -1,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, dilation, padding, mode, ks, pads", CONV_CASES)
def test_pools_match_numpy(stride, dilation, padding, mode, ks, pads):
    x = _rand((2, 9, 10, 3))
    taps = [t for _, t in _np_taps(_np_pad(x, pads, mode, -np.inf), *ks, stride, dilation)]
    np.testing.assert_allclose(
        conv.max_pool(x, ks, stride, padding, dilation, mode), np.max(taps, axis=0), rtol=1e-6
    )
    taps = [t for _, t in _np_taps(_np_pad(x, pads, mode, np.nan), *ks, stride, dilation)]
    np.testing.assert_allclose(
        conv.avg_pool(x, ks, stride, padding, dilation, mode),
        np.nanmean(taps, axis=0),
        rtol=1e-5,
        atol=1e-6,
    )
    taps = [t for _, t in _np_taps(_np_pad(x, pads, mode), *ks, stride, dilation)]
    np.testing.assert_allclose(
        conv.avg_pool(x, ks, stride, padding, dilation, mode, True),
        np.mean(taps, axis=0),
        rtol=1e-5,
        atol=1e-6,
    )


def _layer(kind, x, stride, dilation, padding, mode, kernel):
    if kind == "conv":
        return conv.conv2d(x, kernel, stride, padding, dilation, mode)
    pool = conv.max_pool if kind == "max" else conv.avg_pool
    return pool(x, kernel.shape[:2], stride, padding, dilation, mode)


@pytest.mark.parametrize("kind", ["conv", "max", "avg"])
@pytest.mark.parametrize(
    "ks, padding", [(3, "SAME"), (2, "VALID"), (1, "VALID"), (3, "VALID"), (7, 3)]
)
@pytest.mark.parametrize("mode", ["zero", "circular"])
def test_dense_layers_sampled_at_lattice_equal_strided(kind, ks, padding, mode):
    """The 'full' bookkeeping: a strided layer followed by a layer at dilation 1 equals, on the
    stride lattice, the same layers computed densely (stride 1, second layer dilated)."""
    x, k1, k2 = _rand((2, 12, 16, 3)), _rand((ks, ks, 3, 3), 1), _rand((3, 3, 3, 2), 2)
    strided = _layer(kind, x, 2, 1, padding, mode, k1)
    dense = _layer(kind, x, 1, 1, padding, mode, k1)
    np.testing.assert_allclose(dense[:, ::2, ::2], strided, rtol=1e-5, atol=1e-5)
    strided2 = _layer(kind, strided, 2, 1, "SAME", mode, k2)
    dense2 = _layer(kind, dense, 1, 2, "SAME", mode, k2)
    # Float32 rounding scales with the values (up to ~100 here): an absolute 1e-5 alone fails
    # on some CPUs' summation orders for entries that cancel to ~0.1.
    atol = max(1e-5, 1e-6 * float(np.abs(strided2).max()))
    np.testing.assert_allclose(dense2[:, ::4, ::4], strided2, rtol=1e-5, atol=atol)
    if mode == "circular":
        assert dense2.shape[1:3] == x.shape[1:3]


@pytest.mark.parametrize("kind", ["conv", "max", "avg"])
@pytest.mark.parametrize("shift", [(1, 0), (3, -5), (-7, 2)])
def test_circular_dilated_layers_commute_with_roll(kind, shift):
    x, kernel = _rand((1, 10, 12, 2)), _rand((3, 2, 2, 2), 1)

    def f(v):
        return _layer(kind, v, 1, 3, "VALID", "circular", kernel)

    np.testing.assert_allclose(
        f(np.roll(x, shift, (1, 2))), np.roll(f(x), shift, (1, 2)), rtol=1e-5, atol=1e-5
    )


def test_global_avg_pool():
    x = _rand((2, 3, 4, 5))
    np.testing.assert_allclose(conv.global_avg_pool(x), x.mean((1, 2)), rtol=1e-6)


BINOMIAL_ROWS = [
    [1],
    [1, 1],
    [1, 2, 1],
    [1, 3, 3, 1],
    [1, 4, 6, 4, 1],
    [1, 5, 10, 10, 5, 1],
    [1, 6, 15, 20, 15, 6, 1],
]


@pytest.mark.parametrize("size", range(1, 8))
def test_binomial_filter(size):
    row = np.array(BINOMIAL_ROWS[size - 1], np.float64)
    want = np.outer(row, row) / row.sum() ** 2
    got = S.binomial_filter(size)
    assert got.shape == (size, size) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-7)


@pytest.mark.parametrize("size", [0, 8, 2.0])
def test_binomial_filter_rejects_sizes(size):
    with pytest.raises(ValueError, match="size"):
        S.binomial_filter(size)


@pytest.mark.parametrize("size", range(1, 8))
@pytest.mark.parametrize("padding", ["reflect", "circular", "zero"])
def test_blur_pool_matches_numpy(size, padding):
    x = _rand((2, 9, 8, 3))
    pads = ((math.floor((size - 1) / 2), math.ceil((size - 1) / 2)),) * 2
    row = np.array(BINOMIAL_ROWS[size - 1], np.float64)
    filt = np.outer(row, row) / row.sum() ** 2
    taps = _np_taps(_np_pad(x, pads, padding), size, size, 2, 1)
    want = sum(filt[i, j] * t for (i, j), t in taps)
    got = S.blur_pool(x, size, 2, padding)
    assert got.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_blur_pool_size_1_is_plain_subsampling(stride):
    x = _rand((2, 9, 8, 3))
    np.testing.assert_array_equal(S.blur_pool(x, 1, stride), x[:, ::stride, ::stride])


def test_blur_pool_keeps_constants_and_is_vmappable():
    np.testing.assert_allclose(
        S.blur_pool(np.full((1, 6, 6, 2), 3.0, np.float32), 5, 2), 3.0, rtol=1e-6
    )
    x = _rand((3, 2, 8, 8, 2))
    batched = jax.vmap(lambda v: S.blur_pool(v, 4, 2))(x)
    np.testing.assert_allclose(batched, np.stack([S.blur_pool(v, 4, 2) for v in x]), rtol=1e-6)


def test_blur_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="padding"):
        S.blur_pool(_rand((1, 4, 4, 1)), 3, 2, "wrap")
    with pytest.raises(ValueError, match="stride"):
        S.blur_pool(_rand((1, 4, 4, 1)), 3, 0)


def test_polyphase_norms_and_select_match_loops():
    x, s = _rand((3, 6, 9, 2)), 3
    comps = [[x[n, a::s, b::s] for a in range(s) for b in range(s)] for n in range(3)]
    want = np.array([[np.sum(c.astype(np.float64) ** 2) for c in row] for row in comps])
    np.testing.assert_allclose(S.polyphase_norms(x, s), want, rtol=1e-5)
    np.testing.assert_array_equal(S.aps_phase(x, s), want.argmax(1))
    phase = np.array([4, 0, 8])
    np.testing.assert_array_equal(
        S.select_phase(x, s, phase), np.stack([comps[n][p] for n, p in enumerate(phase)])
    )


def test_aps_phase_breaks_ties_to_lowest_index():
    x = np.zeros((2, 4, 4, 1), np.float32)
    x[0, 1::2, 0::2] = 1.0  # components 2 and 3 tie
    x[0, 1::2, 1::2] = -1.0
    np.testing.assert_array_equal(S.aps_phase(x, 2), [2, 0])


@pytest.mark.parametrize("shift", [(0, 0), (1, 0), (0, 1), (1, 1), (-3, 2), (5, -7)])
def test_aps_is_a_roll_of_itself_under_circular_shifts(shift):
    x, s = _rand((2, 8, 12, 3)), 2
    base = np.asarray(S.aps_downsample(x, s))
    got = np.asarray(S.aps_downsample(np.roll(x, shift, (1, 2)), s))
    for n in range(2):
        assert any(
            np.array_equal(got[n], np.roll(base[n], (qy, qx), (0, 1)))
            for qy in range(4)
            for qx in range(6)
        )


def test_aps_batched_equals_looped_and_jit():
    x = _rand((4, 8, 8, 2))
    looped = np.concatenate([S.aps_downsample(x[n : n + 1], 2) for n in range(4)])
    np.testing.assert_array_equal(S.aps_downsample(x, 2), looped)
    np.testing.assert_array_equal(jax.jit(S.aps_downsample, static_argnums=1)(x, 2), looped)


def test_polyphase_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        S.aps_downsample(_rand((1, 5, 4, 1)), 2)


def test_conv2d_jit_and_vmap_agree():
    x, kernel = _rand((3, 2, 8, 8, 3)), _rand((3, 3, 3, 2), 1)

    def f(v):
        return conv.conv2d(v, kernel, 2, "SAME", 1, "circular")

    eager = np.stack([f(v) for v in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mode, full_stages, want",
    [
        ("subsample", 0, ("subsample",) * 3),
        ("blur", 1, ("blur", "blur", "full")),
        ("aps", 3, ("full",) * 3),
        ("full", 0, ("full",) * 3),
    ],
)
def test_stage_modes(mode, full_stages, want):
    assert S.stage_modes(mode, full_stages, 3) == want


@pytest.mark.parametrize(
    "mode, full_stages, match",
    [("strided", 0, "stride_mode"), ("blur", 4, "full_stages"), ("blur", -1, "full_stages")],
)
def test_stage_modes_errors(mode, full_stages, match):
    with pytest.raises(ValueError, match=match):
        S.stage_modes(mode, full_stages, 3)


@pytest.mark.parametrize(
    "mode, op_stride, out_dilation",
    [("subsample", 2, 1), ("blur", 1, 1), ("aps", 1, 1), ("full", 1, 2)],
)
def test_subsampler_bookkeeping(mode, op_stride, out_dilation):
    sub = S.Subsampler(mode, 2)
    assert (sub.op_stride, sub.out_dilation) == (op_stride, out_dilation)
    assert S.Subsampler("full", 2, dilation=3).out_dilation == 6


def test_subsampler_downsample_per_mode():
    x = _rand((2, 7, 8, 3))
    np.testing.assert_array_equal(S.Subsampler("full", 2).downsample(x), x)
    np.testing.assert_array_equal(S.Subsampler("subsample", 2).downsample(x), x)
    np.testing.assert_allclose(
        S.Subsampler("blur", 2, blur_size=3).downsample(x),
        S.blur_pool(x, 3, 2, "reflect"),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        S.Subsampler("blur", 2, padding_mode="circular").downsample(x),
        S.blur_pool(x, 4, 2, "circular"),
        rtol=1e-6,
    )
    aps = S.Subsampler("aps", 2)
    padded = np.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))  # zeros up to 8 rows
    np.testing.assert_array_equal(aps.downsample(x), S.aps_downsample(padded, 2))
    np.testing.assert_array_equal(aps.phase(x), S.aps_phase(padded, 2))
    np.testing.assert_array_equal(
        aps.downsample(x, np.array([3, 3])), S.select_phase(padded, 2, np.array([3, 3]))
    )
    assert S.Subsampler("blur", 2).phase(x) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="strided"), "mode must be one of"),
        (dict(factor=0), "factor"),
        (dict(blur_size=8), "blur_size"),
        (dict(padding_mode="reflect"), "padding_mode"),
        (dict(mode="blur", dilation=2), "full stages must be the last"),
    ],
)
def test_subsampler_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.Subsampler(**kwargs)


def test_conv_module_params_and_output():
    x = _rand((2, 8, 8, 3))
    module = conv.Conv(
        5, (3, 1), stride=2, padding_mode="circular", bias_init=jax.nn.initializers.normal(1.0)
    )
    variables = module.init(jax.random.key(0), x)
    params = variables["params"]
    assert jax.tree.map(jnp.shape, params) == {"kernel": (3, 1, 3, 5), "bias": (5,)}
    want = conv.conv2d(x, params["kernel"], 2, "SAME", 1, "circular") + params["bias"]
    np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-6)
    no_bias = conv.Conv(5, 3, use_bias=False).init(jax.random.key(0), x)["params"]
    assert set(no_bias) == {"kernel"}
