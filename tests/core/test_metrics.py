"""Tests for benchmarks.core.metrics against plain-numpy references and hand-worked cases."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import rankdata

from benchmarks.core import metrics

# ---------------------------------------------------------------------------------------------
# Independent numpy references (loops over images and pairs on purpose)


def ref_flip_prob(probs, d):
    """ImageNet-P's flip_prob for one difficulty d, per image (chains i, i+d, i+2d, ...)."""
    out = []
    for n in range(probs.shape[1]):
        preds = [int(np.argmax(frame)) for frame in probs[:, n]]
        flips = []
        for i in range(d):
            prev = preds[i]
            for pred in preds[i::d][1:]:
                flips.append(int(prev != pred))
                prev = pred
        out.append(np.mean(flips))
    return np.array(out)


def ref_mac(probs, ref_index, labels, d):
    out = []
    for n in range(probs.shape[1]):
        c = int(np.argmax(probs[ref_index, n])) if labels is None else int(labels[n])
        changes = [abs(probs[k, n, c] - probs[k + d, n, c]) for k in range(probs.shape[0] - d)]
        out.append(np.mean(changes))
    return np.array(out)


def ref_top5_distance(probs, d):
    """Hendrycks & Dietterich's ranking_dist(mode='top5'), literally, per image."""
    num_classes = probs.shape[-1]
    cum_sum_top5 = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (num_classes - 1 - 5)))

    def dist(sigma):
        return np.sum(np.abs(cum_sum_top5[:5] - cum_sum_top5[sigma - 1][:5]))

    out = []
    for n in range(probs.shape[1]):
        vid_ranks = [np.uint16(rankdata(-frame, method="ordinal")) for frame in probs[:, n]]
        result_for_vid = []
        for i in range(d):
            perm1 = vid_ranks[i]
            perm1_inv = np.argsort(perm1)
            for rank in vid_ranks[i::d][1:]:
                perm2 = rank
                result_for_vid.append(dist(perm2[perm1_inv]))
                perm1 = perm2
                perm1_inv = np.argsort(perm1)
        out.append(np.mean(result_for_vid))
    return np.array(out)


def ref_consistency(probs, pairs):
    out = []
    for n in range(probs.shape[1]):
        top = [int(np.argmax(frame)) for frame in probs[:, n]]
        out.append(np.mean([top[a] == top[b] for a, b in pairs[n]]))
    return np.array(out)


def ref_consistency_vs_reference(probs, indices, ref_index):
    pairs = np.stack([np.full_like(indices, ref_index), indices], axis=-1)
    return ref_consistency(probs, pairs)


def ref_correct(probs, labels):
    num_params, num_images, _ = probs.shape
    return np.array(
        [
            [int(np.argmax(probs[t, n])) == labels[n] for n in range(num_images)]
            for t in range(num_params)
        ]
    )


def ref_worst_of_k(probs, labels, indices):
    is_correct = ref_correct(probs, labels)
    return np.array([float(all(is_correct[t, n] for t in row)) for n, row in enumerate(indices)])


def ref_equivariance_error(a, b, mask):
    num, den = np.zeros(a.shape[0]), np.zeros(a.shape[0])
    for n in range(a.shape[0]):
        for i, j in zip(*np.nonzero(mask)):
            num[n] += np.sum((a[n, i, j] - b[n, i, j]) ** 2)
            den[n] += np.sum(b[n, i, j] ** 2)
    return num / den


# ---------------------------------------------------------------------------------------------
# Inputs


def random_probs(num_params, num_images, num_classes, seed, ties=False):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(num_params, num_images, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if ties:  # coarse values: many exact ties, to exercise tie-breaking
        probs = np.round(probs, 1)
    return probs.astype(np.float32)


CASES = [  # (T, N, K, d, ties)
    (5, 4, 10, 1, False),
    (5, 4, 10, 3, False),
    (9, 3, 7, 2, True),
    (2, 6, 6, 1, True),
    (12, 5, 20, 4, False),
]


@pytest.fixture(params=CASES, ids=lambda c: "T{}-N{}-K{}-d{}-ties{}".format(*c))
def case(request):
    num_params, num_images, num_classes, d, ties = request.param
    probs = random_probs(
        num_params, num_images, num_classes, seed=len(CASES) * d + num_params, ties=ties
    )
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, size=num_images).astype(np.int32)
    # Bias labels towards correct predictions so that worst-case accuracy is not always 0.
    labels[::2] = np.argmax(probs[0, ::2], axis=-1)
    indices = rng.integers(0, num_params, size=(num_images, 4)).astype(np.int32)
    pairs = rng.integers(0, num_params, size=(num_images, 6, 2)).astype(np.int32)
    return {"probs": probs, "labels": labels, "d": d, "indices": indices, "pairs": pairs}


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Against the references


