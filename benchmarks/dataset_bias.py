"""The photographer's bias (Azulay & Weiss, claim 3): measure it in a dataset, and its effect.

    python -m benchmarks.dataset_bias --dataset=voc --split=validation --data_dir=DIR
    python -m benchmarks.dataset_bias --mode=experiment           # embedded digits, ~minutes

--mode=stats (the default) reads the object boxes of any TFDS dataset with a `BBoxFeature`
(found automatically, e.g. voc's and coco's 'objects/bbox'; --bbox_feature picks one) through
`tfds.data_source` and writes stats.json (mean and spread of box centres, fraction of centres in
the central square whose side is --central_fraction of the image's, quantiles of sqrt(box area /
image area), of box height and of box width, all in image-normalised units), centres.png (heat
map of centres) and sizes.png (histograms of the sizes). Malformed boxes are counted and left out.

--mode=experiment trains the same net on digits placed with each training bias (--biases:
'centred:sigma=S' draws the digit centre S px around the canvas centre, 'uniform' anywhere on
the canvas), then puts each test digit at distance r (--offsets) from the canvas centre in
--num_directions directions and measures accuracy there and P(top-1 change) under 1-px shifts
around it (--local_sweep of +-local_shift px, one evaluator sweep per position). A digit is the
central --box_size px of each image (the embedded digits: their 20 px digit; MNIST: 24 px
keep all but 0.3% of its ink), resized to --digit_size, pasted into a black --canvas_size canvas. Writes
experiment.json, experiment.csv, accuracy.png and p_top1_change.png (metric against r, a line
per bias), placements.png (where each bias put the training digits) and prints the table.
Each bias trains in --output_dir/<bias>/checkpoint and caches its result, so a rerun is cheap.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from benchmarks.cli import flags as sb_flags
from benchmarks.core import evaluator, protocols, run_identity, transforms
from benchmarks.data import datasets
from benchmarks.inference import classifiers, fastpath
from benchmarks.results import report
from benchmarks.studies import bias_stats
from benchmarks.training import train

FLAGS = flags.FLAGS

sb_flags.define_data_flags(default_split="test")
sb_flags.define_eval_flags(default_output_dir="runs/dataset_bias")
sb_flags.define_cluster_flags()
sb_flags.define_model_flags(default_model="vgg_small")
FLAGS.set_default("width", 8)
flags.DEFINE_enum("mode", "stats", ["stats", "experiment"], "Box statistics or the experiment.")
# --mode=stats
flags.DEFINE_string("bbox_feature", None, "Box feature, e.g. 'objects/bbox' (default: the first).")
flags.DEFINE_float(
    "central_fraction",
    0.5,
    "Side of the central square region as a fraction of the image side (area: its square).",
    lower_bound=1e-6,
    upper_bound=1.0,
)
flags.DEFINE_integer("bins", 20, "Heat-map cells per side and histogram bins.", lower_bound=1)
# --mode=experiment
flags.DEFINE_list("biases", ["centred:sigma=2", "uniform"], "Training biases.")
flags.DEFINE_list("offsets", ["0", "4", "8", "12"], "Test distances r from the centre (px).")
flags.DEFINE_integer("num_directions", 8, "Test directions per distance.", lower_bound=1)
flags.DEFINE_enum("local_sweep", "diagonal", ["diagonal", "horizontal", "vertical"], "1-px sweep.")
flags.DEFINE_integer(
    "local_shift", 1, "The 1-px sweep spans -k..k around a position.", lower_bound=1
)
flags.DEFINE_integer("canvas_size", 48, "Canvas side (px).", lower_bound=2)
flags.DEFINE_integer("digit_size", 20, "Side of the pasted digit (px).", lower_bound=1)
flags.DEFINE_integer(
    "box_size", 20, "Side of the central crop holding the digit (px).", lower_bound=1
)
flags.DEFINE_integer("placements", 2, "Training placements per training digit.", lower_bound=1)
flags.DEFINE_string("train_split", "train", "Split to train on (TFDS slicing honoured).")
flags.DEFINE_integer(
    "num_train", None, "Train on the first N digits (default: all).", lower_bound=1
)
flags.DEFINE_enum("head", "gap", ["gap", "flatten"], "Model head (global pooling or flatten).")
flags.DEFINE_integer("train_steps", 300, "Optimizer steps per bias.", lower_bound=1)
flags.DEFINE_integer("train_batch_size", 64, "Training batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate (cosine decay).", lower_bound=0.0)

TABLE = ("accuracy", "p_top1_change", "sweep_accuracy")


# ----------------------------------------------------------------------------- --mode=stats


def bbox_features(features: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every `BBoxFeature` in a TFDS feature tree, in feature order."""
    import tensorflow_datasets as tfds

    if isinstance(features, tfds.features.BBoxFeature):
        return [prefix]
    if isinstance(features, tfds.features.Sequence):
        return bbox_features(features.feature, prefix)
    if isinstance(features, tfds.features.FeaturesDict):
        return [p for k, f in features.items() for p in bbox_features(f, (*prefix, k))]
    return []


