"""Per-layer feature equivariance over a sweep of shifts (benchmarks.core.equivariance)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.core import equivariance, metrics
from models import registry

RNG = np.random.default_rng(0)
IMAGES = RNG.random((3, 16, 16, 1), dtype=np.float32)


def _model(**fields):
    model = registry.build("allconv", num_classes=4, width=4, padding="circular", **fields)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    feats = lambda v, x: model.apply(v, x, train=False)[1]
    return model, variables, feats


SHIFTS = np.array([[0, 1], [1, 1], [2, 2], [4, 0], [4, 4], [-4, 8]])


def test_subsample_is_equivariant_exactly_at_multiples_of_the_stride():
    model, variables, feats = _model()
    eq = equivariance.feature_equivariance(
        feats, variables, IMAGES, SHIFTS, model.feature_strides(), circular=True
    )
    assert model.feature_strides() == {"stage1": 1, "stage2": 2, "stage3": 4}
    np.testing.assert_allclose(eq["stage1"]["error"], 0, atol=1e-10)  # stride 1: every shift
    for k, (dy, dx) in enumerate(SHIFTS):
        for stage, s in (("stage2", 2), ("stage3", 4)):
            err = eq[stage]["error"][k]
            if dy % s == 0 and dx % s == 0:
                assert err < 1e-10 and eq[stage]["psnr"][k] > 100, (stage, dy, dx)
            else:  # no lattice counterpart: not compared (an ideal net would not score 0)
                assert np.isnan(err) and np.isnan(eq[stage]["psnr"][k]), (stage, dy, dx)
    for stage in ("stage1", "stage2", "stage3"):
        assert equivariance.matched_mean(eq[stage]["error"]) < 1e-10, stage


def test_full_variant_is_equivariant_to_every_shift():
    model, variables, feats = _model(stride_mode="full")
    eq = equivariance.feature_equivariance(
        feats, variables, IMAGES, SHIFTS, model.feature_strides(), circular=True
    )
    for stage in eq:
        np.testing.assert_allclose(eq[stage]["error"], 0, atol=1e-10)


def test_matches_a_direct_computation_and_compiles_once():
    model, variables, feats = _model()
    strides = model.feature_strides()
    traces = []

    def counting(v, x):
        traces.append(1)
        return feats(v, x)

    eq = equivariance.feature_equivariance(counting, variables, IMAGES, SHIFTS, strides)
    base = feats(variables, IMAGES)
    for k, shift in enumerate(SHIFTS):
        moved = feats(variables, np.roll(IMAGES, tuple(shift), axis=(1, 2)))
        for stage, s in strides.items():
            if any(int(d) % s for d in shift):
                assert np.isnan(eq[stage]["error"][k])
                continue
            lattice = tuple(int(d) // s for d in shift)
            ref = np.roll(np.asarray(base[stage]), lattice, axis=(1, 2))
            a = np.asarray(moved[stage], np.float64)
            want = np.mean(np.sum((a - ref) ** 2, axis=(1, 2, 3)) / np.sum(ref**2, axis=(1, 2, 3)))
            np.testing.assert_allclose(eq[stage]["error"][k], want, rtol=1e-4, atol=1e-9)
    assert len(traces) == 2  # one trace of the jitted function: base features + one shift


def test_zero_filled_shifts_mask_the_vacated_border():
    model, variables, feats = _model()
    eq = equivariance.feature_equivariance(
        feats,
        variables,
        IMAGES,
        np.array([[0, 4], [4, 4]]),
        model.feature_strides(),
        circular=False,
    )
    for stage in eq:
        assert np.all(np.isfinite(eq[stage]["error"])) and np.all(eq[stage]["error"] >= 0)


def test_traced_shift_feature_equals_static():
    feat = jnp.asarray(RNG.random((2, 8, 8, 3), dtype=np.float32))
    for circular in (True, False):
        for shift in ((1, 3), (-2, 4), (5, -1)):
            want, want_mask = metrics.shift_feature(feat, shift, 2, circular)
            got, got_mask = jax.jit(lambda f, d: metrics.shift_feature(f, d, 2, circular))(
                feat, jnp.asarray(shift)
            )
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_mask, want_mask)


def test_bad_shifts():
    model, variables, feats = _model()
    with pytest.raises(ValueError, match="shifts"):
        equivariance.feature_equivariance(
            feats, variables, IMAGES, np.array([[0.5, 1.0]]), model.feature_strides()
        )
