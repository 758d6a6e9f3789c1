"""Datasets: the embedded digits, TFDS (mock and the real shared copies), batching, errors."""

import gzip
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from entry_point import SHARED_TFDS, run_module

from benchmarks.data import datasets

SHARED = os.path.dirname(SHARED_TFDS)
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_TFDS), reason="../shared/data is not present"
)


def test_digits_are_real_sklearn_digits_on_a_canvas():
    from sklearn.datasets import load_digits

    train = datasets.open_dataset("digits", "train")
    test = datasets.open_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    images, labels = datasets.load_arrays(train)
    assert images.shape == (1438, 32, 32, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, load_digits().target[:1438])
    assert 0.0 <= images.min() and images.max() <= 1.0
    # Content sits in the central 20x20 box, the border is black.
    assert images[:, :6].max() == 0 and images[:, 26:].max() == 0
    assert images[:, 6:26, 6:26].mean() > 0.1
    # Zooming the box back to 8x8 recovers the original 0..16 digit closely.
    from scipy import ndimage

    box = images[:100, 6:26, 6:26, 0]
    back = np.stack([ndimage.zoom(b, 8 / 20, order=1) for b in box])
    original = load_digits().images[:100] / 16.0
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    "split, expected",
    [("train[:50%]", (0, 719)), ("test[10:20]", (1448, 1458)), ("train[-10:]", (1428, 1438))],
)
def test_embedded_split_slicing(split, expected):
    ds = datasets.open_dataset("digits", split)
    _, labels = datasets.load_arrays(ds)
    _, all_labels = datasets._digits_images()
    np.testing.assert_array_equal(labels, all_labels[expected[0] : expected[1]])


def test_tfds_mock_data_batches():
    with tfds.testing.mock_data(num_examples=13):
        ds = datasets.open_dataset("cifar10", "test", data_dir="/nonexistent")
        assert ds.num_classes == 10 and len(ds) == 13
        batches = list(datasets.iterate_batches(ds, 5))
    assert [len(b[1]) for b in batches] == [5, 5, 3]
    images, labels = batches[0]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and 0 <= images.min() and images.max() <= 1


def test_per_host_slices_cover_every_image_once():
    ds = datasets.open_dataset("digits", "test[:23]")
    _, labels = datasets.load_arrays(ds)
    seen = {b: [] for b in range(3)}
    for p in range(2):
        for b, (_, lab) in enumerate(
            datasets.iterate_batches(ds, 8, process_index=p, process_count=2)
        ):
            seen[b].append(lab)
    assert sum(len(x) for v in seen.values() for x in v) == 23
    np.testing.assert_array_equal(np.concatenate([x for b in range(3) for x in seen[b]]), labels)
    with pytest.raises(ValueError, match="batch_size=7"):
        next(datasets.iterate_batches(ds, 7, process_count=2))


def test_start_batch_skips_batches():
    ds = datasets.open_dataset("digits", "test[:20]")
    all_batches = list(datasets.iterate_batches(ds, 8))
    later = list(datasets.iterate_batches(ds, 8, start_batch=1))
    assert len(later) == 2
    np.testing.assert_array_equal(later[0][1], all_batches[1][1])


def test_resize_center_crop():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 10:50] = 255  # the central 40x40 square is white
    out = datasets.resize_center_crop(image, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1:-1], 1.0, atol=1e-6)


def test_resize_center_crop_geometry_is_torchvision_s():
    # Resize(size): shorter side -> size, longer int(size * long / short) (truncated, not
    # rounded: 7 * 2 / 4 = 3.5 -> 3); CenterCrop(size): corner round((n - size) / 2).
    assert datasets.resized_size(4, 7, 2) == (2, 3) and datasets.resized_size(7, 4, 2) == (3, 2)
    assert datasets.resized_size(375, 500, 234) == (234, 312)  # not round(311.9...) either way
    assert datasets.resized_size(333, 500, 234) == (234, 351) and datasets.resized_size(
        9, 9, 5
    ) == (5, 5)
    # A 4 x 7 column ramp at size 4 is not resized; the crop's corner is round(3 / 2) = 2
    # (torchvision's; the floor would be 1): columns 2..5.
    ramp = np.tile(np.arange(7, dtype=np.uint8)[None, :, None] * 30, (4, 1, 3))
    out = datasets.resize_center_crop(ramp, 4)
    np.testing.assert_allclose(out[0, :, 0] * 255, [60, 90, 120, 150], atol=1e-4)


def test_resize_center_crop_keeps_unchanged_images_and_antialiases():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(datasets.resize_center_crop(image, 24), datasets.to_float(image))
    gray = rng.integers(0, 256, (24, 30, 1), dtype=np.uint8)  # one channel, cropped 3 px a side
    np.testing.assert_array_equal(
        datasets.resize_center_crop(gray, 24), datasets.to_float(gray)[:, 3:27]
    )
    # A 1-px checkerboard shrunk 4x averages to grey; point sampling would give 0 or 1.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
    small = datasets.resize_center_crop(board, 16)
    assert small.shape == (16, 16, 1) and np.abs(small - 0.5).max() < 0.05