def open_boxes(
    name: str, split: str, data_dir: str | None, bbox_feature: str | None
) -> tuple[Sequence[dict], tuple[str, ...]]:
    """The random-access source of a TFDS detection dataset and the key path of its boxes.

    Raises:
      datasets.DataError: unknown dataset, no box feature, data_dir missing or without the dataset.
    """
    if name in datasets.EMBEDDED:
        raise datasets.DataError(
            f"--dataset={name!r} has no object boxes: --mode=stats reads a TFDS detection "
            "dataset (voc, coco, ...); the digits serve --mode=experiment."
        )
    builder = datasets.tfds_builder(name, data_dir)
    paths = bbox_features(builder.info.features)
    names = ["/".join(p) for p in paths]
    if not paths:
        raise datasets.DataError(
            f"--dataset={name!r} has no BBoxFeature: --mode=stats reads a detection dataset "
            "(voc, coco, ...); --mode=experiment needs no boxes."
        )
    if bbox_feature is not None and bbox_feature not in names:
        raise datasets.DataError(f"--bbox_feature={bbox_feature!r}: {name!r} has boxes at {names}.")
    return datasets.tfds_split(builder, split), paths[
        names.index(bbox_feature) if bbox_feature else 0
    ]


def read_boxes(source: Sequence[dict], path: tuple[str, ...], num: int) -> np.ndarray:
    """The boxes of the first `num` examples, concatenated: float32 [M, 4]."""
    boxes = []
    for i in range(num):
        value = source[i]
        for key in path:
            value = value[key]
        boxes.append(np.asarray(value, np.float32).reshape(-1, 4))
    return np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)


