"""Datasets: TFDS random-access sources, the embedded default, batching, per-host slices.

Every image leaves this module as float32 in [0, 1], NHWC, labels as int32. TFDS datasets are
read through `tfds.data_source` (ArrayRecord files, no TensorFlow needed); nothing is ever
downloaded from here: a dataset that is not prepared in `data_dir` is a `DataError` that names
the directory searched.

The embedded default, `digits`, is the 1,797 real handwritten digits (8x8, 0..16) bundled with
scikit-learn, upscaled to 20x20 and centred on a 32x32 black canvas (as MNIST centres a 20x20
box in 28x28): real images that need no download. Split 'train' is the first 80%, 'test' the
rest.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils
from PIL import Image

from benchmarks.core import options
from benchmarks.core.options import option
from benchmarks.core.run_identity import digest_arrays

EMBEDDED = ("digits",)
DIGITS_CANVAS = 32
DIGITS_SIZE = 20


class DataError(ValueError):
    """A dataset, split or data_dir that cannot be read; the message names what was searched."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images an evaluation reads (each option declared once: `benchmarks.core.options`)."""

    dataset: str = option(
        "digits", "'digits' (embedded, no download) or a TFDS image-classification dataset."
    )
    data_dir: str | None = option(None, "TFDS data directory (default ~/tensorflow_datasets).")
    split: str = option("test", "Split, with TFDS slicing (e.g. 'test[80%:]').")
    num_images: int | None = option(None, "Use the first N images (default: all).", lower=1)
    image_size: int | None = option(
        None,
        "Resize the shorter side and centre-crop to this size before transforming (needed "
        "for variable-size datasets).",
        lower=8,
    )

    def __post_init__(self):
        options.check(self)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A random-access image-classification dataset.

    Attributes:
      name: dataset name (TFDS name or an embedded name).
      split: split string as given (TFDS slicing such as 'test[:80%]' honoured).
      source: sequence of examples; `source[i]` is a dict with `image_key` and `label_key`.
      num_classes: number of classes.
      image_key: feature name of the image.
      label_key: feature name of the label.
      version: the dataset's version (TFDS builder version; for digits, scikit-learn's).
    """

    name: str
    split: str
    source: Sequence[dict]
    num_classes: int
    image_key: str = "image"
    label_key: str = "label"
    version: str = ""

    def __len__(self) -> int:
        return len(self.source)

    def identity(self, num_images: int, image_size: int | None) -> dict:
        """What determines the images an evaluation reads: name, version, split, the number of
        images, the image size, and a digest of the first and last example read (which tells
        two datasets of one name apart)."""
        ends = sorted({0, max(num_images - 1, 0)}) if num_images else []
        examples = [_example(self, i, image_size) for i in ends]
        return {
            "name": self.name,
            "version": self.version,
            "split": self.split,
            "num_images": int(num_images),
            "image_size": image_size,
            "ends_sha256": digest_arrays([[im, np.int32(lab)] for im, lab in examples]),
        }


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits on a 32x32 canvas: float32 [1797, 32, 32, 1] in [0,1], int32 [1797].

    scikit-learn and scipy are imported here, for the embedded digits only (several seconds).
    """
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = digits.images.astype(np.float32) / 16.0  # [N, 8, 8]
    zoom = DIGITS_SIZE / small.shape[1]
    big = np.stack([np.clip(ndimage.zoom(im, zoom, order=1), 0.0, 1.0) for im in small])
    canvas = np.zeros((len(big), DIGITS_CANVAS, DIGITS_CANVAS, 1), np.float32)
    o = (DIGITS_CANVAS - DIGITS_SIZE) // 2
    canvas[:, o : o + DIGITS_SIZE, o : o + DIGITS_SIZE, 0] = big
    return canvas, digits.target.astype(np.int32)


