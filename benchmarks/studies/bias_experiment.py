"""The photographer's bias, its effect (Azulay & Weiss, claim 3): train on digits placed with a
bias, test them at every distance from the canvas centre.

`run` trains the same net on digits placed with each training bias ('centred:sigma=S' draws
the digit centre S px around the canvas centre, 'uniform' anywhere on the canvas;
`benchmarks.studies.bias_stats.Bias`), then puts each test digit at distance r (`offsets`)
from the canvas centre in `num_directions` directions and measures accuracy there and
P(top-1 change) under 1-px shifts around it (a `local_sweep` of +-`local_shift` px, one
evaluator sweep per position). A digit is the central `box_size` px of each image (the
embedded digits: their 20 px digit; MNIST: 24 px keep all but 0.3% of its ink), resized to
`digit_size`, pasted into a black `canvas_size` canvas. Each bias trains in its own directory
and caches its result there under a fingerprint of everything that determines it.
`write_experiment` writes the record, table and plots.

Settings are arguments (`ExperimentConfig`, `datasets.DataConfig`, `evaluator.EvalConfig`); a
setting that cannot be used is a ValueError naming the argument (`offsets=14 plus ...`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from benchmarks.core import evaluator, options, protocols, run_identity, sweeps, transforms
from benchmarks.core.options import option
from benchmarks.data import datasets
from benchmarks.inference import classifiers, fastpath
from benchmarks.results import plots, report
from benchmarks.studies import bias_stats
from benchmarks.training import config as train_config
from models.layers.conv import is_int

TABLE = ("accuracy", "p_top1_change", "sweep_accuracy")
LOCAL_SWEEPS = ("diagonal", "horizontal", "vertical")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Canvas geometry and test positions of the experiment (pixels)."""

    canvas_size: int
    digit_size: int
    box_size: int
    offsets: tuple[int, ...]
    num_directions: int
    local: np.ndarray  # [T, 2] int, the 1-px sweep around a position; local[k] = (0, 0)
    reference_index: int


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment trains and measures (the option fields are also the CLI's flags).

    Attributes:
      biases: training biases, 'uniform' or 'centred:sigma=S' (`bias_stats.parse_bias`),
        distinct.
      offsets: test distances r from the canvas centre, ints >= 0 (px).
      model: the model and its subsampling switch (no checkpoint or weights: the experiment
        trains its own nets).
      fast: evaluate with `benchmarks.inference.fastpath`'s rewrites (the same logits).
      seed: the training seed.
      central_fraction: side of the central square of the placement summary, in (0, 1].
    """

    biases: tuple[str, ...] = ("centred:sigma=2", "uniform")
    offsets: tuple[int, ...] = (0, 4, 8, 12)
    model: classifiers.ModelConfig = dataclasses.field(
        default_factory=lambda: classifiers.ModelConfig(model="vgg_small", width=8)
    )
    fast: bool = True
    seed: int = 0
    central_fraction: float = 0.5
    num_directions: int = option(8, "Test directions per distance.", lower=1)
    local_sweep: str = option("diagonal", "1-px sweep.", choices=LOCAL_SWEEPS)
    local_shift: int = option(1, "The 1-px sweep spans -k..k around a position.", lower=1)
    canvas_size: int = option(48, "Canvas side (px).", lower=2)
    digit_size: int = option(20, "Side of the pasted digit (px).", lower=1)
    box_size: int = option(20, "Side of the central crop holding the digit (px).", lower=1)
    placements: int = option(2, "Training placements per training digit.", lower=1)
    train_split: str = option("train", "Split to train on (TFDS slicing honoured).")
    num_train: int | None = option(None, "Train on the first N digits (default: all).", lower=1)
    head: str = option("gap", "Model head (global pooling or flatten).", choices=("gap", "flatten"))
    train_steps: int = option(300, "Optimizer steps per bias.", lower=1)
    train_batch_size: int = option(64, "Training batch size.", lower=1)
    learning_rate: float = option(3e-3, "Adam learning rate (cosine decay).", lower=0.0)

    def __post_init__(self):
        options.check(self)
        if self.model.checkpoint or self.model.weights:
            raise ValueError("`checkpoint`/`weights`: the experiment trains its own nets.")
        try:
            biases = [bias_stats.parse_bias(b) for b in self.biases]
        except ValueError as e:
            raise ValueError(f"`biases`: {e}.") from None
        if not biases or len({b.name for b in biases}) < len(biases):
            raise ValueError(f"biases={','.join(self.biases)}: give distinct biases.")
        self.geometry()
        try:  # the training settings that do not depend on the data
            self.train_config(num_examples=1)
        except ValueError as e:
            raise ValueError(f"training settings: {e}") from None

    def geometry(self) -> Geometry:
        """The canvas and test positions.

        Raises:
          ValueError: offsets that are not ints >= 0, a canvas_size and digit_size that
            `bias_stats.max_offset` refuses, or a test sweep that leaves the canvas.
        """
        if not self.offsets or not all(is_int(o) and o >= 0 for o in self.offsets):
            raise ValueError(f"offsets={','.join(map(str, self.offsets))} must be ints >= 0 (px).")
        try:
            limit = bias_stats.max_offset(self.canvas_size, self.digit_size)
        except ValueError as e:
            raise ValueError(f"`canvas_size`/`digit_size`: {e}.") from None
        offsets = tuple(sorted(set(self.offsets)))
        k = self.local_shift
        if offsets[-1] + k > limit:
            raise ValueError(
                f"offsets={offsets[-1]} plus local_shift={k} exceeds {limit} px, the room a "
                f"{self.digit_size} px digit has in a {self.canvas_size} px canvas."
            )
        local, _, _, _ = sweeps.shift_sweep(self.local_sweep, -k, k)
        return Geometry(
            self.canvas_size, self.digit_size, self.box_size, offsets, self.num_directions, local, k
        )

    def train_config(self, num_examples: int) -> train_config.TrainConfig:
        """The training run of one bias on `num_examples` placed digits (Adam, cosine decay)."""
        return train_config.TrainConfig(
            optimizer="adam",
            learning_rate=self.learning_rate,
            batch_size=min(self.train_batch_size, num_examples),
            num_steps=self.train_steps,
            seed=self.seed,
            log_every=max(self.train_steps // 5, 1),
            checkpoint_every=max(self.train_steps // 2, 1),
        )


def digit_boxes(images: np.ndarray, box_size: int) -> np.ndarray:
    """The central box_size x box_size crop of each image: [N, H, W, C] -> [N, b, b, C].

    Raises:
      datasets.DataError: box_size exceeds the images.
    """
    h, w = images.shape[1:3]
    if box_size > min(h, w):
        raise datasets.DataError(f"box_size={box_size} exceeds the {h}x{w} images.")
    offset = jnp.array([(h - box_size) // 2, (w - box_size) // 2])
    crop = lambda im: transforms.crop(im, offset, out_size=(box_size, box_size))
    return np.asarray(jax.vmap(crop)(images))


@dataclasses.dataclass(frozen=True)
class Digits:
    """The digit boxes of the experiment, in memory.

    Attributes:
      train, test: boxes float32 [N, b, b, C] in [0, 1] (b = box_size) and labels int32 [N].
      num_classes: classes of the dataset.
      source: [dataset, train split, test split, image size] (part of the fingerprint).
    """

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    source: list[Any]


def load_digits(data: datasets.DataConfig, config: ExperimentConfig) -> Digits:
    """The digit boxes of `config.train_split` (`num_train`) and `data.split` (`num_images`).

    Raises:
      datasets.DataError: a dataset or split that cannot be read, or images smaller than
        the box.
    """
    train_ds = datasets.open_dataset(data.dataset, config.train_split, data.data_dir)
    test_ds = datasets.open_dataset(data.dataset, data.split, data.data_dir)
    train_x, train_y = datasets.load_arrays(train_ds, config.num_train, data.image_size)
    test_x, test_y = datasets.load_arrays(test_ds, data.num_images, data.image_size)
    return Digits(
        train=(digit_boxes(train_x, config.box_size), train_y),
        test=(digit_boxes(test_x, config.box_size), test_y),
        num_classes=train_ds.num_classes,
        source=[data.dataset, config.train_split, data.split, data.image_size],
    )


def evaluate_positions(
    apply_fn: Callable[..., jax.Array],
    variables: Any,
    protocol: protocols.Protocol,
    eval_config: evaluator.EvalConfig,
    test: tuple[np.ndarray, np.ndarray],
    geo: Geometry,
) -> tuple[list[dict[str, Any]], int]:
    """Accuracy and P(top-1 change) of the test digits at each distance r (averaged over the
    positions at r; stderr is the mean of their standard errors, an upper bound of the
    standard error of the average whatever the correlation between positions).

    Every position's evaluator shares one compiled function (the same classifier and
    transform, another sweep).

    Args:
      apply_fn, variables: the classifier, as `evaluator.Evaluator` takes them.
      protocol: `bias_stats.placement_protocol` (its sweep is replaced per position).
      eval_config: the evaluator's settings.
      test: digit boxes [N, b, b, C] and labels [N].
      geo: the test positions.

    Returns:
      (one row per offset r: {'offset', 'radius' (mean distance of its positions, px),
      'accuracy', 'accuracy_stderr', 'sweep_accuracy', 'p_top1_change',
      'p_top1_change_stderr', 'positions': [the same per position, with its 'position']},
      the times the shared batch function was traced).
    """
    batches = datasets.local_batches(*test, eval_config.batch_size)
    rows = []
    for r in geo.offsets:
        positions = bias_stats.ring_offsets(r, geo.num_directions)
        per_position = []
        for p in positions:
            local = protocol.with_sweep(p + geo.local, geo.reference_index)
            ev = evaluator.Evaluator(apply_fn, local, eval_config, variables=variables)
            res = ev.run(batches, progress_every=0)
            per_position.append(
                {
                    "position": p,
                    "accuracy": res.metrics["accuracy_reference"],
                    "accuracy_stderr": res.stderr["accuracy_reference"],
                    "sweep_accuracy": res.metrics["accuracy"],
                    "p_top1_change": res.metrics["p_top1_change"],
                    "p_top1_change_stderr": res.stderr["p_top1_change"],
                }
            )
        keys = [key for key in per_position[0] if key != "position"]
        rows.append(
            {
                "offset": r,
                "radius": float(np.mean(np.linalg.norm(positions, axis=1))),
                **{key: float(np.mean([q[key] for q in per_position])) for key in keys},
                "positions": per_position,
            }
        )
    return rows, res.compile_count


def run_bias(
    bias: bias_stats.Bias,
    config: ExperimentConfig,
    digits: Digits,
    eval_config: evaluator.EvalConfig,
    workdir: str,
    train_fn: Callable[..., train_config.TrainResult],
) -> dict[str, Any]:
    """Trains (or restores) the net on digits placed with `bias`; measures it at each r.

    Cached in workdir/result.json under its fingerprint (bias, model, fields, training and
    evaluation configs, inference path, geometry, placements, data and its digests, package
    version): a cached result of the same fingerprint is returned as it is.

    Args:
      bias: the training bias.
      config: the experiment's settings.
      digits: the digit boxes (`load_digits`).
      eval_config: the evaluator's settings.
      workdir: the bias's directory (its checkpoint and result.json).
      train_fn: `train_fn(model, images, labels, train_config, workdir, identity)` trains
        (or restores) `model` in `workdir` as `benchmarks.training.train.train` does.

    Returns:
      {'bias', 'fingerprint', 'train_time_s', 'final_loss', 'placement_summary' (of the
       training placements, normalised), 'placement_heatmap' [canvas, canvas], 'offsets'
       (`evaluate_positions`), 'compile_count'}.
    """
    geo = config.geometry()
    switch = config.model.switch()
    fields = {"head": config.head, **{k: v for k, v in switch.items() if v is not None}}
    train_config = config.train_config(config.placements * len(digits.train[1]))
    fingerprint = {
        "bias": bias.name,
        "model": config.model.model,
        "fields": fields,
        "train": dataclasses.asdict(train_config),
        "eval": dataclasses.asdict(eval_config),
        "inference": fastpath.identity(config.fast),
        "geometry": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(geo).items()},
        "placements": config.placements,
        "num_train": len(digits.train[1]),
        "num_test": len(digits.test[1]),
        "data": digits.source,
        "train_sha256": run_identity.digest_arrays(digits.train),
        "test_sha256": run_identity.digest_arrays(digits.test),
        "shiftbench": run_identity.package_version(),
    }
    fingerprint = run_identity.jsonable(fingerprint)
    cached = report.read_json(os.path.join(workdir, "result.json"))
    if cached and cached.get("fingerprint") == fingerprint:
        logging.info("%s: finished earlier, reusing %s", bias.name, workdir)
        return cached

    boxes = np.tile(digits.train[0], (config.placements, 1, 1, 1))
    labels = np.tile(digits.train[1], config.placements)
    limit = bias_stats.max_offset(geo.canvas_size, geo.digit_size)
    offsets = bias_stats.sample_offsets(jax.random.key(train_config.seed), len(labels), bias, limit)
    images = np.asarray(bias_stats.place(boxes, offsets, geo.canvas_size, geo.digit_size))
    model = classifiers.build_model(config.model.model, digits.num_classes, **fields)
    train_identity = {
        "model": config.model.model,
        "fields": fields,
        "data": fingerprint["data"],
        "images_sha256": run_identity.digest_arrays((images, labels)),
    }
    trained = train_fn(model, images, labels, train_config, workdir, train_identity)
    clf = classifiers.Classifier(model, jax.device_get(trained.variables), f"checkpoint:{workdir}")
    protocol = bias_stats.placement_protocol(
        digits.test[0].shape[1:], geo.canvas_size, geo.digit_size
    )
    logits, variables = clf.inference(protocol.output_shape, config.fast)

    placed = bias_stats.placement_boxes(offsets, geo.canvas_size, geo.digit_size)
    summary = bias_stats.summarize(placed, config.central_fraction)
    rows, compile_count = evaluate_positions(
        logits, variables, protocol, eval_config, digits.test, geo
    )
    result = {
        "bias": bias.name,
        "fingerprint": fingerprint,
        "train_time_s": trained.wall_time_s,
        "final_loss": trained.final_loss,
        "placement_summary": jax.device_get(summary),
        "placement_heatmap": np.asarray(  # one cell per canvas pixel
            bias_stats.centre_heatmap(bias_stats.box_centres(placed), geo.canvas_size)
        ),
        "offsets": rows,
        "compile_count": compile_count,  # of the function every position shares
    }
    report.write_json(os.path.join(workdir, "result.json"), result)
    return result


def run(
    config: ExperimentConfig,
    data_config: datasets.DataConfig,
    eval_config: evaluator.EvalConfig,
    output_dir: str,
    train_fn: Callable[..., train_config.TrainResult],
) -> list[dict[str, Any]]:
    """The whole experiment: one net per bias of `config`, each trained and measured in
    output_dir/<bias name without ':' and '='> (`run_bias`, which also says what `train_fn`
    is). A chunk_size of `eval_config`
    is capped at the length of the local sweep.

    Returns:
      The `run_bias` results, in the order of `config.biases`.
    """
    digits = load_digits(data_config, config)
    if eval_config.chunk_size is not None:
        local = len(config.geometry().local)
        eval_config = dataclasses.replace(
            eval_config, chunk_size=min(eval_config.chunk_size, local)
        )
    biases = [bias_stats.parse_bias(spec) for spec in config.biases]
    return [
        run_bias(
            bias,
            config,
            digits,
            eval_config,
            os.path.join(output_dir, bias.name.replace(":", "_").replace("=", "")),
            train_fn,
        )
        for bias in biases
    ]


def write_experiment(
    output_dir: str,
    results: list[dict[str, Any]],
    record_config: dict[str, Any],
    wall_time_s: float,
) -> None:
    """experiment.json, experiment.csv, accuracy.png and p_top1_change.png (metric against r,
    a line per bias), placements.png (where each bias put the training digits) in
    `output_dir`, and the table on stdout.

    Args:
      results: `run` results.
      record_config: the settings to record under 'config' (with 'model' and 'dataset').
      wall_time_s: the experiment's wall time (s).
    """
    rows = [
        {
            "bias": r["bias"],
            "offset": o["offset"],
            "radius": round(o["radius"], 2),
            **{k: o[k] for k in TABLE},
            "accuracy_stderr": o["accuracy_stderr"],
            "p_top1_change_stderr": o["p_top1_change_stderr"],
            "positions": len(o["positions"]),
        }
        for r in results
        for o in r["offsets"]
    ]
    report.write_json(
        os.path.join(output_dir, "experiment.json"),
        {
            "config": record_config,
            "biases": {
                r["bias"]: {k: v for k, v in r.items() if k != "fingerprint"} for r in results
            },
            "table": rows,
            "versions": report.versions(),
            "wall_time_s": wall_time_s,
        },
    )
    report.write_csv(os.path.join(output_dir, "experiment.csv"), rows)
    xlabel = "test offset r from the canvas centre (px)"
    model, dataset = record_config["model"], record_config["dataset"]
    for metric, label in (("accuracy", "top-1 accuracy"), ("p_top1_change", "P(top-1 change)")):
        plots.plot_lines(
            os.path.join(output_dir, f"{metric}.png"),
            [o["offset"] for o in results[0]["offsets"]],
            xlabel,
            {r["bias"]: [o[metric] for o in r["offsets"]] for r in results},
            f"{label} (+- 1 s.e.)",
            f"{model} on {dataset}: {label} by training bias",
            errors={r["bias"]: [o[f"{metric}_stderr"] for o in r["offsets"]] for r in results},
        )
    plots.plot_heatmaps(
        os.path.join(output_dir, "placements.png"),
        {r["bias"]: np.asarray(r["placement_heatmap"]) for r in results},
        "x / canvas",
        "y / canvas",
        "training digit centres",
    )
    columns = ["bias", "offset", "radius", "accuracy", "accuracy_stderr", "sweep_accuracy"]
    columns += ["p_top1_change", "p_top1_change_stderr", "positions"]
    print(report.markdown_table(rows, columns, digits=3))
    logging.info("wrote %s in %.0f s", output_dir, wall_time_s)