def run_stats() -> None:
    """--mode=stats: stats.json, centres.png, sizes.png in --output_dir."""
    start = time.perf_counter()
    source, path = open_boxes(FLAGS.dataset, FLAGS.split, FLAGS.data_dir, FLAGS.bbox_feature)
    num = len(source) if FLAGS.num_images is None else min(FLAGS.num_images, len(source))
    boxes = read_boxes(source, path, num)
    valid = np.asarray(bias_stats.valid_boxes(boxes))
    if not valid.any():
        raise datasets.DataError(
            f"--dataset={FLAGS.dataset!r} --split={FLAGS.split!r}: the first {num} examples "
            f"hold {len(boxes)} boxes, none valid."
        )
    boxes = boxes[valid]
    summary = jax.device_get(bias_stats.summarize(boxes, FLAGS.central_fraction))
    centres = bias_stats.box_centres(boxes)
    heatmap = np.asarray(bias_stats.centre_heatmap(centres, FLAGS.bins))
    record = {
        "config": sb_flags.flag_values(),
        "bbox_feature": "/".join(path),
        "num_images": num,
        "num_boxes": int(valid.sum()),
        "num_invalid_boxes": int((~valid).sum()),
        "central_region": {
            "side_fraction": FLAGS.central_fraction,
            "area_fraction": FLAGS.central_fraction**2,
        },
        "quantile_levels": bias_stats.QUANTILES,
        "summary": summary,
        "centre_heatmap": heatmap,
        "versions": report.versions(),
        "wall_time_s": time.perf_counter() - start,
    }
    out = FLAGS.output_dir
    report.write_json(os.path.join(out, "stats.json"), record)
    title = f"{FLAGS.dataset} {FLAGS.split}: {len(boxes)} boxes of {num} images"
    report.plot_heatmaps(
        os.path.join(out, "centres.png"),
        {"fraction of box centres": heatmap},
        "x / width",
        "y / height",
        title,
    )
    extents = np.asarray(bias_stats.box_extents(boxes))
    report.plot_histograms(
        os.path.join(out, "sizes.png"),
        {
            "sqrt(area)": np.asarray(bias_stats.box_sizes(boxes)),
            "height": extents[:, 0],
            "width": extents[:, 1],
        },
        FLAGS.bins,
        "fraction of the image side",
        title,
        value_range=(0.0, 1.0),
    )
    rows = [
        {
            "statistic": "images / valid boxes / malformed boxes",
            "value": f"{num} / {len(boxes)} / {(~valid).sum()}",
        },
        {"statistic": "quantile levels", "value": " ".join(map(str, bias_stats.QUANTILES))},
    ] + [
        {"statistic": k, "value": " ".join(f"{v:.3f}" for v in np.atleast_1d(summary[k]))}
        for k in summary
    ]
    print(report.markdown_table(rows, ["statistic", "value"]))


# ----------------------------------------------------------------------------- --mode=experiment


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


def geometry_from_flags() -> Geometry:
    """Checks the experiment's geometry flags; FlagError names the flag."""
    if not all(o.isdigit() for o in FLAGS.offsets) or not FLAGS.offsets:
        raise sb_flags.FlagError(f"--offsets={','.join(FLAGS.offsets)} must be ints >= 0 (px).")
    try:
        limit = bias_stats.max_offset(FLAGS.canvas_size, FLAGS.digit_size)
    except ValueError as e:
        raise sb_flags.FlagError(f"--canvas_size/--digit_size: {e}.") from None
    offsets = tuple(sorted({int(o) for o in FLAGS.offsets}))
    k = FLAGS.local_shift
    if offsets[-1] + k > limit:
        raise sb_flags.FlagError(
            f"--offsets={offsets[-1]} plus --local_shift={k} exceeds {limit} px, the room a "
            f"{FLAGS.digit_size} px digit has in a {FLAGS.canvas_size} px canvas."
        )
    local, _, _, _ = protocols.shift_sweep(FLAGS.local_sweep, -k, k)
    return Geometry(
        FLAGS.canvas_size, FLAGS.digit_size, FLAGS.box_size, offsets, FLAGS.num_directions, local, k
    )


