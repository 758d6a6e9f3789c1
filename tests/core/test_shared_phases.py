"""Circular shifts of the same phase share one evaluation: exact, and only where declared."""

import os

import numpy as np
import pytest
from entry_point import SHARED_TFDS

from benchmarks.core import evaluator, protocols
from benchmarks.inference import classifiers

RESNET20 = os.path.join(
    os.path.dirname(SHARED_TFDS), "pretrained", "cifar_resnet_akamaster", "resnet20-12fca82f.th"
)
COUNTS = ("accuracy", "p_top1_change", "consistency", "worst_case_accuracy", "flip_probability")


def test_distinct_entries_of_a_grid():
    proto = protocols.build("circular", (32, 32, 3), sweep="grid", min_shift=-4, max_shift=4)
    params, index = proto.distinct_entries(4)
    assert proto.params.shape == (81, 2) and params.shape == (16, 2) and index.shape == (81,)
    np.testing.assert_array_equal(params[index] % 4, proto.params % 4)
    assert len({tuple(p) for p in params % 4}) == 16  # one entry per phase
    assert np.all(np.diff(np.unique(index, return_index=True)[1]) > 0)  # in sweep order
    assert proto.distinct_entries(None)[1] is None
    crop = protocols.build("crop", (32, 32, 3))
    assert crop.distinct_entries(4)[1] is None  # crops do not wrap: no shared phases


@pytest.mark.parametrize(
    "fields, period",
    [
        ({"padding": "circular"}, 4),
        ({"padding": "circular", "stride_mode": "blur"}, 4),
        ({"padding": "circular", "stride_mode": "aps"}, 4),
        ({"padding": "circular", "full_stages": 1}, 2),
        ({"padding": "circular", "stride_mode": "full"}, 1),
        ({"padding": "zero"}, None),
        ({"padding": "circular", "head": "flatten"}, None),
    ],
)
def test_declared_period(fields, period):
    model = classifiers.build_model("vgg_small", 10, width=4, **fields)
    assert model.circular_period((32, 32, 3)) == period
    if period and period > 1:
        assert model.circular_period((31, 31, 3)) is None  # 31 px is not a multiple of 4 or 2


def _images(n=16, size=16, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth random images: neighbouring pixels correlate, as in photos.
    x = rng.random((n, size // 4, size // 4, 3), dtype=np.float32)
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    return x, rng.integers(0, 10, n).astype(np.int32)


def _compare(clf, images, labels, period):
    # A 5 x 5 grid: 25 shifts, 16 distinct phases for a period of 4.
    proto = protocols.build("circular", images.shape[1:], sweep="grid", min_shift=-2, max_shift=2)
    batches = [(images, labels)]
    n = len(labels)
    config = evaluator.EvalConfig(batch_size=n, chunk_size=25, images_per_call=n)  # no probe
    logits = lambda v, x: clf.logits(v, x)  # noqa: E731  (its own compiled function)

    def run(shift_period):
        ev = evaluator.Evaluator(
            logits, proto, config, variables=clf.variables, shift_period=shift_period
        )
        return ev, ev.run(batches)

    (_, plain), (ev, shared) = run(None), run(period)
    assert ev.compile_count == (1 if period is None else 2)
    for key in COUNTS:
        assert shared.metrics[key] == plain.metrics[key], key
    for key in plain.metrics:
        assert shared.metrics[key] == pytest.approx(plain.metrics[key], rel=1e-5, abs=1e-6), key
    np.testing.assert_array_equal(shared.accuracy_per_param, plain.accuracy_per_param)
    np.testing.assert_array_equal(shared.flip_rate_per_pair, plain.flip_rate_per_pair)
    np.testing.assert_allclose(shared.curves, plain.curves, rtol=1e-5, atol=1e-6)
    return plain


@pytest.mark.parametrize(
    "name, fields",
    [
        ("vgg_small", {"stride_mode": "blur"}),
        ("resnet20", {"stride_mode": "aps"}),
        ("allconv", {"stride_mode": "full"}),
    ],
)
def test_shared_phases_equal_the_plain_evaluation(name, fields):
    images, labels = _images()
    fields = {"width": 4, "padding": "circular", **fields}
    clf = classifiers.load(name, 10, images.shape[1:], **fields)
    period = clf.model.circular_period(images.shape[1:])
    assert period in (1, 4)
    plain = _compare(clf, images, labels, period)
    if fields["stride_mode"] == "blur":  # other phases do change the output: S is not too small
        assert plain.metrics["mac"] > 1e-4


@pytest.mark.skipif(not os.path.isfile(RESNET20), reason="../shared/data is not present")
def test_shared_phases_on_the_pretrained_resnet20():
    import tensorflow_datasets as tfds

    source = tfds.data_source("cifar10", split="test", data_dir=SHARED_TFDS)
    examples = source.__getitems__(list(range(16)))
    images = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0
    labels = np.array([e["label"] for e in examples], np.int32)
    clf = classifiers.load("resnet20", 10, (32, 32, 3), weights=RESNET20, padding="circular")
    plain = _compare(clf, images, labels, clf.model.circular_period((32, 32, 3)))
    assert plain.metrics["accuracy"] > 0.5 and plain.metrics["p_top1_change"] > 0
