"""What one training run is: `TrainConfig` (optimizer, schedule, steps, batch size,
augmentation, seed, checkpoint cadence) and `TrainResult`; checked on construction, with
ValueErrors naming the field."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from benchmarks.data.augment import AUGMENTATIONS
from models.layers.conv import is_int

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"TrainConfig.{field} must be {allowed}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and must match to resume one).

    Attributes:
      optimizer: one of OPTIMIZERS. 'sgd' (plain), 'momentum' (heavy ball), 'adam', 'adamw'.
      learning_rate: peak learning rate, > 0.
      momentum: momentum of 'momentum', in [0, 1); unused by the others.
      schedule: one of SCHEDULES: 'constant', 'cosine' (decay to 0 over num_steps),
        'warmup_cosine' (linear from 0 over warmup_steps, then cosine to 0 at num_steps).
      warmup_steps: for 'warmup_cosine' an int in [1, num_steps); 0 otherwise.
      weight_decay: >= 0, on kernels only (ndim > 1: no biases, no BatchNorm scales): decoupled
        for 'adamw', an L2 term added to the gradient for the others.
      batch_size: examples per step, >= 1 (and <= the number of examples).
      num_steps: optimizer steps, >= 1 (`steps_for_epochs` converts epochs).
      augmentation: one of AUGMENTATIONS (see benchmarks.data.augment): 'none', 'crop' (random
        zero-filled shift by up to max_shift px), 'embed' (the image at a random position of a
        canvas_size canvas: the model then sees canvas-sized images), 'flip' (left-right).
      max_shift: for 'crop' an int >= 1 (pixels); 0 otherwise.
      canvas_size: for 'embed' an int >= the image side (pixels); 0 otherwise.
      seed: int >= 0; fixes the initialisation, the data order and the augmentation.
      log_every: log (and record in the history) every this many steps, >= 1.
      checkpoint_every: checkpoint every this many steps (and at the end), >= 1.
    """

    optimizer: str = "momentum"
    learning_rate: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 128
    num_steps: int = 1000
    augmentation: str = "none"
    max_shift: int = 0
    canvas_size: int = 0
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 500

    def __post_init__(self):
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _require(
            _is_real(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            self.learning_rate,
            "a finite number > 0",
        )
        _require(
            _is_real(self.momentum) and 0 <= self.momentum < 1,
            "momentum",
            self.momentum,
            "a number in [0, 1)",
        )
        _require(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        _require(
            _is_real(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            self.weight_decay,
            "a finite number >= 0",
        )
        for field in ("batch_size", "num_steps", "log_every", "checkpoint_every"):
            value = getattr(self, field)
            _require(is_int(value) and value >= 1, field, value, "an int >= 1")
        _require(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an int >= 0")
        if self.schedule == "warmup_cosine":
            _require(
                is_int(self.warmup_steps) and 1 <= self.warmup_steps < self.num_steps,
                "warmup_steps",
                self.warmup_steps,
                f"an int in [1, num_steps={self.num_steps}) with schedule='warmup_cosine'",
            )
        else:
            _require(
                self.warmup_steps == 0,
                "warmup_steps",
                self.warmup_steps,
                "0 unless schedule='warmup_cosine'",
            )
        _require(
            self.augmentation in AUGMENTATIONS,
            "augmentation",
            self.augmentation,
            f"one of {AUGMENTATIONS}",
        )
        for field, kind in (("max_shift", "crop"), ("canvas_size", "embed")):
            value = getattr(self, field)
            if self.augmentation == kind:
                _require(
                    is_int(value) and value >= 1,
                    field,
                    value,
                    f"an int >= 1 with augmentation={kind!r}",
                )
            else:
                _require(value == 0, field, value, f"0 unless augmentation={kind!r}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` returns.

    Attributes:
      variables: the trained flax variables ({'params': ..., and e.g. 'batch_stats': ...}).
      steps: optimizer steps taken in total (= config.num_steps).
      wall_time_s: seconds spent training, summed over every call that contributed (a resumed run
        counts the time up to its last checkpoint, plus the time after).
      final_loss: training loss (mean cross-entropy, nats) of the last step's batch.
      history: [{'step': int, 'loss': float}] every log_every steps and at the last step.
    """

    variables: Any
    steps: int
    wall_time_s: float
    final_loss: float
    history: list


def steps_for_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `num_examples`: ceil(epochs * N / batch_size)."""
    if not (_is_real(epochs) and epochs > 0):
        raise ValueError(f"epochs must be a finite number > 0, got {epochs!r}.")
    if not (is_int(num_examples) and is_int(batch_size) and num_examples >= 1 and batch_size >= 1):
        raise ValueError(
            f"num_examples and batch_size must be ints >= 1, got {num_examples!r}, {batch_size!r}."
        )
    return math.ceil(epochs * num_examples / batch_size)