def _mixed_sizes() -> datasets.Dataset:
    """Seven examples of different sizes; 3 of them have a shorter side below 32 px."""
    shapes = [(10, 20), (40, 36), (32, 32), (31, 50), (64, 32), (8, 8), (33, 90)]
    rng = np.random.default_rng(0)
    source = [
        {"image": rng.integers(0, 256, (*s, 3), dtype=np.uint8), "label": i % 3}
        for i, s in enumerate(shapes)
    ]
    return datasets.Dataset("mixed", "train", source, num_classes=3)


def test_counts_the_upscaled_images_while_reading():
    ds = _mixed_sizes()
    assert [datasets.is_upscaled(ex["image"].shape, 32) for ex in ds.source].count(True) == 3
    counts = datasets.ReadCounts()
    batches = list(datasets.iterate_batches(ds, 3, image_size=32, counts=counts))
    assert [len(b[1]) for b in batches] == [3, 3, 1] and batches[0][0].shape == (3, 32, 32, 3)
    assert (counts.num_read, counts.num_upscaled) == (7, 3)
    assert counts.global_counts() == counts  # one process
    # A resumed iteration counts the batches it skips too (without yielding them).
    resumed = datasets.ReadCounts()
    assert len(list(datasets.iterate_batches(ds, 3, image_size=32, start_batch=2, counts=resumed)))
    assert (resumed.num_read, resumed.num_upscaled) == (7, 3)
    # Host slices: each host counts its own examples, together every example once.
    hosts = [datasets.ReadCounts() for _ in range(2)]
    for p, c in enumerate(hosts):
        list(datasets.iterate_batches(ds, 4, 6, 32, process_index=p, process_count=2, counts=c))
    assert [c.num_read for c in hosts] == [4, 2] and sum(c.num_upscaled for c in hosts) == 3
    loaded = datasets.ReadCounts()
    images, _ = datasets.load_arrays(ds, 4, 32, counts=loaded)
    assert images.shape == (4, 32, 32, 3) and (loaded.num_read, loaded.num_upscaled) == (4, 2)
    none = datasets.ReadCounts()
    datasets.load_arrays(datasets.open_dataset("digits", "test[:5]"), counts=none)  # no image_size
    assert (none.num_read, none.num_upscaled) == (5, 0)
    # example_shape and the identity read examples without counting them.
    datasets.example_shape(ds, 32), ds.identity(7, 32)
    assert counts.num_read == 7


def test_invariance_writes_the_upscaled_count(tmp_path):
    """The 32 px digits at --image_size=40 are all upscaled, and results.json says so (the count
    of a resumed run is checked on `iterate_batches` above, without a second process)."""
    args = (
        "--model=allconv",
        "--dataset=digits",
        "--split=test[:12]",
        "--image_size=40",
        "--batch_size=8",
        "--transform=circular",
        "--max_shift=1",
        f"--output_dir={tmp_path}",
    )
    res = run_module("benchmarks.invariance", *args, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["num_upscaled"] == 12 and record["num_images"] == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (("digits", "validation"), "(?<!-)split='validation'"),
        (("no_such_dataset", "test"), "(?<!-)dataset='no_such_dataset'"),
        (("mnist", "test", "/nonexistent/dir"), "(?<!-)data_dir='/nonexistent/dir'"),
    ],
)
def test_clear_errors(args, message):
    with pytest.raises(datasets.DataError, match=message.replace("[", r"\[")):
        datasets.open_dataset(*args)


@needs_shared
def test_shared_mnist_matches_the_raw_idx_files():
    ds = datasets.open_dataset("mnist", "test[:50]", SHARED_TFDS)
    images, labels = datasets.load_arrays(ds)
    with gzip.open(os.path.join(SHARED, "raw", "mnist", "t10k-images-idx3-ubyte.gz")) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(SHARED, "raw", "mnist", "t10k-labels-idx1-ubyte.gz")) as f:
        raw_labels = np.frombuffer(f.read(), np.uint8, offset=8)
    # TFDS stores the examples in its own order: find each image among the raw ones.
    where = {im.tobytes(): i for i, im in enumerate(raw)}
    ours = np.round(images[..., 0] * 255).astype(np.uint8)
    found = [where.get(im.tobytes()) for im in ours]
    assert None not in found
    np.testing.assert_array_equal(labels, raw_labels[found])


@needs_shared
def test_shared_missing_split_names_the_data_dir():
    with pytest.raises(datasets.DataError, match="Unknown split 'train'"):
        datasets.open_dataset("mnist", "train", SHARED_TFDS)
    with pytest.raises(datasets.DataError, match="not prepared"):
        datasets.open_dataset("cifar100", "test", SHARED_TFDS)