def test_top1_change_matches_reference(case):
    out = metrics.top1_change(case["probs"], d=case["d"])
    assert out.shape == (case["probs"].shape[1],) and out.dtype == jnp.float32
    close(out, ref_flip_prob(case["probs"], case["d"]))


@pytest.mark.parametrize("ref_index", [0, -1])
def test_mac_matches_reference(case, ref_index):
    probs, d = case["probs"], case["d"]
    ref_index %= probs.shape[0]
    close(
        metrics.mean_absolute_change(probs, ref_index=ref_index, d=d),
        ref_mac(probs, ref_index, None, d),
    )
    close(
        metrics.mean_absolute_change(probs, labels=case["labels"], d=d),
        ref_mac(probs, None, case["labels"], d),
    )


def test_top5_distance_matches_reference(case):
    out = metrics.top5_distance(case["probs"], d=case["d"])
    assert out.dtype == jnp.float32
    close(out, ref_top5_distance(case["probs"], case["d"]))


def test_consistency_matches_reference(case):
    probs = case["probs"]
    close(metrics.consistency(probs, case["pairs"]), ref_consistency(probs, case["pairs"]))
    ref_index = probs.shape[0] // 2
    close(
        metrics.consistency_vs_reference(probs, case["indices"], ref_index),
        ref_consistency_vs_reference(probs, case["indices"], ref_index),
    )


def test_accuracy_metrics_match_reference(case):
    probs, labels = case["probs"], case["labels"]
    expected = ref_correct(probs, labels)
    np.testing.assert_array_equal(metrics.correct(probs, labels), expected)
    close(metrics.worst_case_correct(probs, labels), expected.all(axis=0).astype(float))
    close(
        metrics.worst_of_k_correct(probs, labels, case["indices"]),
        ref_worst_of_k(probs, labels, case["indices"]),
    )
    curve = [[probs[t, n, labels[n]] for n in range(len(labels))] for t in range(len(probs))]
    close(metrics.label_prob_curve(probs, labels), np.array(curve))


# ---------------------------------------------------------------------------------------------
# Hand-worked cases


# T=3 sweep entries, N=2 images, K=3 classes.
#   image 0: argmax per entry 0, 1, 1        image 1: argmax per entry 2, 2, 2
HAND_PROBS = np.array(
    [
        [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
        [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]],
        [[0.1, 0.6, 0.3], [0.2, 0.1, 0.7]],
    ],
    dtype=np.float32,
)
HAND_LABELS = np.array([1, 2], dtype=np.int32)


def test_top1_change_by_hand():
    # d=1: image 0 pairs (0,1) change, (1,2) same -> 1/2; image 1 never changes -> 0.
    close(metrics.top1_change(HAND_PROBS, d=1), [0.5, 0.0])
    # d=2: the single pair (0,2): image 0 changes 0 -> 1, image 1 stays 2.
    close(metrics.top1_change(HAND_PROBS, d=2), [1.0, 0.0])


def test_mac_by_hand():
    # ref_index=0: c = (0, 2). image 0: p_0 = .6,.2,.1 -> (.4+.1)/2 = .25;
    # image 1: p_2 = .7,.4,.7 -> (.3+.3)/2 = .3.
    close(metrics.mean_absolute_change(HAND_PROBS), [0.25, 0.3])
    # ref_index=1: c = (1, 2). image 0: p_1 = .3,.5,.6 -> (.2+.1)/2 = .15.
    close(metrics.mean_absolute_change(HAND_PROBS, ref_index=1), [0.15, 0.3])
    # labels (0, 0): image 1: p_0 = .1,.3,.2 -> (.2+.1)/2 = .15.
    close(metrics.mean_absolute_change(HAND_PROBS, labels=[0, 0]), [0.25, 0.15])
    # d=2: image 0 |.6-.1| = .5; image 1 |.7-.7| = 0.
    close(metrics.mean_absolute_change(HAND_PROBS, d=2), [0.5, 0.0])