def digit_boxes(images: np.ndarray, box_size: int) -> np.ndarray:
    """The central box_size x box_size crop of each image: [N, H, W, C] -> [N, b, b, C]."""
    h, w = images.shape[1:3]
    if box_size > min(h, w):
        raise sb_flags.FlagError(f"--box_size={box_size} exceeds the {h}x{w} images.")
    offset = jnp.array([(h - box_size) // 2, (w - box_size) // 2])
    crop = lambda im: transforms.crop(im, offset, out_size=(box_size, box_size))
    return np.asarray(jax.vmap(crop)(images))


def evaluate_positions(
    evaluator_at: Callable[[protocols.Protocol], evaluator.Evaluator],
    protocol: protocols.Protocol,
    test: tuple[np.ndarray, np.ndarray],
    geo: Geometry,
) -> list[dict[str, Any]]:
    """Accuracy and P(top-1 change) of the test digits at each distance r (averaged over the
    positions at r; stderr is the mean of their standard errors, an upper bound of the
    standard error of the average whatever the correlation between positions).

    `evaluator_at(protocol)` gives the evaluator of one position's local sweep; every
    position shares one compiled function (the same classifier and transform)."""
    batches = datasets.local_batches(*test, FLAGS.batch_size)
    rows = []
    for r in geo.offsets:
        positions = bias_stats.ring_offsets(r, geo.num_directions)
        per_position = []
        for p in positions:
            local = protocol.with_sweep(p + geo.local, geo.reference_index)
            res = evaluator_at(local).run(batches, progress_every=0)
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
    return rows


def run_bias(
    bias: bias_stats.Bias,
    train_boxes: tuple[np.ndarray, np.ndarray],
    test_boxes: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    geo: Geometry,
    config: train.TrainConfig,
    eval_config: evaluator.EvalConfig,
    workdir: str,
) -> dict[str, Any]:
    """Trains (or restores) the net on digits placed with `bias`; measures it at each r.
    Cached in workdir/result.json."""
    switch = sb_flags.switch_from_flags()
    fields = {"head": FLAGS.head, **{k: v for k, v in switch.items() if v is not None}}
    fingerprint = {
        "bias": bias.name,
        "model": FLAGS.model,
        "fields": fields,
        "train": dataclasses.asdict(config),
        "eval": dataclasses.asdict(eval_config),
        "inference": fastpath.identity(FLAGS.fast),
        "geometry": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(geo).items()},
        "placements": FLAGS.placements,
        "num_train": len(train_boxes[1]),
        "num_test": len(test_boxes[1]),
        "data": [FLAGS.dataset, FLAGS.train_split, FLAGS.split, FLAGS.image_size],
        "train_sha256": run_identity.digest_arrays(train_boxes),
        "test_sha256": run_identity.digest_arrays(test_boxes),
        "shiftbench": run_identity.package_version(),
    }
    fingerprint = run_identity.jsonable(fingerprint)
    cached = report.read_json(os.path.join(workdir, "result.json"))
    if cached and cached.get("fingerprint") == fingerprint:
        logging.info("%s: finished earlier, reusing %s", bias.name, workdir)
        return cached

    boxes = np.tile(train_boxes[0], (FLAGS.placements, 1, 1, 1))
    labels = np.tile(train_boxes[1], FLAGS.placements)
    limit = bias_stats.max_offset(geo.canvas_size, geo.digit_size)
    offsets = bias_stats.sample_offsets(jax.random.key(config.seed), len(labels), bias, limit)
    images = np.asarray(bias_stats.place(boxes, offsets, geo.canvas_size, geo.digit_size))
    model = classifiers.build_model(FLAGS.model, num_classes, **fields)
    train_identity = {
        "model": FLAGS.model,
        "fields": fields,
        "data": fingerprint["data"],
        "images_sha256": run_identity.digest_arrays((images, labels)),
    }
    trained = sb_flags.train_in_output_dir(model, images, labels, config, workdir, train_identity)
    clf = classifiers.Classifier(model, jax.device_get(trained.variables), f"checkpoint:{workdir}")
    protocol = bias_stats.placement_protocol(
        test_boxes[0].shape[1:], geo.canvas_size, geo.digit_size
    )
    logits, variables = clf.inference(protocol.output_shape, FLAGS.fast)
    evaluators = []

    def evaluator_at(local: protocols.Protocol) -> evaluator.Evaluator:
        evaluators.append(evaluator.Evaluator(logits, local, eval_config, variables=variables))
        return evaluators[-1]

    placed = bias_stats.placement_boxes(offsets, geo.canvas_size, geo.digit_size)
    result = {
        "bias": bias.name,
        "fingerprint": fingerprint,
        "train_time_s": trained.wall_time_s,
        "final_loss": trained.final_loss,
        "placement_summary": jax.device_get(bias_stats.summarize(placed, FLAGS.central_fraction)),
        "placement_heatmap": np.asarray(  # one cell per canvas pixel
            bias_stats.centre_heatmap(bias_stats.box_centres(placed), geo.canvas_size)
        ),
        "offsets": evaluate_positions(evaluator_at, protocol, test_boxes, geo),
        "compile_count": evaluators[-1].compile_count,  # shared by every position (evaluated first)
    }
    report.write_json(os.path.join(workdir, "result.json"), result)
    return result


def run_experiment() -> None:
    """--mode=experiment: trains one net per bias, writes the table and plots."""
    start = time.perf_counter()
    if FLAGS.checkpoint or FLAGS.weights:
        raise sb_flags.FlagError("--checkpoint/--weights: --mode=experiment trains its own nets.")
    try:
        biases = [bias_stats.parse_bias(b) for b in FLAGS.biases]
    except ValueError as e:
        raise sb_flags.FlagError(f"--biases: {e}.") from None
    if not biases or len({b.name for b in biases}) < len(biases):
        raise sb_flags.FlagError(f"--biases={','.join(FLAGS.biases)}: give distinct biases.")
    geo = geometry_from_flags()
    sb_flags.check_batch_size(FLAGS.batch_size)
    train_ds = datasets.open_dataset(FLAGS.dataset, FLAGS.train_split, FLAGS.data_dir)
    test_ds = datasets.open_dataset(FLAGS.dataset, FLAGS.split, FLAGS.data_dir)
    train_x, train_y = datasets.load_arrays(train_ds, FLAGS.num_train, FLAGS.image_size)
    test_x, test_y = datasets.load_arrays(test_ds, FLAGS.num_images, FLAGS.image_size)
    train_boxes = (digit_boxes(train_x, geo.box_size), train_y)
    test_boxes = (digit_boxes(test_x, geo.box_size), test_y)
    num = FLAGS.placements * len(train_y)
    try:
        config = train.TrainConfig(
            optimizer="adam",
            learning_rate=FLAGS.learning_rate,
            batch_size=min(FLAGS.train_batch_size, num),
            num_steps=FLAGS.train_steps,
            seed=FLAGS.seed,
            log_every=max(FLAGS.train_steps // 5, 1),
            checkpoint_every=max(FLAGS.train_steps // 2, 1),
        )
    except ValueError as e:
        raise sb_flags.FlagError(f"training flags: {e}") from None
    eval_config = sb_flags.eval_config_from_flags()
    if FLAGS.chunk_size is not None:
        eval_config = dataclasses.replace(
            eval_config, chunk_size=min(FLAGS.chunk_size, len(geo.local))
        )
    results = [
        run_bias(
            bias,
            train_boxes,
            test_boxes,
            train_ds.num_classes,
            geo,
            config,
            eval_config,
            os.path.join(FLAGS.output_dir, bias.name.replace(":", "_").replace("=", "")),
        )
        for bias in biases
    ]
    if report.is_writer():
        write_experiment(FLAGS.output_dir, results, geo, time.perf_counter() - start)


def write_experiment(
    output_dir: str, results: list[dict[str, Any]], geo: Geometry, wall_time_s: float
) -> None:
    """experiment.json, experiment.csv, the plots, and the printed table."""
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
            "config": sb_flags.flag_values(),
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
    for metric, label in (("accuracy", "top-1 accuracy"), ("p_top1_change", "P(top-1 change)")):
        report.plot_lines(
            os.path.join(output_dir, f"{metric}.png"),
            list(geo.offsets),
            xlabel,
            {r["bias"]: [o[metric] for o in r["offsets"]] for r in results},
            label,
            f"{FLAGS.model} on {FLAGS.dataset}: {label} by training bias",
        )
    report.plot_heatmaps(
        os.path.join(output_dir, "placements.png"),
        {r["bias"]: np.asarray(r["placement_heatmap"]) for r in results},
        "x / canvas",
        "y / canvas",
        "training digit centres",
    )
    print(report.markdown_table(rows, ["bias", "offset", "radius", *TABLE, "positions"], digits=3))
    logging.info("wrote %s in %.0f s", output_dir, wall_time_s)


def main() -> None:
    sb_flags.join_cluster()
    if FLAGS.mode == "stats":
        run_stats()
    else:
        run_experiment()


if __name__ == "__main__":
    sb_flags.run_main(main)
