"""absl flags shared by the entry points, and the checks that turn bad values into one line.

Flags with a fixed set of values are enums and bounded integers, so absl itself rejects bad
values with a message naming the flag. Checks that need more context (the device count, a
dataset on disk) raise `FlagError`, which `run_main` prints as one line before exiting 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from benchmarks.core import evaluator, protocols
from benchmarks.runtime.xla_defaults import configure_xla_cpu
from models.layers.subsampling import PADDING_MODES, STRIDE_MODES

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """A flag value that cannot be used; the message starts with the flag."""


def define_data_flags(default_dataset: str = "digits", default_split: str = "test") -> None:
    """--dataset, --data_dir, --split, --num_images, --image_size, --batch_size."""
    flags.DEFINE_string(
        "dataset",
        default_dataset,
        "'digits' (embedded, no download) or a TFDS image-classification dataset.",
    )
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_string("split", default_split, "Split, with TFDS slicing (e.g. 'test[80%:]').")
    flags.DEFINE_integer(
        "num_images", None, "Evaluate the first N images (default: all).", lower_bound=1
    )
    flags.DEFINE_integer(
        "image_size",
        None,
        "Resize the shorter side and centre-crop to this "
        "size before transforming (needed for variable-size datasets).",
        lower_bound=8,
    )
    flags.DEFINE_integer(
        "batch_size", 64, "Global batch size (divisible by the device count).", lower_bound=1
    )


def define_protocol_flags() -> None:
    """--transform and the sweep flags of `benchmarks.core.protocols`."""
    flags.DEFINE_enum(
        "transform",
        "crop",
        list(protocols.PROTOCOLS),
        "Transformation protocol (see benchmarks/core/protocols.py).",
    )
    flags.DEFINE_enum(
        "sweep",
        None,
        list(protocols.SWEEPS),
        "Shape of the shift sweep (default diagonal); shift protocols only (not rescale/rotate).",
    )
    flags.DEFINE_integer(
        "max_shift", 4, "Largest shift in pixels (or in --shift_step units).", lower_bound=0
    )
    flags.DEFINE_integer("min_shift", None, "Smallest shift (default -max_shift; crop: 0).")
    flags.DEFINE_float(
        "shift_step", 1.0, "subpixel: pixels per shift unit (e.g. 0.5).", lower_bound=1e-3
    )
    flags.DEFINE_integer("num_random", 16, "Draws of the 'random' sweep.", lower_bound=2)
    flags.DEFINE_integer(
        "crop_size",
        None,
        "crop: window size (default: padded image - shift range).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "crop_padding",
        0,
        "crop: zero padding added on every side before cropping (CIFAR: 4); with padding "
        "--min_shift defaults to -max_shift.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "embed_size",
        None,
        "embed/inpaint: size the image is downscaled to (default: half the canvas).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "canvas_size",
        None,
        "embed/inpaint: canvas size (default: the image size).",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "fill",
        "zero",
        list(protocols.FILLS),
        "Background: embed takes every value; translate, subpixel, rescale and rotate take "
        "zero or constant.",
    )
    flags.DEFINE_float("fill_value", 0.0, "Value of --fill=constant, in [0, 1].")
    flags.DEFINE_enum(
        "subpixel_method",
        "fourier",
        list(protocols.SUBPIXEL_METHODS),
        "Interpolation of sub-pixel shifts.",
    )
    flags.DEFINE_float("scale_min", 0.9, "rescale: smallest scale.", lower_bound=1e-3)
    flags.DEFINE_float("scale_max", 1.1, "rescale: largest scale.", lower_bound=1e-3)
    flags.DEFINE_integer("num_scales", 11, "rescale: number of scales.", lower_bound=2)
    flags.DEFINE_float(
        "angle_max",
        15.0,
        "rotate: largest angle in degrees (sweep is -angle_max..angle_max).",
        lower_bound=0.0,
    )
    flags.DEFINE_float("angle_step", 1.0, "rotate: step in degrees.", lower_bound=1e-3)


def define_eval_flags(default_output_dir: str = "runs/invariance") -> None:
    """--seed, --chunk_size, --images_per_call, --num_pairs, --worst_of_k, --flip_distance,
    --fast, --output_dir."""
    flags.DEFINE_integer("seed", 0, "Seed of per-image random draws and of training.")
    flags.DEFINE_integer(
        "chunk_size",
        None,
        "Sweep parameters per model call (default: from --memory_budget_mb).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "images_per_call",
        None,
        "Images per model call (default: from --memory_budget_mb, or the whole batch with "
        "--chunk_size); divides --batch_size.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "memory_budget_mb",
        evaluator.DEFAULT_MEMORY_BUDGET_MB,
        "Activation memory of one model call per device (MiB), for the call sizes not given.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "num_pairs",
        4,
        "Random pairs of sweep entries per image for consistency, and random entries per "
        "image for consistency_vs_reference.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "worst_of_k", 10, "Random sweep entries per image for worst-of-k accuracy.", lower_bound=1
    )
    flags.DEFINE_integer(
        "flip_distance",
        1,
        "d of the ImageNet-P flip probability and top-5 distance (pairs d steps apart).",
        lower_bound=1,
    )
    flags.DEFINE_bool(
        "fast",
        True,
        "Evaluate with the inference rewrites of benchmarks.inference.fastpath (BatchNorm folded; convs "
        "with their ReLU on the direct CPU kernel of benchmarks.kernels.cpu_conv, else 1x1 convs as "
        "dots; on layers of models.layers.subsampling.Conv: not EfficientNet-Lite's): the same "
        "logits up to float rounding, faster.",
    )
    flags.DEFINE_string("output_dir", default_output_dir, "Where results are written.")


def define_model_flags(default_model: str = "resnet20") -> None:
    """--model and the subsampling switch, --checkpoint, --weights."""
    from models import registry

    flags.DEFINE_enum("model", default_model, sorted(registry.MODELS), "Model name.")
    flags.DEFINE_enum(
        "stride_mode",
        None,
        list(STRIDE_MODES),
        "Subsampling: subsample | blur | aps | full (default: the model's).",
    )
    flags.DEFINE_integer(
        "blur_size", None, "BlurPool filter size 1..7.", lower_bound=1, upper_bound=7
    )
    flags.DEFINE_integer(
        "full_stages", None, "Remove subsampling from the last k stages.", lower_bound=0
    )
    flags.DEFINE_enum("padding", None, list(PADDING_MODES), "Conv padding: zero | circular.")
    flags.DEFINE_integer(
        "width", None, "Width of the small nets (default: the model's).", lower_bound=1
    )
    flags.DEFINE_string(
        "checkpoint", None, "Training directory (benchmarks.training.train) to load."
    )
    flags.DEFINE_string(
        "weights",
        None,
        "Pretrained weights: Keras HDF5 ('imagenet' or a path) for vgg16/resnet50/"
        "inception_resnet_v2; a torch.save file (path or package alias) for resnet20..56 and "
        "efficientnet_lite0..2.",
    )


def switch_from_flags() -> dict:
    """The subsampling switch and width flags as model fields (None = the model's default)."""
    return {
        "stride_mode": FLAGS.stride_mode,
        "blur_size": FLAGS.blur_size,
        "full_stages": FLAGS.full_stages,
        "padding": FLAGS.padding,
        "width": FLAGS.width,
    }


def classifier_from_flags(num_classes: int, input_shape: tuple[int, int, int]):
    """The `benchmarks.inference.classifiers.Classifier` that --model, the switch and weights name."""
    from benchmarks.inference import classifiers

    try:
        return classifiers.load(
            FLAGS.model,
            num_classes,
            input_shape,
            checkpoint=FLAGS.checkpoint,
            weights=FLAGS.weights,
            seed=FLAGS.seed,
            **switch_from_flags(),
        )
    except (ValueError, FileNotFoundError) as e:
        if FLAGS.checkpoint:
            where = f"--checkpoint={FLAGS.checkpoint}"
        elif FLAGS.weights:
            where = f"--weights={FLAGS.weights}"
        else:
            where = f"--model={FLAGS.model}"
        raise FlagError(f"{where}: {e}") from None


def train_in_output_dir(model, images, labels, config, workdir: str, identity: dict):
    """`benchmarks.training.train.train` into `workdir` (under --output_dir) with the run `identity`,
    its batches split over every device of every process (`evaluator.default_mesh`); a
    checkpoint there of another run is refused as one FlagError line naming what differs.

    Returns:
      The `TrainResult`.

    Raises:
      FlagError: --train_batch_size does not split over the devices, or the identity differs.
    """
    import os

    import jax

    from benchmarks.core import evaluator, run_identity
    from benchmarks.training import train

    if config.batch_size % jax.device_count():
        raise FlagError(
            f"--train_batch_size={config.batch_size} is not divisible by the number of devices "
            f"({jax.device_count()})."
        )
    try:
        return train.train(
            model,
            images,
            labels,
            config,
            os.path.join(workdir, "checkpoint"),
            mesh=evaluator.default_mesh(),
            identity=identity,
        )
    except run_identity.IdentityMismatch as e:
        raise FlagError(f"--output_dir={FLAGS.output_dir}: {e} Use a new --output_dir.") from None


def check_batch_size(batch_size: int) -> None:
    """--batch_size must split evenly over the devices (and hosts), and --images_per_call (when
    defined and set) must divide it and be a multiple of the device count."""
    import jax

    n = jax.device_count()
    if batch_size % n:
        raise FlagError(
            f"--batch_size={batch_size} is not divisible by the number of devices ({n})."
        )
    per_call = FLAGS["images_per_call"].value if "images_per_call" in FLAGS else None
    if per_call is not None and (batch_size % per_call or per_call % n):
        raise FlagError(
            f"--images_per_call={per_call} must divide --batch_size={batch_size} and be a "
            f"multiple of the number of devices ({n})."
        )


def flag_values() -> dict:
    """Values of the flags this project defines (not absl's own), for the results record."""
    by_module = FLAGS.flags_by_module_dict()
    ours = [
        f
        for module, defined in by_module.items()
        if module.startswith("benchmarks") or module == sys.argv[0]
        for f in defined
    ]
    return {f.name: f.value for f in sorted(ours, key=lambda f: f.name)}


def eval_config_from_flags():
    """The `benchmarks.core.evaluator.EvalConfig` of --chunk_size, --flip_distance, --num_pairs, ..."""
    from benchmarks.core import evaluator

    return evaluator.EvalConfig(
        chunk_size=FLAGS.chunk_size,
        images_per_call=FLAGS.images_per_call,
        memory_budget_mb=FLAGS.memory_budget_mb,
        flip_distance=FLAGS.flip_distance,
        num_pairs=FLAGS.num_pairs,
        worst_of_k=FLAGS.worst_of_k,
        seed=FLAGS.seed,
    )


def protocol_from_flags(image_shape: tuple[int, ...]) -> protocols.Protocol:
    """Builds the protocol named by --transform for images of `image_shape` [H, W, C]."""
    return protocols.build(
        FLAGS.transform,
        image_shape,
        sweep=FLAGS.sweep,
        max_shift=FLAGS.max_shift,
        min_shift=FLAGS.min_shift,
        shift_step=FLAGS.shift_step,
        num_random=FLAGS.num_random,
        seed=FLAGS.seed,
        crop_size=FLAGS.crop_size,
        crop_padding=FLAGS.crop_padding,
        embed_size=FLAGS.embed_size,
        canvas_size=FLAGS.canvas_size,
        fill=FLAGS.fill,
        fill_value=FLAGS.fill_value,
        subpixel_method=FLAGS.subpixel_method,
        scale_min=FLAGS.scale_min,
        scale_max=FLAGS.scale_max,
        num_scales=FLAGS.num_scales,
        angle_max=FLAGS.angle_max,
        angle_step=FLAGS.angle_step,
    )


def _not_library_chatter(record: logging.LogRecord) -> bool:
    """False for orbax's INFO records (~20 lines per checkpoint save), which drown progress."""
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def run_main(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)`, printing a FlagError / DataError / ProtocolError as one line, exit 2.

    Starts XLA with the package's CPU settings (`configure_xla_cpu`, before any JAX
    computation). orbax's INFO logs are dropped (its warnings and errors stay), so that
    progress shows.
    """
    configure_xla_cpu()
    from benchmarks.data.datasets import DataError

    absl_logging.get_absl_handler().addFilter(_not_library_chatter)

    def guarded(argv):
        try:
            main(argv)
        except (FlagError, DataError, protocols.ProtocolError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