def test_consistency_by_hand():
    # image 0 pairs (0,1): 0 vs 1 no, (1,2): 1 vs 1 yes -> .5; image 1 always class 2 -> 1.
    pairs = np.array([[[0, 1], [1, 2]], [[0, 2], [2, 2]]])
    close(metrics.consistency(HAND_PROBS, pairs), [0.5, 1.0])
    # vs entry 0: image 0 draws 1, 2 (class 1, 1) vs class 0 -> 0; image 1 -> 1.
    close(metrics.consistency_vs_reference(HAND_PROBS, [[1, 2], [1, 0]], ref_index=0), [0.0, 1.0])
    # vs entry 2 (class 1 for image 0): draws 1 (class 1) and 0 (class 0) -> .5.
    close(metrics.consistency_vs_reference(HAND_PROBS, [[1, 0], [1, 0]], ref_index=2), [0.5, 1.0])


def test_accuracy_by_hand():
    # labels (1, 2): image 0 correct at entries 1, 2 only; image 1 always correct.
    np.testing.assert_array_equal(
        metrics.correct(HAND_PROBS, HAND_LABELS), [[False, True], [True, True], [True, True]]
    )
    close(metrics.worst_case_correct(HAND_PROBS, HAND_LABELS), [0.0, 1.0])
    close(metrics.worst_of_k_correct(HAND_PROBS, HAND_LABELS, [[1, 2], [0, 1]]), [1.0, 1.0])
    close(metrics.worst_of_k_correct(HAND_PROBS, HAND_LABELS, [[2, 0], [0, 1]]), [0.0, 1.0])
    close(metrics.label_prob_curve(HAND_PROBS, HAND_LABELS), [[0.3, 0.7], [0.5, 0.4], [0.6, 0.7]])


def test_top5_distance_by_hand():
    # K=8. Frame 0 ranks classes 0,1,2,3,4,5,6,7. Frame 1 ranks 1,0,2,3,5,6,7,4.
    # Ranks (1-based) in frame 1 of frame 0's top five (0,1,2,3,4): sigma = 2,1,3,4,8.
    # min(sigma-1, 5) = 1,0,2,3,5 against 0,1,2,3,4: |.| = 1+1+0+0+1 = 3.
    # Frame 2 = frame 1 with class 2 and 3 tied (the lower index ranks first): same order,
    # so (1, 2) has distance 0, and d=2's single pair (0, 2) gives 3 again.
    frame0 = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.06, 0.04, 0.03])
    frame1 = np.array([0.20, 0.30, 0.15, 0.12, 0.03, 0.10, 0.06, 0.04])
    frame2 = np.array([0.20, 0.30, 0.12, 0.12, 0.03, 0.10, 0.06, 0.04])
    probs = np.stack([frame0, frame1, frame2])[:, None].astype(np.float32)
    close(metrics.top5_distance(probs, d=1), [1.5])
    close(metrics.top5_distance(probs, d=2), [3.0])
    # Reversing the ranking: frame 0's top five get ranks 8,7,6,5,4 -> min(sigma-1, 5) =
    # 5,5,5,4,3 against 0..4: 5+4+3+1+1 = 14.
    close(metrics.top5_distance(np.stack([frame0, 1 - frame0])[:, None], d=1), [14.0])


def test_top5_distance_fewer_than_five_classes():
    # K=3: ranks 0,1,2 -> 1,0,2 (classes 0 and 1 swap): |0-1| + |1-0| + 0 = 2.
    probs = np.array([[[0.5, 0.3, 0.2]], [[0.3, 0.5, 0.2]]], dtype=np.float32)
    close(metrics.top5_distance(probs), [2.0])


# ---------------------------------------------------------------------------------------------
# jit, vmap and batching


def per_image_metrics(probs, labels, pairs, indices, d):
    """Every per-image metric of one batch, as one dict (static d)."""
    return {
        "top1_change": metrics.top1_change(probs, d=d),
        "mac": metrics.mean_absolute_change(probs, ref_index=1, d=d),
        "mac_label": metrics.mean_absolute_change(probs, labels=labels, d=d),
        "top5": metrics.top5_distance(probs, d=d),
        "consistency": metrics.consistency(probs, pairs),
        "vs_reference": metrics.consistency_vs_reference(probs, indices, ref_index=1),
        "worst_case": metrics.worst_case_correct(probs, labels),
        "worst_of_k": metrics.worst_of_k_correct(probs, labels, indices),
        "curve": metrics.label_prob_curve(probs, labels).T,
        "correct": metrics.correct(probs, labels).T,
    }


