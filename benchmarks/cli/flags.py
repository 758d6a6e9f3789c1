"""absl flags derived from the library's configs, and the one-line error policy of the CLI.

Each option is declared once, as a field of a library config (`ProtocolConfig`, `EvalConfig`,
`DataConfig`, `ModelConfig`, `ClusterConfig`; `benchmarks.core.options`): its flag, default,
help text and bounds come from that declaration (`define_config_flags`), and the values go
back into the config (`config_from_flags`). The library speaks Python: its errors name its
arguments as `name=value` or `name` in backticks. Only this layer turns those names into
`--flags` (`flag_message`) and prints the error as one line (`run_main`, exit 2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import tempfile
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import app, flags
from absl import logging as absl_logging

from benchmarks.core import evaluator, options, protocols
from benchmarks.data import datasets
from benchmarks.inference import classifiers
from benchmarks.runtime import cluster
from benchmarks.runtime.xla_defaults import configure_xla_cpu

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """A flag value that cannot be used; the message names the flag."""


def flag_message(message: str) -> str:
    """`message` with every argument name of ours that is also a defined flag written as a
    flag: 'max_shift=8' -> '--max_shift=8', '`crop_size`' -> '--crop_size'."""
    names = set(flag_values())

    def as_flag(match: re.Match) -> str:
        name = match.group("name")
        return f"--{name}{match.group('eq') or ''}" if name in names else match.group(0)

    message = re.sub(r"(?<![\w-])(?P<name>[a-z_][a-z0-9_]*)(?P<eq>=)", as_flag, message)
    return re.sub(r"`(?P<name>[a-z_][a-z0-9_]*)`(?P<eq>)", as_flag, message)


# --- flags from the configs ------------------------------------------------------------------


def _kind(annotation: Any) -> type:
    """int, float, str or bool from a field's annotation (`int | None` -> int)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def define_config_flags(config_type: type, defaults: Mapping[str, Any] | None = None) -> None:
    """Defines one flag per `option` field of `config_type` (the same name, default, help and
    bounds; str fields with choices as enums). A name already defined by another config of
    this entry point (e.g. `seed`) is shared, not defined twice.

    Args:
      config_type: a dataclass whose fields are declared with `benchmarks.core.options.option`.
      defaults: this entry point's own defaults, by field name.
    """
    hints = typing.get_type_hints(config_type)
    for field in options.declared(config_type):
        if field.name in FLAGS:
            continue
        meta, kind = field.metadata, _kind(hints[field.name])
        default = (defaults or {}).get(field.name, field.default)
        bounds = {"lower_bound": meta["lower"], "upper_bound": meta["upper"]}
        if meta["choices"]:
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), meta["help"])
        elif kind is bool:
            flags.DEFINE_bool(field.name, default, meta["help"])
        elif kind is int:
            flags.DEFINE_integer(field.name, default, meta["help"], **bounds)
        elif kind is float:
            flags.DEFINE_float(field.name, default, meta["help"], **bounds)
        else:
            flags.DEFINE_string(field.name, default, meta["help"])


def config_from_flags(config_type: type, **overrides: Any) -> Any:
    """An instance of `config_type` from the flags of its fields (and `overrides`).

    Raises:
      FlagError: the config refuses the values (the message names the flags).
    """
    names = {f.name for f in dataclasses.fields(config_type)}
    values = {n: FLAGS[n].value for n in names if n in FLAGS and n not in overrides}
    try:
        return config_type(**values, **overrides)
    except ValueError as e:
        raise FlagError(flag_message(str(e))) from None


def define_data_flags(default_dataset: str = "digits", default_split: str = "test") -> None:
    """--dataset, --data_dir, --split, --num_images, --image_size (`DataConfig`)."""
    defaults = {"dataset": default_dataset, "split": default_split}
    define_config_flags(datasets.DataConfig, defaults)


def define_protocol_flags() -> None:
    """--transform and the sweep flags (`ProtocolConfig`)."""
    define_config_flags(protocols.ProtocolConfig)


def define_eval_flags(default_output_dir: str = "runs/invariance") -> None:
    """The `EvalConfig` flags (--batch_size, --chunk_size, ...), --fast and --output_dir."""
    define_config_flags(evaluator.EvalConfig)
    flags.DEFINE_bool(
        "fast",
        True,
        "Evaluate with the inference rewrites of benchmarks.inference.fastpath (BatchNorm "
        "folded; convs with their ReLU on the direct CPU kernel of benchmarks.kernels, else 1x1 "
        "convs as dots; on layers of models.layers.conv.Conv: not EfficientNet-Lite's): "
        "the same logits up to float rounding, faster.",
    )
    flags.DEFINE_string("output_dir", default_output_dir, "Where results are written.")