class _ArraySource(Sequence):
    """A Sequence of {'image', 'label'} dicts over in-memory arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self._images, self._labels = images, labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i):
        return {"image": self._images[i], "label": self._labels[i]}


def _slice_embedded(n: int, split: str) -> slice:
    """Resolves 'train' (first 80%), 'test' (last 20%) with optional TFDS slicing of either."""
    train = int(round(0.8 * n))
    bounds = {"train": (0, train), "test": (train, n)}
    base = split.split("[")[0]
    if base not in bounds:
        raise DataError(
            f"split={split!r}: the embedded dataset has splits 'train' (first 80% "
            "of the 1,797 digits) and 'test' (the rest), e.g. 'train[:50%]'."
        )
    lo, hi = bounds[base]
    info = {base: types.SimpleNamespace(num_examples=hi - lo)}
    try:
        (instr,) = tfds.core.ReadInstruction.from_spec(split).to_absolute(info)
    except (ValueError, AssertionError) as e:
        raise DataError(f"split={split!r}: {e}") from None
    n_split = hi - lo
    return slice(lo + (instr.from_ or 0), lo + (n_split if instr.to is None else instr.to))


def _searched(data_dir: str | None) -> str:
    """The TFDS data directory actually searched for `data_dir`."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def tfds_builder(name: str, data_dir: str | None = None) -> Any:
    """The TFDS builder of `name` in `data_dir` (None = $TFDS_DATA_DIR or ~/tensorflow_datasets).

    Raises:
      DataError: not a TFDS dataset, or its builder code needs a missing module.
    """
    try:
        return tfds.builder(name, data_dir=_searched(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"dataset={name!r} is not a TFDS dataset name (or 'digits', the embedded one)."
        ) from None
    except ImportError as e:  # the builder's own code needs a missing module (e.g. TensorFlow)
        raise DataError(
            f"dataset={name!r} is not prepared in data_dir={_searched(data_dir)!r}, and "
            f"building it from its TFDS code needs a missing module "
            f"({str(e).rsplit(': ', 1)[-1]})."
        ) from None


def tfds_split(builder: Any, split: str) -> Sequence[dict]:
    """The random-access source of one split (TFDS slicing honoured) of a prepared dataset.

    Returns:
      A sequence; `source[i]` is the i-th example as a dict of numpy values.

    Raises:
      DataError: missing data_dir, dataset not prepared there, unknown split.
    """
    name, searched = builder.name, str(builder.data_dir_root)
    try:
        return builder.as_data_source(split=split)
    except (ValueError, KeyError, NotImplementedError, FileNotFoundError, AssertionError) as e:
        if not os.path.isdir(searched):
            raise DataError(
                f"data_dir={searched!r} does not exist (looking for dataset {name!r})."
            ) from None
        if not builder.is_prepared():
            raise DataError(
                f"dataset={name!r} is not prepared in data_dir={searched!r} (it holds "
                f"{sorted(os.listdir(searched))}). Prepare it there first (tfds build "
                "--file_format=array_record), or use dataset=digits."
            ) from None
        first = str(e).strip().splitlines()[0]
        raise DataError(
            f"dataset={name!r} split={split!r} in data_dir={searched!r}: {first}"
        ) from None


def open_dataset(name: str, split: str, data_dir: str | None = None) -> Dataset:
    """Opens a dataset for random access.

    Args:
      name: 'digits' (embedded, no download) or any TFDS image-classification dataset name
        ('mnist', 'cifar10', 'imagenette', 'imagenet2012', ...), optionally 'name:version'.
      split: split with optional TFDS slicing, e.g. 'test', 'test[:80%]', 'validation[10:20]'.
      data_dir: TFDS data directory (None = TFDS default, ~/tensorflow_datasets).

    Returns:
      A `Dataset`.

    Raises:
      DataError: unknown dataset, missing data_dir, dataset not prepared there, unknown split.
    """
    if name in EMBEDDED:
        images, labels = _digits_images()
        sl = _slice_embedded(len(labels), split)
        source = _ArraySource(images[sl], labels[sl])
        return Dataset(
            name, split, source, 10, version=f"sklearn-{metadata.version('scikit-learn')}"
        )
    builder = tfds_builder(name, data_dir)
    source = tfds_split(builder, split)
    features = builder.info.features
    image_key = (
        "image"
        if "image" in features
        else next((k for k in features if type(features[k]).__name__ == "Image"), None)
    )
    label_key = (
        "label"
        if "label" in features
        else next((k for k in features if type(features[k]).__name__ == "ClassLabel"), None)
    )
    if image_key is None or label_key is None:
        raise DataError(
            f"dataset={name!r} has no image and class-label features (features: {list(features)})."
        )
    return Dataset(
        name,
        split,
        source,
        features[label_key].num_classes,
        image_key,
        label_key,
        str(builder.info.version),
    )


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] in 0..255 (or floats already in [0,1]) -> float32 in [0, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) in px of an image of height x width px after its shorter side is resized to `size`.

    torchvision's `Resize(size)` geometry: the shorter side becomes `size`, the longer
    int(size * long / short) (truncated); a square image becomes size x size.
    """
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def is_upscaled(shape: Sequence[int], image_size: int | None) -> bool:
    """Whether `resize_center_crop(image of shape [H, W, C], image_size)` enlarges the image:
    its shorter side min(H, W) is below `image_size` px (never when image_size is None)."""
    return image_size is not None and min(shape[0], shape[1]) < image_size


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` (bilinear, antialiased) and centre-crops size x size.

    As torchvision's `Resize(size)` + `CenterCrop(size)` on a PIL image (the usual ImageNet
    evaluation recipe, also used with the Keras models): PIL's bilinear resize, whose filter
    support grows with the downscale factor (antialiased), to `resized_size`, then the window
    whose top-left corner is round((resized - size) / 2) (Python's round) on each axis. A uint8
    image already size x size comes back unchanged (as `to_float`); one whose shorter side is
    below `size` is upscaled (`is_upscaled`). Float images are quantised to uint8 first.

    Args:
      image: [H, W, C] uint8 in 0..255 or float in [0, 1], C = 1 or 3.
      size: output side in pixels.

    Returns:
      float32 [size, size, C] in [0, 1].
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, size)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image).resize((nw, nh), Image.BILINEAR)
    out = np.asarray(pil)
    out = out[..., None] if squeeze else out
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    return to_float(out[top : top + size, left : left + size])


@dataclasses.dataclass
class ReadCounts:
    """How many examples `iterate_batches` / `load_arrays` covered, and how many of their images
    `resize_center_crop` had to enlarge (shorter side below the requested image size).

    Pass one as `counts=` and read it after the iteration. Each call adds the examples it
    covers (this host's slices only; `global_counts()` sums over hosts). A resumed
    `iterate_batches` (start_batch > 0) also counts the examples of the batches it skips, by
    decoding their images once more (no resize), so the count is that of the whole run.

    Attributes:
      num_read: examples counted.
      num_upscaled: of those, images whose shorter side was below the image size (0 when no
        image size is given).
    """

    num_read: int = 0
    num_upscaled: int = 0

    def add(self, shape: Sequence[int], image_size: int | None) -> None:
        """Counts one example whose stored image has shape [H, W, C]."""
        self.num_read += 1
        self.num_upscaled += int(is_upscaled(shape, image_size))

    def global_counts(self) -> ReadCounts:
        """The counts summed over every process (a collective: every host must call it)."""
        if jax.process_count() == 1:
            return ReadCounts(self.num_read, self.num_upscaled)

        local = np.asarray([self.num_read, self.num_upscaled], np.int64)
        total = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2).sum(0)
        return ReadCounts(int(total[0]), int(total[1]))


def _example(
    dataset: Dataset, i: int, image_size: int | None, counts: ReadCounts | None = None
) -> tuple[np.ndarray, int]:
    ex = dataset.source[i]
    image = np.asarray(ex[dataset.image_key])
    if counts is not None:
        counts.add(image.shape, image_size)
    image = resize_center_crop(image, image_size) if image_size else to_float(image)
    return image, int(ex[dataset.label_key])


def load_arrays(
    dataset: Dataset,
    num_images: int | None = None,
    image_size: int | None = None,
    counts: ReadCounts | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the first `num_images` examples into memory.

    Args:
      dataset: an opened `Dataset`.
      num_images: read this many examples (None = the whole split).
      image_size: resize shorter side + centre crop to this size in px (`resize_center_crop`;
        None = keep the stored size, which must then be the same for every image).
      counts: when given, the examples read and the upscaled images among them are added to it.

    Returns:
      images float32 [N, H, W, C] in [0, 1] and labels int32 [N].
    """
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    pairs = [_example(dataset, i, image_size, counts) for i in range(n)]
    return (
        np.stack([p[0] for p in pairs]).astype(np.float32),
        np.asarray([p[1] for p in pairs], np.int32),
    )


def example_shape(dataset: Dataset, image_size: int | None = None) -> tuple[int, int, int]:
    """(H, W, C) of the dataset's images as `iterate_batches` yields them."""
    if not len(dataset):
        raise DataError(f"split={dataset.split!r} of dataset={dataset.name!r} is empty.")
    return _example(dataset, 0, image_size)[0].shape


def _host_range(start: int, n: int, batch_size: int, process_index: int, process_count: int):
    """The examples of global batch [start, start + batch_size) that host `process_index` of
    `process_count` reads: its equal slice, clipped to the n examples."""
    local = batch_size // process_count
    lo = min(start + process_index * local, n)
    return range(lo, min(lo + local, n, start + batch_size))


def local_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """This process's slice of every global batch of in-memory arrays, as `iterate_batches`
    slices a dataset (what `evaluate.Evaluator.run` takes on each host).

    Args:
      images: [N, H, W, C], the same on every process.
      labels: [N].
      batch_size: global batch size, divisible by `jax.process_count()`.

    Returns:
      [(images [b, H, W, C], labels [b])] per global batch, b <= batch_size / process_count.
    """
    p, count = jax.process_index(), jax.process_count()
    if batch_size % count:
        raise ValueError(f"batch_size={batch_size} is not divisible by the process count {count}.")
    out = []
    for start in range(0, len(labels), batch_size):
        r = _host_range(start, len(labels), batch_size, p, count)
        out.append((images[r.start : r.stop], labels[r.start : r.stop]))
    return out


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    num_images: int | None = None,
    image_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
    counts: ReadCounts | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields this host's part of each global batch, in dataset order.

    Global batch b covers examples [b*batch_size, (b+1)*batch_size); host p yields the p-th of
    `process_count` equal slices of it (the last global batch may be short; hosts then yield
    short or empty slices, which the evaluator pads).

    Args:
      dataset: an opened `Dataset`.
      batch_size: global batch size (divisible by process_count).
      num_images: stop after this many examples (None = the whole split).
      image_size: resize shorter side + centre crop to this size in px (`resize_center_crop`;
        None = keep the stored size, which must then be the same for every image).
      process_index, process_count: this host and the number of hosts.
      start_batch: first global batch to yield (resuming an interrupted evaluation).
      counts: when given, every example of this host's slices is added to it as it is read
        (the upscaled images among them); with start_batch > 0 the examples of the skipped
        batches are counted first, by decoding their images (no resize, nothing yielded).

    Yields:
      (images float32 [b, H, W, C], labels int32 [b]) with b <= batch_size // process_count.
    """
    if batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the process count {process_count}."
        )
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    shape = _example(dataset, 0, image_size)[0].shape if n else (0, 0, 0)

    def local_range(start: int) -> range:
        return _host_range(start, n, batch_size, process_index, process_count)

    if counts is not None:  # the skipped batches of a resumed run: shapes only
        for start in range(0, min(start_batch * batch_size, n), batch_size):
            for i in local_range(start):
                counts.add(np.shape(dataset.source[i][dataset.image_key]), image_size)
    for start in range(start_batch * batch_size, n, batch_size):
        pairs = [_example(dataset, i, image_size, counts) for i in local_range(start)]
        if pairs:
            yield (
                np.stack([p[0] for p in pairs]).astype(np.float32),
                np.asarray([p[1] for p in pairs], np.int32),
            )
        else:
            yield np.zeros((0, *shape), np.float32), np.zeros((0,), np.int32)