@pytest.fixture(scope="module")
def batch():
    probs = random_probs(6, 7, 9, seed=3, ties=True)
    rng = np.random.default_rng(4)
    return {
        "probs": probs,
        "labels": np.argmax(probs[2], -1).astype(np.int32),
        "pairs": rng.integers(0, 6, size=(7, 5, 2)).astype(np.int32),
        "indices": rng.integers(0, 6, size=(7, 3)).astype(np.int32),
    }


def assert_same_metrics(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_jit_matches_eager(batch):
    eager = per_image_metrics(**batch, d=2)
    jitted = jax.jit(functools.partial(per_image_metrics, d=2))(**batch)
    assert_same_metrics(jitted, eager)


def test_vmap_over_images_matches_batch(batch):
    def one_image(probs, label, pairs, indices):  # probs [T, K]: a batch of one image
        out = per_image_metrics(probs[:, None], label[None], pairs[None], indices[None], d=2)
        return {name: value[0] for name, value in out.items()}

    mapped = jax.vmap(one_image, in_axes=(1, 0, 0, 0))(
        batch["probs"], batch["labels"], batch["pairs"], batch["indices"]
    )
    assert_same_metrics(mapped, per_image_metrics(**batch, d=2))


def test_concatenated_batches_match_whole(batch):
    # Uneven batches of 1, 2 and 4 images, the metric of each concatenated.
    parts = [
        per_image_metrics(
            batch["probs"][:, sl],
            batch["labels"][sl],
            batch["pairs"][sl],
            batch["indices"][sl],
            d=1,
        )
        for sl in (slice(0, 1), slice(1, 3), slice(3, 7))
    ]
    joined = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    assert_same_metrics(joined, per_image_metrics(**batch, d=1))


# ---------------------------------------------------------------------------------------------
# Seeded per-image draws


def image_keys(seed_key, first, count):
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        seed_key, jnp.arange(first, first + count)
    )


@pytest.mark.parametrize(
    "seed_key", [jax.random.key(7), jax.random.PRNGKey(7)], ids=["typed", "raw"]
)
def test_draws_do_not_depend_on_batching(seed_key):
    whole = metrics.draw_pairs(image_keys(seed_key, 0, 10), num_params=9, num_pairs=4)
    assert whole.shape == (10, 4, 2) and whole.dtype == jnp.int32
    batches = [
        metrics.draw_pairs(image_keys(seed_key, start, size), 9, 4)
        for start, size in ((0, 3), (3, 1), (4, 6))
    ]
    np.testing.assert_array_equal(np.concatenate(batches), whole)
    jitted = jax.jit(metrics.draw_indices, static_argnums=(1, 2))(
        image_keys(seed_key, 0, 10), 9, (4, 2)
    )
    np.testing.assert_array_equal(jitted, whole)


def test_draws_are_uniform_and_independent():
    pairs = np.asarray(metrics.draw_pairs(image_keys(jax.random.key(0), 0, 400), 5, 25))
    assert pairs.min() == 0 and pairs.max() == 4
    # 20000 draws: each of the 5 values has frequency 0.2 (std 0.003).
    np.testing.assert_allclose(np.bincount(pairs.ravel()) / pairs.size, 0.2, atol=0.015)
    # a and b independent: P(a == b) = 1/5 (std 0.006).
    assert abs(np.mean(pairs[..., 0] == pairs[..., 1]) - 0.2) < 0.03
    # Images draw different sequences.
    assert len({row.tobytes() for row in pairs}) == len(pairs)


# ---------------------------------------------------------------------------------------------
# Argument checks