def define_model_flags(default_model: str = "resnet20") -> None:
    """--model, the subsampling switch, --checkpoint and --weights (`ModelConfig`)."""
    define_config_flags(classifiers.ModelConfig, {"model": default_model})


def define_cluster_flags() -> None:
    """--multihost, --coordinator_address, ... (`ClusterConfig`)."""
    define_config_flags(cluster.ClusterConfig)


def join_cluster() -> None:
    """Joins the cluster the cluster flags describe (nothing without --multihost).

    Raises:
      FlagError: flags that describe no cluster, or a cluster that cannot be joined.
    """
    config = config_from_flags(cluster.ClusterConfig)
    try:
        cluster.initialize(config)
    except ValueError as e:
        raise FlagError(flag_message(str(e))) from None


def switch_from_flags() -> dict:
    """The subsampling switch and width flags as model fields (None = the model's default)."""
    return config_from_flags(classifiers.ModelConfig).switch()


def classifier_from_flags(num_classes: int, input_shape: tuple[int, int, int]):
    """The `benchmarks.inference.classifiers.Classifier` that --model, the switch and weights
    name."""
    config = config_from_flags(classifiers.ModelConfig)
    try:
        return classifiers.load_config(config, num_classes, input_shape, seed=FLAGS.seed)
    except (ValueError, FileNotFoundError) as e:
        if config.checkpoint:
            where = f"--checkpoint={config.checkpoint}"
        elif config.weights:
            where = f"--weights={config.weights}"
        else:
            where = f"--model={config.model}"
        raise FlagError(f"{where}: {flag_message(str(e))}") from None


def eval_config_from_flags() -> evaluator.EvalConfig:
    """The `EvalConfig` of --batch_size, --chunk_size, --flip_distance, --num_pairs, ..."""
    return config_from_flags(evaluator.EvalConfig)


def protocol_from_flags(image_shape: tuple[int, ...]) -> protocols.Protocol:
    """The protocol --transform and its flags name, for images of `image_shape` [H, W, C]."""
    config = config_from_flags(protocols.ProtocolConfig)
    try:
        return protocols.from_config(config, image_shape)
    except protocols.ProtocolError as e:
        raise FlagError(flag_message(str(e))) from None


def check_batch_size(batch_size: int) -> None:
    """--batch_size must split evenly over the devices (and hosts), and --images_per_call (when
    defined and set) must divide it and be a multiple of the device count."""
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


def check_output_dir(path: str, flag: str = "output_dir") -> None:
    """Creates the local directory `path` and checks that a file can be written there, before
    any compute (a gs:// or other remote path is left to the first write).

    Raises:
      FlagError: it cannot be created or written (one line naming the flag).
    """
    if "://" in path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise FlagError(f"--{flag}={path}: cannot be created or written ({reason}).") from None


def _not_library_chatter(record: logging.LogRecord) -> bool:
    """False for orbax's INFO records (~20 lines per checkpoint save), which drown progress."""
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def run_main(main: Callable[[], None]) -> None:
    """Runs an entry point's `main()` under absl, with the CLI's error policy.

    Starts XLA with the package's CPU settings (`configure_xla_cpu`, before any JAX
    computation); refuses positional arguments; checks --output_dir (when the entry point has
    one) before any compute; prints a FlagError, DataError or ProtocolError as one line
    naming the flag, exit 2; on Ctrl-C prints one line saying what was saved, exit 130. orbax's INFO logs are dropped (its warnings and errors stay), so
    that progress shows.
    """
    configure_xla_cpu()
    absl_logging.get_absl_handler().addFilter(_not_library_chatter)

    def guarded(argv: list[str]) -> None:
        try:
            if len(argv) > 1:
                raise FlagError(f"unexpected arguments {argv[1:]}.")
            if "output_dir" in FLAGS:
                check_output_dir(FLAGS.output_dir)
            main()
        except (FlagError, datasets.DataError, protocols.ProtocolError) as e:
            print(f"error: {flag_message(str(e))}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            where = f" under --output_dir={FLAGS.output_dir}" if "output_dir" in FLAGS else ""
            print(
                f"interrupted: finished work (evaluated batches, training checkpoints, finished "
                f"runs) is saved{where}; the same command resumes after it.",
                file=sys.stderr,
            )
            sys.exit(130)

    app.run(guarded)
