"""What every variant evaluates: the throughput protocols (`SETUPS`) and their workloads.

A workload is one protocol at the configured sizes: a crop-shift sweep, one model with seeded
random weights, and seeded random images and labels (throughput does not depend on their
values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from benchmarks.core import protocols
from benchmarks.data import datasets
from benchmarks.inference import classifiers
from benchmarks.studies.throughput.config import ThroughputConfig


@dataclasses.dataclass(frozen=True)
class Setup:
    """One throughput protocol: a model and a crop-shift sweep.

    Attributes:
      model: `models.registry` name.
      num_classes: its classes.
      crop_size: side of the crops the model sees (px).
      slack: image side minus crop side (px); shifts run over 0..max_shift <= slack.
      sweep: `sweeps.SWEEPS` shape of the shifts.
      max_shift: largest shift (px).
      batch_size: images per batch.
      fields: the model's subsampling switch, as (field, value) pairs.
    """

    model: str
    num_classes: int
    crop_size: int
    slack: int
    sweep: str
    max_shift: int
    batch_size: int
    fields: tuple[tuple[str, str], ...] = ()


_CIRCULAR = (("padding", "circular"),)
_FULL = (("stride_mode", "full"),)
SETUPS = {
    "resnet20": Setup("resnet20", 10, 32, 8, "grid", 8, 256),
    "resnet50": Setup("resnet50", 1000, 224, 10, "diagonal", 8, 16),
    "resnet20_circular": Setup("resnet20", 10, 32, 8, "grid", 8, 256, _CIRCULAR),
    "resnet20_full": Setup("resnet20", 10, 32, 8, "diagonal", 8, 64, _FULL),
    "resnet20_full_circular": Setup("resnet20", 10, 32, 8, "diagonal", 8, 64, _FULL + _CIRCULAR),
    "efficientnet_lite0": Setup("efficientnet_lite0", 1000, 224, 10, "diagonal", 8, 16),
}


def setup_for(name: str, config: ThroughputConfig) -> Setup:
    """The protocol `name` of `SETUPS` at the sizes `config` sets (its crop_size, max_shift
    and batch_size; None keeps the protocol's).

    Raises:
      ValueError: an unknown `name`, or a max_shift beyond the protocol's slack.
    """
    if name not in SETUPS:
        raise ValueError(f"name={name!r}: choose from {list(SETUPS)}.")
    setup = SETUPS[name]
    setup = dataclasses.replace(
        setup,
        crop_size=config.crop_size or setup.crop_size,
        max_shift=config.max_shift or setup.max_shift,
        batch_size=config.batch_size or setup.batch_size,
    )
    if setup.max_shift > setup.slack:
        raise ValueError(f"max_shift={setup.max_shift} exceeds the slack {setup.slack} px.")
    return setup


@dataclasses.dataclass
class Workload:
    """What every variant evaluates: a protocol, a classifier, batches of images and labels."""

    name: str
    setup: Setup  # at the configured sizes
    protocol: protocols.Protocol
    corners: np.ndarray  # [T, 2] top-left (y, x) of each crop window
    classifier: classifiers.Classifier  # the plain model and its variables
    logits: Callable[[Any, jax.Array], jax.Array]  # the JAX classifier of the JAX variants
    variables: Any  # its variables
    batches: list[tuple[np.ndarray, np.ndarray]]  # [(images [B, S, S, 3], labels [B])]

    @property
    def batch_size(self) -> int:
        """Images per batch, B."""
        return self.setup.batch_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[S, S, 3] of the images before cropping."""
        return self.batches[0][0].shape[1:]

    @property
    def host_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This process's slice of every batch (the evaluator's input; all of it on 1 host)."""
        return [datasets.local_batches(x, y, self.batch_size)[0] for x, y in self.batches]

    @property
    def work(self) -> int:
        """Images x transforms per round."""
        return len(self.batches) * self.batch_size * len(self.protocol.params)


def crop_corners(params: np.ndarray, max_shift: int, slack: int) -> np.ndarray:
    """[T, 2] top-left corners (px) of the crop windows of shifts `params` [T, 2] (the content
    moves by +shift: the window starts at base - shift, as `benchmarks.core.protocols` crops)."""
    base = max_shift + (slack - max_shift) // 2
    return (base - np.round(params)).astype(np.int64)


def build_workload(name: str, config: ThroughputConfig) -> Workload:
    """The protocol `name` at the sizes of `config`, with weights, images and labels seeded by
    `config.seed`, and the JAX classifier with `config.fast`'s inference rewrites.

    Raises:
      ValueError: as `setup_for`.
    """
    setup = setup_for(name, config)
    crop, side = setup.crop_size, setup.crop_size + setup.slack
    protocol = protocols.build(
        "crop",
        (side, side, 3),
        sweep=setup.sweep,
        max_shift=setup.max_shift,
        min_shift=0,
        crop_size=crop,
    )
    corners = crop_corners(protocol.params, setup.max_shift, setup.slack)
    probe = np.random.default_rng(1).random((side, side, 3), dtype=np.float32)
    for p, (y, x) in zip(protocol.params, corners):  # the torch loop crops the same windows
        np.testing.assert_array_equal(
            protocol.transform(probe, p), probe[y : y + crop, x : x + crop]
        )
    model = classifiers.build_model(setup.model, setup.num_classes, **dict(setup.fields))
    classifier = classifiers.Classifier(
        model, classifiers.random_variables(model, (crop, crop, 3), config.seed), "random (numpy)"
    )
    logits, variables = classifier.inference((crop, crop, 3), config.fast)
    rng = np.random.default_rng(config.seed)
    batches = [
        (
            rng.random((setup.batch_size, side, side, 3), dtype=np.float32),
            rng.integers(0, setup.num_classes, setup.batch_size).astype(np.int32),
        )
        for _ in range(config.num_batches)
    ]
    return Workload(name, setup, protocol, corners, classifier, logits, variables, batches)