P = HAND_PROBS  # T=3, N=2, K=3


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: metrics.top1_change(P, d=0), "d"),
        (lambda: metrics.top1_change(P, d=3), "d"),
        (lambda: metrics.top1_change(P, d=1.5), "d"),
        (lambda: metrics.top1_change(P[0], d=1), "probs"),
        (lambda: metrics.mean_absolute_change(P, d=3), "d"),
        (lambda: metrics.mean_absolute_change(P, ref_index=3), "ref_index"),
        (lambda: metrics.mean_absolute_change(P, ref_index=-1), "ref_index"),
        (lambda: metrics.mean_absolute_change(P, labels=[0, 1, 2]), "labels"),
        (lambda: metrics.top5_distance(P, d=-1), "d"),
        (lambda: metrics.consistency(P, np.zeros((2, 4, 3), int)), "pairs"),
        (lambda: metrics.consistency(P, np.zeros((3, 4, 2), int)), "pairs"),
        (lambda: metrics.consistency_vs_reference(P, np.zeros((2, 4), int), 5), "ref_index"),
        (lambda: metrics.consistency_vs_reference(P, np.zeros((2,), int), 0), "indices"),
        (lambda: metrics.correct(P, [[0, 1]]), "labels"),
        (lambda: metrics.worst_of_k_correct(P, [0, 1], np.zeros((1, 4), int)), "indices"),
        (lambda: metrics.draw_pairs(image_keys(jax.random.key(0), 0, 2), 0, 3), "num_params"),
        (lambda: metrics.draw_pairs(image_keys(jax.random.key(0), 0, 2), 3, 0), "num_pairs"),
        (lambda: metrics.shift_feature(np.zeros((1, 4, 4, 1)), (1, 1), 0, True), "stride"),
        (lambda: metrics.shift_feature(np.zeros((1, 4, 4, 1)), (8, 0), 2, False), "shift"),
        (lambda: metrics.shift_feature(np.zeros((1, 4, 4, 1)), (1,), 1, False), "shift"),
        (lambda: metrics.shift_feature(np.zeros((4, 4, 1)), (1, 1), 1, False), "feat"),
        (
            lambda: metrics.feature_equivariance_error(
                np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)), np.ones((4, 3), bool)
            ),
            "mask",
        ),
        (
            lambda: metrics.equivariance_psnr(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 3, 1))),
            "features",
        ),
        (lambda: metrics.psnr_from_mse(0.1, max_range=0.0), "max_range"),
    ],
)
def test_invalid_arguments_raise(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_traced_static_argument_raises():
    with pytest.raises(ValueError, match=r"\bd\b.*static"):
        jax.jit(metrics.top1_change)(P, 1)


# ---------------------------------------------------------------------------------------------
# Feature equivariance


@pytest.fixture(scope="module")
def feat():
    return np.random.default_rng(5).normal(size=(2, 6, 7, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "shift, stride, lattice",
    [((4, -2), 2, (2, -1)), ((5, -3), 2, (2, -2)), ((1, 1), 4, (0, 0)), ((-9, 16), 8, (-2, 2))],
)
def test_circular_shift_is_exactly_equivariant(feat, shift, stride, lattice):
    # A feature map that is an exact (lattice) shifted copy has zero error and infinite PSNR;
    # d not a multiple of s uses floor(d / s).
    feat_shifted = np.roll(feat, lattice, axis=(1, 2))
    ref, mask = metrics.shift_feature(feat, shift, stride, circular=True)
    np.testing.assert_array_equal(ref, feat_shifted)
    assert mask.shape == (6, 7) and bool(mask.all())
    np.testing.assert_array_equal(
        metrics.feature_equivariance_error(feat_shifted, ref, mask), [0.0, 0.0]
    )
    assert np.isposinf(metrics.equivariance_psnr(feat_shifted, ref, mask))


def test_non_circular_shift_masks_vacated_border(feat):
    # Input shift (4, -3) at stride 2 -> lattice (2, -2): rows 0-1 and columns 5-6 vacated.
    ref, mask = metrics.shift_feature(feat, (4, -3), 2, circular=False)
    expected_mask = np.zeros((6, 7), bool)
    expected_mask[2:, :5] = True
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(ref[:, 2:, :5], feat[:, :4, 2:])
    np.testing.assert_array_equal(ref[:, ~expected_mask], 0.0)
    # Phi(T_d x) with arbitrary content in the vacated border: masked error is exactly 0.
    feat_shifted = np.where(expected_mask[None, :, :, None], np.asarray(ref), 3.0)
    np.testing.assert_array_equal(
        metrics.feature_equivariance_error(feat_shifted, ref, mask), [0.0, 0.0]
    )
    assert np.all(np.asarray(metrics.feature_equivariance_error(feat_shifted, ref)) > 0)


def test_feature_equivariance_error_by_hand():
    # ||a - b||^2 = 0.5^2 = 0.25 at pixel (0, 0); ||b||^2 = 4 -> 0.0625.
    b = np.ones((1, 2, 2, 1), np.float32)
    a = b.copy()
    a[0, 0, 0, 0] = 1.5
    close(metrics.feature_equivariance_error(a, b), [0.0625])
    # Masking out pixel (1, 1): 0.25 / 3.  Masking out pixel (0, 0): 0.
    close(metrics.feature_equivariance_error(a, b, [[True, True], [True, False]]), [0.25 / 3])
    close(metrics.feature_equivariance_error(a, b, [[False, True], [True, True]]), [0.0])
    # Two all-zero maps: 0, not NaN.
    close(metrics.feature_equivariance_error(0 * a, 0 * b), [0.0])


def test_feature_equivariance_error_matches_reference(feat):
    rng = np.random.default_rng(6)
    other = feat + 0.3 * rng.normal(size=feat.shape).astype(np.float32)
    mask = rng.random((6, 7)) < 0.6
    out = jax.jit(metrics.feature_equivariance_error)(other, feat, mask)
    np.testing.assert_allclose(out, ref_equivariance_error(other, feat, mask), rtol=1e-5)


def test_psnr_of_constant_offset():
    b = np.random.default_rng(7).uniform(-1, 1, size=(2, 5, 5, 3)).astype(np.float32)
    # Offset 0.1 -> MSE 0.01 -> 20 log10(2) + 20 = 26.0206 dB; range 1 -> 20 dB.
    np.testing.assert_allclose(metrics.equivariance_psnr(b + 0.1, b), 26.0206, atol=1e-3)
    np.testing.assert_allclose(
        metrics.equivariance_psnr(b + 0.1, b, max_range=1.0), 20.0, atol=1e-3
    )
    # Offsets 0.1 and 0.3 on the two images: pooled MSE (0.01 + 0.09) / 2 = 0.05
    # -> 6.0206 + 13.0103 = 19.0309 dB.
    offsets = np.array([0.1, 0.3], np.float32)[:, None, None, None]
    np.testing.assert_allclose(metrics.equivariance_mse(b + offsets, b), [0.01, 0.09], rtol=1e-4)
    np.testing.assert_allclose(metrics.equivariance_psnr(b + offsets, b), 19.0309, atol=1e-3)
    # Differences only in the masked-out border do not count.
    mask = np.zeros((5, 5), bool)
    mask[1:, 1:] = True
    a = np.where(mask[None, :, :, None], b, b + 1.0)
    close(metrics.equivariance_mse(a, b, mask), [0.0, 0.0])
    assert np.isposinf(metrics.equivariance_psnr(a, b, mask))
    # Offset 0.2 inside the mask: the mean runs over the 16 masked pixels only -> 0.04.
    np.testing.assert_allclose(metrics.equivariance_mse(a + 0.2, b, mask), [0.04, 0.04], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Inside a jitted function with the N axis sharded over 8 devices

SHARDED_SCRIPT = textwrap.dedent(
    """
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from benchmarks.core import metrics

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    T, N, K = 5, 16, 10
    probs = rng.dirichlet(np.ones(K), size=(T, N)).astype(np.float32)
    labels = rng.integers(0, K, N).astype(np.int32)
    feat = rng.normal(size=(N, 4, 4, 2)).astype(np.float32)

    def run(probs, labels, feat, gids):
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(1), gids)
        pairs = metrics.draw_pairs(keys, T, 3)
        indices = metrics.draw_indices(keys, T, (4,))
        ref, mask = metrics.shift_feature(feat, (2, 1), 2, circular=False)
        return dict(
            top1=metrics.top1_change(probs, d=2),
            mac=metrics.mean_absolute_change(probs, labels=labels),
            top5=metrics.top5_distance(probs),
            consistency=metrics.consistency(probs, pairs),
            vs_ref=metrics.consistency_vs_reference(probs, indices, 2),
            worst=metrics.worst_of_k_correct(probs, labels, indices),
            curve=metrics.label_prob_curve(probs, labels),
            error=metrics.feature_equivariance_error(feat + 0.1, ref, mask),
            mse=metrics.equivariance_mse(feat, ref, mask),
        )

    args = (probs, labels, feat, jnp.arange(N))
    expected = run(*args)
    mesh = Mesh(np.array(jax.devices()), ("n",))
    specs = (P(None, "n"), P("n"), P("n"), P("n"))
    sharded = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    out = jax.jit(run)(*sharded)
    assert out["top1"].sharding.num_devices == 8
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    print("SHARDED_OK")
    """
)


def test_metrics_inside_jit_with_sharded_images():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]
