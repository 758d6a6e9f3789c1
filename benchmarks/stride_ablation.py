"""The stride ablation, shiftbench's main job: train each subsampling variant, measure each.

    python -m benchmarks.stride_ablation                      # embedded digits, ~minutes on CPU
    python -m benchmarks.stride_ablation --dataset=mnist --data_dir=../shared/data/tfds \
        --train_split='test[:80%]' --split='test[80%:]'

For every variant (default subsample, blur, aps, full) and seed, trains the same model with
optax (resuming from, or returning, its checkpoint in --output_dir), evaluates it under each
protocol (default: crop and embed shifts in 1-pixel steps, and a grid of circular shifts; also
`translate`, whose table splits accuracy and P(top-1 change) at --aug_max_shift) and
measures its per-stage feature equivariance. Writes ablation.json, ablation.csv, a markdown
table (printed; with several --seeds also mean +- std over them, in ablation_seeds.csv),
metrics.png (each metric per variant), curves.png (true-class probability against the first
protocol's shift for a few images, as Azulay & Weiss' Figure 1) and equivariance.png (error
against depth). A variant whose training and evaluation are finished is not redone.

Variants: 'subsample', 'blur' (BlurPool, size --blur_size), 'blur:K' (size K), 'aps', 'full'
(no subsampling anywhere), 'full:K' (subsampling removed from the last K stages only).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from benchmarks.cli import flags as sb_flags
from benchmarks.core import equivariance, evaluator, protocols, run_identity
from benchmarks.data import augment, datasets
from benchmarks.inference import classifiers, fastpath
from benchmarks.results import report
from benchmarks.studies import ablation_summary
from benchmarks.training import train

FLAGS = flags.FLAGS

sb_flags.define_data_flags(default_split="test")
sb_flags.define_eval_flags(default_output_dir="runs/ablation")
sb_flags.define_cluster_flags()
sb_flags.define_model_flags(default_model="vgg_small")
flags.DEFINE_string("train_split", "train", "Split to train on (TFDS slicing honoured).")
flags.DEFINE_integer(
    "num_train", None, "Train on the first N images (default: all).", lower_bound=1
)
flags.DEFINE_list("variants", ["subsample", "blur", "aps", "full"], "Variants to compare.")
flags.DEFINE_list("seeds", ["0"], "Training seeds (repeats of every variant).")
flags.DEFINE_list("protocols", ["crop", "embed", "circular"], "Protocols to evaluate.")
flags.DEFINE_integer("max_shift", 4, "Shift range of the protocols (px).", lower_bound=1)
flags.DEFINE_enum("optimizer", "adam", list(train.OPTIMIZERS), "Optimizer.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.", lower_bound=0.0)
flags.DEFINE_enum("schedule", "cosine", list(train.SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_float("weight_decay", 0.0, "Weight decay.", lower_bound=0.0)
flags.DEFINE_integer("train_steps", 200, "Optimizer steps per variant.", lower_bound=1)
flags.DEFINE_integer("train_batch_size", 64, "Training batch size.", lower_bound=1)
flags.DEFINE_enum("augmentation", "none", list(train.AUGMENTATIONS), "Training augmentation.")
flags.DEFINE_integer(
    "aug_max_shift", 4, "Largest random shift of --augmentation=crop (px).", lower_bound=1
)
flags.DEFINE_integer(
    "aug_canvas_size",
    None,
    "Canvas of --augmentation=embed (default: image "
    "size + 2 * --max_shift); evaluation images are centred on it.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "equivariance_images", 64, "Images for the feature-equivariance metric.", lower_bound=1
)


def parse_variant(spec: str, blur_size: int) -> dict[str, Any]:
    """'blur:3' -> model fields {'stride_mode': 'blur', 'blur_size': 3}; see module docstring."""
    name, _, arg = spec.partition(":")
    if name not in ("subsample", "blur", "aps", "full") or (arg and name in ("subsample", "aps")):
        raise sb_flags.FlagError(
            f"--variants: {spec!r} is not one of subsample, blur, blur:K, aps, full, full:K."
        )
    if arg and not arg.isdigit():
        raise sb_flags.FlagError(f"--variants: {spec!r}: K must be a non-negative integer.")
    if name == "blur":
        return {"stride_mode": "blur", "blur_size": int(arg) if arg else blur_size}
    if name == "full" and arg:
        return {"stride_mode": "subsample", "full_stages": int(arg)}
    return {"stride_mode": name}


def ablation_protocols(image_shape: tuple[int, int, int], names: list[str], max_shift: int):
    """The ablation's protocols for images of `image_shape`: max_shift + 1 positions, 1 px apart.

    crop: windows of H - max_shift px at diagonal offsets 0..max_shift (Azulay's crop);
    embed: the image downscaled to H - max_shift px at diagonal positions 0..max_shift of an
    H px black canvas (Azulay's "black"); circular: a grid of wrap-around shifts
    -max_shift/2..max_shift/2 on both axes; translate: the whole image moved by diagonal
    shifts -max_shift..max_shift with zero fill (what `--augmentation=crop` trains on, within
    its `--aug_max_shift`), 2 * max_shift + 1 positions.
    """
    h, half = image_shape[0], max_shift // 2
    options = {
        "translate": dict(min_shift=-max_shift, max_shift=max_shift),
        "crop": dict(min_shift=0, max_shift=max_shift, crop_size=h - max_shift),
        "embed": dict(min_shift=-half, max_shift=max_shift - half, embed_size=h - max_shift),
        "circular": dict(sweep="grid", max_shift=half, min_shift=-half),
    }
    out = {}
    for name in names:
        if name not in options:
            raise sb_flags.FlagError(f"--protocols: {name!r} is not one of {sorted(options)}.")
        out[name] = protocols.build(name, image_shape, **options[name])
    return out


def _flops(classifier: classifiers.Classifier, shape: tuple[int, ...]) -> float:
    """Forward FLOPs per image, from XLA's cost analysis."""
    lowered = jax.jit(classifier.logits).lower(classifier.variables, jnp.zeros((1, *shape)))
    cost = lowered.cost_analysis()  # XLA's estimate on the lowered program: no compile
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def run_variant(
    spec: str,
    seed: int,
    train_data: tuple[np.ndarray, np.ndarray],
    eval_data: tuple[np.ndarray, np.ndarray],
    protos: dict[str, protocols.Protocol],
    num_classes: int,
    train_config: train.TrainConfig,
    eval_config: evaluator.EvalConfig,
    workdir: str,
    data_identity: dict[str, Any],
) -> dict[str, Any]:
    """Trains (or restores) one variant and measures it; cached in workdir/result.json under
    its run identity (model, switch, training config and data, protocols, evaluator)."""
    fields = parse_variant(spec, FLAGS.blur_size or 4)
    switch = sb_flags.switch_from_flags()
    fields.update({k: switch[k] for k in ("padding", "width") if switch[k] is not None})
    train_identity = {"model": FLAGS.model, "fields": fields, "data": data_identity["train"]}
    fingerprint = run_identity.jsonable(
        {
            **train_identity,
            "train": dataclasses.asdict(train_config),
            "eval": dataclasses.asdict(eval_config),
            "inference": fastpath.identity(FLAGS.fast),
            "eval_data": data_identity["eval"],
            "protocols": {
                n: {"params": p.params, "pairs": p.pairs(1), "options": p.options}
                for n, p in protos.items()
            },
            "equivariance_images": FLAGS.equivariance_images,
            "shiftbench": run_identity.package_version(),
        }
    )
    cached = report.read_json(os.path.join(workdir, "result.json"))
    if cached and cached.get("fingerprint") == fingerprint:
        logging.info("%s seed %d: finished earlier, reusing %s", spec, seed, workdir)
        return cached
    if cached:
        logging.info(
            "%s seed %d: the cached result belongs to another run (%s); recomputing",
            spec,
            seed,
            "; ".join(run_identity.differences(cached.get("fingerprint"), fingerprint)[:3]),
        )
    model = classifiers.build_model(FLAGS.model, num_classes, **fields)
    trained = sb_flags.train_in_output_dir(
        model, *train_data, train_config, workdir, train_identity
    )
    # A host copy: the same on every process, usable by the single-process jits below.
    clf = classifiers.Classifier(model, jax.device_get(trained.variables), f"checkpoint:{workdir}")
    result: dict[str, Any] = {
        "variant": spec,
        "seed": seed,
        "fingerprint": fingerprint,
        "train_time_s": trained.wall_time_s,
        "final_loss": trained.final_loss,
        "params": int(sum(x.size for x in jax.tree.leaves(trained.variables["params"]))),
        "flops": _flops(clf, eval_data[0].shape[1:]),
        "protocols": {},
    }
    inference = {}  # input shape -> (logits, variables): folded once per shape, not per protocol
    for name, proto in protos.items():
        shape = tuple(proto.output_shape)
        if shape not in inference:
            inference[shape] = clf.inference(shape, FLAGS.fast)
        logits, variables = inference[shape]
        # Circular shifts of one phase share an evaluation where the model declares a period.
        ev = evaluator.Evaluator(
            logits,
            proto,
            eval_config,
            variables=variables,
            shift_period=classifiers.shift_period(model, proto.output_shape),
        )
        res = ev.run(datasets.local_batches(*eval_data, FLAGS.batch_size))
        result["protocols"][name] = {
            "metrics": res.metrics,
            "stderr": res.stderr,
            "accuracy_per_param": res.accuracy_per_param,
            "pairs": res.pairs,
            "flip_rate_per_pair": res.flip_rate_per_pair,
            "curves": res.curves,
            "x": proto.x,
            "xlabel": proto.xlabel,
        }
    strides = model.feature_strides()
    shifts = equivariance.matched_shifts(strides, FLAGS.max_shift)
    feats = lambda v, x: model.apply(v, x, train=False)[1]
    eq = equivariance.feature_equivariance(
        feats,
        clf.variables,
        eval_data[0][: FLAGS.equivariance_images],
        shifts,
        strides,
        circular=True,
    )
    result["equivariance"] = {
        "shifts": shifts,
        "strides": strides,
        "error": {n: v["error"] for n, v in eq.items()},
        "psnr": {n: v["psnr"] for n, v in eq.items()},
    }
    report.write_json(os.path.join(workdir, "result.json"), result)
    return result


def main() -> None:
    sb_flags.join_cluster()
    sb_flags.check_batch_size(FLAGS.batch_size)
    start = time.perf_counter()
    seeds = [int(s) for s in FLAGS.seeds] if all(s.isdigit() for s in FLAGS.seeds) else None
    if not seeds:
        raise sb_flags.FlagError(f"--seeds={','.join(FLAGS.seeds)} must be non-negative ints.")
    for spec in FLAGS.variants:
        parse_variant(spec, 4)
    train_ds = datasets.open_dataset(FLAGS.dataset, FLAGS.train_split, FLAGS.data_dir)
    eval_ds = datasets.open_dataset(FLAGS.dataset, FLAGS.split, FLAGS.data_dir)
    train_data = datasets.load_arrays(train_ds, FLAGS.num_train, FLAGS.image_size)
    eval_data = datasets.load_arrays(eval_ds, FLAGS.num_images, FLAGS.image_size)
    canvas = FLAGS.aug_canvas_size or eval_data[0].shape[1] + 2 * FLAGS.max_shift
    if FLAGS.augmentation == "embed":  # the model sees canvas-sized images: centre the test ones
        offset = (canvas - eval_data[0].shape[1]) // 2
        centred = jax.vmap(augment.embed_image, (0, None, None))(
            eval_data[0], jnp.array([offset, offset]), canvas
        )
        eval_data = (np.asarray(centred), eval_data[1])
    protos = ablation_protocols(eval_data[0].shape[1:], FLAGS.protocols, FLAGS.max_shift)
    common = {"name": FLAGS.dataset, "version": train_ds.version, "image_size": FLAGS.image_size}
    data_identity = {
        "train": {
            **common,
            "split": FLAGS.train_split,
            "num_images": len(train_data[1]),
            "sha256": run_identity.digest_arrays(train_data),
        },
        "eval": {
            **common,
            "split": FLAGS.split,
            "num_images": len(eval_data[1]),
            "sha256": run_identity.digest_arrays(eval_data),
        },
    }
    eval_config = sb_flags.eval_config_from_flags()
    results = []
    for seed in seeds:
        try:
            train_config = train.TrainConfig(
                optimizer=FLAGS.optimizer,
                learning_rate=FLAGS.learning_rate,
                schedule=FLAGS.schedule,
                weight_decay=FLAGS.weight_decay,
                batch_size=min(FLAGS.train_batch_size, len(train_data[1])),
                num_steps=FLAGS.train_steps,
                augmentation=FLAGS.augmentation,
                max_shift=FLAGS.aug_max_shift if FLAGS.augmentation == "crop" else 0,
                canvas_size=canvas if FLAGS.augmentation == "embed" else 0,
                seed=seed,
                log_every=max(FLAGS.train_steps // 10, 1),
                checkpoint_every=max(FLAGS.train_steps // 4, 1),
            )
        except ValueError as e:
            raise sb_flags.FlagError(f"training flags: {e}") from None
        for spec in FLAGS.variants:
            workdir = os.path.join(FLAGS.output_dir, f"{spec.replace(':', '')}_seed{seed}")
            results.append(
                run_variant(
                    spec,
                    seed,
                    train_data,
                    eval_data,
                    protos,
                    eval_ds.num_classes,
                    train_config,
                    eval_config,
                    workdir,
                    data_identity,
                )
            )
    if report.is_writer():
        write_ablation(FLAGS.output_dir, results, time.perf_counter() - start)


def write_ablation(output_dir: str, results: list[dict[str, Any]], wall_time_s: float) -> None:
    """ablation.json, ablation.csv, the markdown table and the PNG plots."""
    config = sb_flags.flag_values()
    rows = [ablation_summary.summary_row(r, config["aug_max_shift"]) for r in results]
    seeds = ablation_summary.over_seeds(rows) if len({r["seed"] for r in rows}) > 1 else []
    report.write_json(
        os.path.join(output_dir, "ablation.json"),
        {
            "config": config,
            "variants": {
                f"{r['variant']}/seed{r['seed']}": {
                    k: v for k, v in r.items() if k != "fingerprint"
                }
                for r in results
            },
            "table": rows,
            "over_seeds": seeds,
            "versions": report.versions(),
            "wall_time_s": wall_time_s,
        },
    )
    report.write_csv(os.path.join(output_dir, "ablation.csv"), rows)
    if seeds:
        report.write_csv(os.path.join(output_dir, "ablation_seeds.csv"), seeds)
    names = [f"{r['variant']}/s{r['seed']}" for r in results]
    metric_cols = [
        f"{p}/{m}" for p in results[0]["protocols"] for m in ablation_summary.TABLE_METRICS
    ]
    report.plot_bars(
        os.path.join(output_dir, "metrics.png"),
        names,
        {c: [row[c] for row in rows] for c in metric_cols},
        title=f"{config['model']} on {config['dataset']}",
        ncols=len(ablation_summary.TABLE_METRICS),
    )
    first = next(iter(results[0]["protocols"]))
    proto = results[0]["protocols"][first]
    curves = {n: np.asarray(r["protocols"][first]["curves"]) for n, r in zip(names, results)}
    # Show the images whose true-class probability moves most under the first variant.
    shown = np.sort(np.argsort(-np.ptp(curves[names[0]], axis=0))[:4])
    report.plot_curves(
        os.path.join(output_dir, "curves.png"),
        np.asarray(proto["x"]),
        proto["xlabel"],
        {n: c[:, shown] for n, c in curves.items()},
        title=f"P(true class) under {first} shifts",
        image_ids=shown.tolist(),
    )
    stages = sorted(results[0]["equivariance"]["error"])
    report.plot_lines(
        os.path.join(output_dir, "equivariance.png"),
        list(range(1, len(stages) + 1)),
        "stage",
        {
            n: [equivariance.matched_mean(r["equivariance"]["error"][s]) for s in stages]
            for n, r in zip(names, results)
        },
        "relative equivariance error",
        "feature equivariance (circular shifts, multiples of each stage's stride)",
    )
    columns = ["variant", "seed"] + [c for c in rows[0] if c not in ("variant", "seed")]
    print(report.markdown_table(rows, columns, digits=3))
    if seeds:
        print(f"\nmean +- std over {seeds[0]['seeds']} seeds:")
        print(ablation_summary.mean_std_table(seeds, [c for c in columns[2:] if "/" in c]))
    logging.info("wrote %s in %.0f s", output_dir, wall_time_s)


if __name__ == "__main__":
    sb_flags.run_main(main)
