"""The stride ablation: train each subsampling variant of one model, and measure each.

A variant is a spec of the model's subsampling switch: 'subsample', 'blur' (BlurPool of the
model config's blur size, 4 by default), 'blur:K' (size K), 'aps', 'full' (no subsampling
anywhere), 'full:K' (subsampling removed from the last K stages only). For every seed and
variant, `run` trains the model with optax (resuming from, or returning, its checkpoint),
evaluates it under each protocol (`ablation_protocols`: crop, embed, circular and translate
shifts in 1-pixel steps) and measures its per-stage feature equivariance. A variant's result
is cached in its directory under a fingerprint of everything that determines it, so a finished
variant is not redone. `benchmarks.studies.ablation_summary` tabulates the results and writes
the study's record, tables and plots.

Settings are arguments (`AblationConfig`, `datasets.DataConfig`, `evaluator.EvalConfig`); a
setting that cannot be used is a ValueError naming the argument (`variants='median' ...`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from benchmarks.core import equivariance, evaluator, options, protocols, run_identity
from benchmarks.core.options import option
from benchmarks.data import augment, datasets
from benchmarks.inference import classifiers, fastpath
from benchmarks.results import report
from benchmarks.training import config as train_config
from models.layers.conv import is_int

PROTOCOLS = ("translate", "crop", "embed", "circular")
DEFAULT_BLUR_SIZE = 4


def parse_variant(spec: str, blur_size: int) -> dict[str, Any]:
    """The model fields of a variant spec: 'blur:3' -> {'stride_mode': 'blur', 'blur_size': 3}.

    Args:
      spec: 'subsample', 'blur', 'blur:K', 'aps', 'full' or 'full:K' (K an int >= 0).
      blur_size: the BlurPool filter size of a plain 'blur' (px).

    Raises:
      ValueError: an unknown spec (the message names `variants`).
    """
    name, _, arg = spec.partition(":")
    if name not in ("subsample", "blur", "aps", "full") or (arg and name in ("subsample", "aps")):
        raise ValueError(
            f"variants={spec!r} is not one of subsample, blur, blur:K, aps, full, full:K."
        )
    if arg and not arg.isdigit():
        raise ValueError(f"variants={spec!r}: K must be a non-negative integer.")
    if name == "blur":
        return {"stride_mode": "blur", "blur_size": int(arg) if arg else blur_size}
    if name == "full" and arg:
        return {"stride_mode": "subsample", "full_stages": int(arg)}
    return {"stride_mode": name}


def _check_protocols(names: Sequence[str]) -> None:
    for name in names:
        if name not in PROTOCOLS:
            raise ValueError(f"protocols={name!r} is not one of {sorted(PROTOCOLS)}.")


def ablation_protocols(
    image_shape: tuple[int, int, int], names: Sequence[str], max_shift: int
) -> dict[str, protocols.Protocol]:
    """The ablation's protocols for images of `image_shape` [H, W, C]: 1 px apart.

    crop: windows of H - max_shift px at diagonal offsets 0..max_shift (Azulay's crop);
    embed: the image downscaled to H - max_shift px at diagonal positions 0..max_shift of an
    H px black canvas (Azulay's "black"); circular: a grid of wrap-around shifts
    -max_shift/2..max_shift/2 on both axes; translate: the whole image moved by diagonal
    shifts -max_shift..max_shift with zero fill (what augmentation='crop' trains on, within
    its aug_max_shift), 2 * max_shift + 1 positions.

    Returns:
      {name: Protocol}, in the order of `names` (each one of PROTOCOLS; ValueError otherwise).
    """
    _check_protocols(names)
    h, half = image_shape[0], max_shift // 2
    settings = {
        "translate": {"min_shift": -max_shift, "max_shift": max_shift},
        "crop": {"min_shift": 0, "max_shift": max_shift, "crop_size": h - max_shift},
        "embed": {"min_shift": -half, "max_shift": max_shift - half, "embed_size": h - max_shift},
        "circular": {"sweep": "grid", "max_shift": half, "min_shift": -half},
    }
    return {name: protocols.build(name, image_shape, **settings[name]) for name in names}


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """What the ablation trains and measures (the option fields are also the CLI's flags).

    Attributes:
      variants: variant specs (`parse_variant`).
      seeds: training seeds, ints >= 0: every variant is trained once per seed.
      protocols: names of `ablation_protocols`.
      model: the model and its padding and width; its blur_size is that of a plain 'blur'
        variant (None: 4). Its other switch fields, checkpoint and weights are not used.
      fast: evaluate with `benchmarks.inference.fastpath`'s rewrites (the same logits).
    """

    variants: tuple[str, ...] = ("subsample", "blur", "aps", "full")
    seeds: tuple[int, ...] = (0,)
    protocols: tuple[str, ...] = ("crop", "embed", "circular")
    model: classifiers.ModelConfig = dataclasses.field(
        default_factory=lambda: classifiers.ModelConfig(model="vgg_small")
    )
    fast: bool = True
    train_split: str = option("train", "Split to train on (TFDS slicing honoured).")
    num_train: int | None = option(None, "Train on the first N images (default: all).", lower=1)
    max_shift: int = option(4, "Shift range of the protocols (px).", lower=1)
    optimizer: str = option("adam", "Optimizer.", choices=train_config.OPTIMIZERS)
    learning_rate: float = option(3e-3, "Peak learning rate.", lower=0.0)
    schedule: str = option("cosine", "Learning-rate schedule.", choices=train_config.SCHEDULES)
    weight_decay: float = option(0.0, "Weight decay.", lower=0.0)
    train_steps: int = option(200, "Optimizer steps per variant.", lower=1)
    train_batch_size: int = option(64, "Training batch size.", lower=1)
    augmentation: str = option("none", "Training augmentation.", choices=augment.AUGMENTATIONS)
    aug_max_shift: int = option(4, "Largest random shift of augmentation='crop' (px).", lower=1)
    aug_canvas_size: int | None = option(
        None,
        "Canvas of augmentation='embed' (default: image size + 2 * max_shift); evaluation "
        "images are centred on it.",
        lower=1,
    )
    equivariance_images: int = option(64, "Images for the feature-equivariance metric.", lower=1)

    def __post_init__(self):
        options.check(self)
        if not self.variants:
            raise ValueError("variants=: give one or more variants.")
        for spec in self.variants:
            parse_variant(spec, self.blur_size)
        _check_protocols(self.protocols)
        if not self.seeds or not all(is_int(s) and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds={','.join(map(str, self.seeds))} must be non-negative ints.")
        try:  # the training settings that do not depend on the data
            self.train_config(self.seeds[0], num_train=1, image_size=1)
        except ValueError as e:
            raise ValueError(f"training settings: {e}") from None

    @property
    def blur_size(self) -> int:
        """The BlurPool size of a plain 'blur' variant."""
        return self.model.blur_size or DEFAULT_BLUR_SIZE

    def canvas_size(self, image_size: int) -> int:
        """The canvas of augmentation='embed' for images of side `image_size` (px)."""
        return self.aug_canvas_size or image_size + 2 * self.max_shift

    def train_config(self, seed: int, num_train: int, image_size: int) -> train_config.TrainConfig:
        """The training run of `seed` on `num_train` images of side `image_size` (px)."""
        return train_config.TrainConfig(
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            batch_size=min(self.train_batch_size, num_train),
            num_steps=self.train_steps,
            augmentation=self.augmentation,
            max_shift=self.aug_max_shift if self.augmentation == "crop" else 0,
            canvas_size=self.canvas_size(image_size) if self.augmentation == "embed" else 0,
            seed=seed,
            log_every=max(self.train_steps // 10, 1),
            checkpoint_every=max(self.train_steps // 4, 1),
        )


@dataclasses.dataclass(frozen=True)
class AblationData:
    """The ablation's images in memory.

    Attributes:
      train: images float32 [N, H, W, C] in [0, 1] and labels int32 [N].
      eval: the same for evaluation; with augmentation='embed' centred on its canvas
        ([M, c, c, C], c = `AblationConfig.canvas_size(image_size)`).
      image_size: side H of the evaluation images as read (px), before any canvas.
      num_classes: classes of the dataset.
      identity: {'train': ..., 'eval': ...}: dataset name, version, split, image size, the
        number of images and a sha256 of the arrays (part of every variant's fingerprint).
    """

    train: tuple[np.ndarray, np.ndarray]
    eval: tuple[np.ndarray, np.ndarray]
    image_size: int
    num_classes: int
    identity: dict[str, Any]


def load_data(data: datasets.DataConfig, config: AblationConfig) -> AblationData:
    """Reads the training split (`config.train_split`, `num_train`) and the evaluation split
    (`data.split`, `num_images`) of `data.dataset`.

    Raises:
      datasets.DataError: a dataset or split that cannot be read.
    """
    train_ds = datasets.open_dataset(data.dataset, config.train_split, data.data_dir)
    eval_ds = datasets.open_dataset(data.dataset, data.split, data.data_dir)
    train_data = datasets.load_arrays(train_ds, config.num_train, data.image_size)
    eval_data = datasets.load_arrays(eval_ds, data.num_images, data.image_size)
    image_size = eval_data[0].shape[1]
    if config.augmentation == "embed":  # the model sees canvas-sized images: centre the test ones
        canvas = config.canvas_size(image_size)
        offset = (canvas - image_size) // 2
        centred = jax.vmap(augment.embed_image, (0, None, None))(
            eval_data[0], jnp.array([offset, offset]), canvas
        )
        eval_data = (np.asarray(centred), eval_data[1])
    common = {"name": data.dataset, "version": train_ds.version, "image_size": data.image_size}
    identity = {
        name: {
            **common,
            "split": split,
            "num_images": len(arrays[1]),
            "sha256": run_identity.digest_arrays(arrays),
        }
        for name, split, arrays in (
            ("train", config.train_split, train_data),
            ("eval", data.split, eval_data),
        )
    }
    return AblationData(train_data, eval_data, image_size, eval_ds.num_classes, identity)


def flops(classifier: classifiers.Classifier, shape: tuple[int, ...]) -> float:
    """Forward FLOPs per image of `shape` [H, W, C], from XLA's cost analysis (NaN if none)."""
    lowered = jax.jit(classifier.logits).lower(classifier.variables, jnp.zeros((1, *shape)))
    cost = lowered.cost_analysis()  # XLA's estimate on the lowered program: no compile
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def _protocol_record(res: evaluator.EvalResult, proto: protocols.Protocol) -> dict[str, Any]:
    return {
        "metrics": res.metrics,
        "stderr": res.stderr,
        "accuracy_per_param": res.accuracy_per_param,
        "pairs": res.pairs,
        "flip_rate_per_pair": res.flip_rate_per_pair,
        "curves": res.curves,
        "x": proto.x,
        "xlabel": proto.xlabel,
    }


def run_variant(
    spec: str,
    seed: int,
    config: AblationConfig,
    data: AblationData,
    protos: dict[str, protocols.Protocol],
    eval_config: evaluator.EvalConfig,
    workdir: str,
    train_fn: Callable[..., train_config.TrainResult],
) -> dict[str, Any]:
    """Trains (or restores) one variant and measures it.

    Cached in workdir/result.json under its fingerprint (model, fields, training config and
    data, evaluation config and data, inference path, protocols, equivariance images, package
    version): a cached result of the same fingerprint is returned as it is.

    Args:
      spec: the variant (`parse_variant`).
      seed: the training seed.
      config: the study's settings.
      data: the images (`load_data`).
      protos: the protocols to evaluate (`ablation_protocols`), by name.
      eval_config: the evaluator's settings (its batch_size batches the evaluation images).
      workdir: the variant's directory (its checkpoint and result.json).
      train_fn: `train_fn(model, images, labels, train_config, workdir, identity)` trains
        (or restores) `model` in `workdir` as `benchmarks.training.train.train` does.

    Returns:
      {'variant', 'seed', 'fingerprint', 'train_time_s', 'final_loss', 'params' (count),
       'flops' (per image), 'protocols': {name: {'metrics', 'stderr', 'accuracy_per_param'
       [T], 'pairs' [E, 2], 'flip_rate_per_pair' [E], 'curves' [T, n], 'x' [T], 'xlabel'}},
       'equivariance': {'shifts' [S, 2], 'strides', 'error', 'psnr': {stage: [S]}}}.
    """
    fields = parse_variant(spec, config.blur_size)
    switch = config.model.switch()
    fields.update({k: switch[k] for k in ("padding", "width") if switch[k] is not None})
    model_name = config.model.model
    train_config = config.train_config(seed, len(data.train[1]), data.image_size)
    train_identity = {"model": model_name, "fields": fields, "data": data.identity["train"]}
    fingerprint = run_identity.jsonable(
        {
            **train_identity,
            "train": dataclasses.asdict(train_config),
            "eval": dataclasses.asdict(eval_config),
            "inference": fastpath.identity(config.fast),
            "eval_data": data.identity["eval"],
            "protocols": {
                n: {"params": p.params, "pairs": p.pairs(1), "options": p.options}
                for n, p in protos.items()
            },
            "equivariance_images": config.equivariance_images,
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
    model = classifiers.build_model(model_name, data.num_classes, **fields)
    trained = train_fn(model, *data.train, train_config, workdir, train_identity)
    # A host copy: the same on every process, usable by the single-process jits below.
    clf = classifiers.Classifier(model, jax.device_get(trained.variables), f"checkpoint:{workdir}")
    result: dict[str, Any] = {
        "variant": spec,
        "seed": seed,
        "fingerprint": fingerprint,
        "train_time_s": trained.wall_time_s,
        "final_loss": trained.final_loss,
        "params": int(sum(x.size for x in jax.tree.leaves(trained.variables["params"]))),
        "flops": flops(clf, data.eval[0].shape[1:]),
        "protocols": {},
    }
    inference = {}  # input shape -> (logits, variables): folded once per shape, not per protocol
    for name, proto in protos.items():
        shape = tuple(proto.output_shape)
        if shape not in inference:
            inference[shape] = clf.inference(shape, config.fast)
        logits, variables = inference[shape]
        # Circular shifts of one phase share an evaluation where the model declares a period.
        ev = evaluator.Evaluator(
            logits,
            proto,
            eval_config,
            variables=variables,
            shift_period=classifiers.shift_period(model, proto.output_shape),
        )
        res = ev.run(datasets.local_batches(*data.eval, eval_config.batch_size))
        result["protocols"][name] = _protocol_record(res, proto)
    strides = model.feature_strides()
    shifts = equivariance.matched_shifts(strides, config.max_shift)
    eq = equivariance.feature_equivariance(
        lambda v, x: model.apply(v, x, train=False)[1],
        clf.variables,
        data.eval[0][: config.equivariance_images],
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


def run(
    config: AblationConfig,
    data_config: datasets.DataConfig,
    eval_config: evaluator.EvalConfig,
    output_dir: str,
    train_fn: Callable[..., train_config.TrainResult],
) -> list[dict[str, Any]]:
    """The whole ablation: every variant of `config` for every seed, each in
    output_dir/<variant without ':'>_seed<seed> (`run_variant`, which also says what
    `train_fn` is).

    Returns:
      The `run_variant` results, seed by seed, variants in the order given.
    """
    data = load_data(data_config, config)
    protos = ablation_protocols(data.eval[0].shape[1:], config.protocols, config.max_shift)
    return [
        run_variant(
            spec,
            seed,
            config,
            data,
            protos,
            eval_config,
            os.path.join(output_dir, f"{spec.replace(':', '')}_seed{seed}"),
            train_fn,
        )
        for seed in config.seeds
        for spec in config.variants
    ]
