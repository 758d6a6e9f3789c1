"""Inference-only rewrites of a flax classifier that keep its function and speed it up on CPU.

The models are written once, for training and evaluation (models/). For evaluation only, two
rewrites give the same logits (up to float rounding) with less work:

- BatchNorm folding (`fold_batchnorm`): an inference BatchNorm that directly follows a conv,
  y = (conv(x, W) + b - mean) * scale / sqrt(var + eps) + beta, is the conv with kernel
  W * s and a shift t = beta + (b - mean) * s, s = scale / sqrt(var + eps). This is a pure
  transform of the variables: the folded BatchNorm keeps only the shift (scale 1, mean 0,
  var 1 - eps), so the unmodified model still computes the same function with them, and
  `logits_fn` then computes that BatchNorm as a bias add.
- 1x1 convolutions as matrix products (`conv1x1_as_dot`): x[:, ::s, ::s] @ W[0, 0]. XLA's CPU
  convolution runs 1x1 kernels 1.1-2.9x slower than the same product as a dot (measured
  per layer of ResNet-50, benchmarks/throughput.py notes), and half of ResNet-50's FLOPs are
  1x1 convolutions.
- The other convolutions on the direct CPU kernel (`cpu_conv`, see `benchmarks.kernels.cpu_conv`):
  zero or circular padding, any stride and dilation, Cout a multiple of 16, float32. The
  folded BatchNorm's shift becomes the kernel's bias, and a `models.layers.conv.ReLU` layer
  on the conv's output (with its residual, in a ResNet block) is computed inside the same
  kernel call (in registers, no extra pass over the map). Convolutions it does not cover, and
  every platform but the CPU, keep XLA's convolution; 1x1 convolutions it covers run on it
  too (the residual and ReLU of ResNet-50's blocks follow a 1x1 conv).

All act through `flax.linen.intercept_methods` on the layers `models.layers.conv.Conv` and
`flax.linen.BatchNorm` while the model is applied, so the architecture is not written twice.

    logits_fn, variables = fastpath.prepare(model, variables, (32, 32, 3))
    logits = jax.jit(logits_fn)(variables, images)      # [N, K], as model.apply(...)[0]

The XLA CPU settings the package starts JAX with are in `benchmarks.runtime.xla_defaults`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from benchmarks.kernels import cpu_conv
from models.layers.conv import Conv, ReLU, conv_pads, resolve_padding

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConvBatchNorm:
    """A conv whose output feeds an inference BatchNorm directly (paths in the variables)."""

    conv: Path
    bn: Path
    epsilon: float


@dataclasses.dataclass(frozen=True)
class FastPath:
    """Which rewrites `logits_fn` applies.

    Attributes:
      fold_batchnorm: folded BatchNorms (see `fold_batchnorm`) run as a bias add.
      conv1x1_as_dot: zero-padded 1x1 convolutions run as a matrix product.
      cpu_conv: convolutions run on `benchmarks.kernels.cpu_conv`'s kernel where it covers them (on
        CPU, where it is available), with the ReLU layer that follows them; this takes
        precedence over `conv1x1_as_dot`.
    """

    fold_batchnorm: bool = True
    conv1x1_as_dot: bool = True
    cpu_conv: bool = True


def identity(fast: bool) -> dict:
    """What of the inference path determines an evaluation's numbers, for run identities:
    {'fast': fast, 'cpu_conv': whether the direct kernel computes the convolutions}."""
    return {"fast": fast, "cpu_conv": fast and cpu_conv.in_use()}


def conv_batchnorm_pairs(
    model: nn.Module, variables: Any, input_shape: tuple[int, int, int]
) -> tuple[ConvBatchNorm, ...]:
    """The (conv, BatchNorm) pairs of `model` in which the BatchNorm reads the conv's output
    (an inference BatchNorm with a bias, which takes the folded shift; with or without scale).

    Found by tracing `model.apply(variables, x [1, *input_shape], train=False)` (shapes only,
    nothing is computed). Pairs whose conv or BatchNorm is called more than once are left out.
    A conv whose output also feeds another layer must not be folded; the models of this
    repository have none (their convs feed only their BatchNorm).

    Returns:
      One `ConvBatchNorm` per pair, in call order.
    """
    outputs: dict[int, Path] = {}
    keep: list[Any] = []  # keeps traced outputs alive, so that their ids stay unique
    pairs: list[ConvBatchNorm] = []
    calls: collections.Counter[Path] = collections.Counter()

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            module = context.module
            calls[module.path] += 1
            if isinstance(module, Conv):
                outputs[id(out)] = module.path
                keep.append(out)
            elif isinstance(module, nn.BatchNorm) and id(args[0]) in outputs:
                if module.use_running_average and module.use_bias:  # the shift needs a bias
                    pairs.append(ConvBatchNorm(outputs[id(args[0])], module.path, module.epsilon))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda v: model.apply(v, jnp.zeros((1, *input_shape), jnp.float32), train=False),
            variables,
        )
    # A conv or BatchNorm called more than once (shared weights) may meet other inputs.
    return tuple(p for p in pairs if calls[p.conv] == calls[p.bn] == 1)


def _get(tree: dict, path: Path) -> dict:
    for name in path:
        tree = tree[name]
    return tree


def fold_batchnorm(variables: Any, pairs: tuple[ConvBatchNorm, ...]) -> dict:
    """Variables with each BatchNorm of `pairs` folded into its conv.

    Args:
      variables: {'params': ..., 'batch_stats': ...} of the model (not modified).
      pairs: from `conv_batchnorm_pairs`.

    Returns:
      New variables of the same tree, as float32 numpy arrays (computed on the host: nothing
      to compile): conv kernel [kh, kw, cin, cout] scaled by s [cout], conv bias (if any)
      zero, BatchNorm scale 1 (if it has one), bias = the shift t, mean 0, var 1 - eps (so
      that the plain model computes the same function with them).
    """
    out = unfreeze(jax.tree.map(np.asarray, variables))
    for pair in pairs:
        conv = _get(out["params"], pair.conv)
        bn = _get(out["params"], pair.bn)
        stats = _get(out["batch_stats"], pair.bn)
        scale = bn.get("scale", np.float32(1.0))  # use_scale=False (Keras' InceptionResNetV2)
        s = (scale / np.sqrt(stats["var"] + np.float32(pair.epsilon))).astype(np.float32)
        shift = bn["bias"] - stats["mean"] * s
        if "bias" in conv:
            shift = shift + conv["bias"] * s
            conv["bias"] = np.zeros_like(conv["bias"])
        conv["kernel"] = conv["kernel"] * s
        if "scale" in bn:
            bn["scale"] = np.ones_like(s)
        bn["bias"] = shift.astype(np.float32)
        stats["mean"] = np.zeros_like(s)
        stats["var"] = np.full_like(s, 1.0 - pair.epsilon)
    return out


def _is_pointwise(conv: Conv) -> bool:
    """A 1x1 conv without padding (any stride; dilation does not matter for 1x1)."""
    size = conv.kernel_size
    if (size if isinstance(size, int) else tuple(size)) not in (1, (1, 1)):
        return False
    return resolve_padding(conv.padding, 1, conv.padding_mode) == ((0, 0), (0, 0))


def logits_fn(
    model: nn.Module, pairs: tuple[ConvBatchNorm, ...], options: FastPath = FastPath()
) -> Callable[[Any, jax.Array], jax.Array]:
    """`logits(variables, images [N, H, W, C] in [0, 1]) -> [N, K]` with the rewrites.

    With `options.fold_batchnorm`, the BatchNorms of `pairs` are computed as `x + bias`: pass
    variables from `fold_batchnorm(variables, pairs)`.
    """
    folded = {p.bn for p in pairs} if options.fold_batchnorm else set()
    bn_of_conv = {p.conv: p.bn for p in pairs if p.bn in folded}

    def logits(variables: Any, images: jax.Array) -> jax.Array:
        """images [N, H, W, C] in [0, 1] -> logits [N, K]."""
        fused: set[Path] = set()  # folded BatchNorms whose shift a kernel call already added
        # Kernel calls by id of their output: a ReLU layer on that output re-emits the call
        # with the ReLU (and residual) inside; the first call is then unused and XLA drops it.
        calls: dict[int, Callable[..., jax.Array]] = {}
        keep: list[jax.Array] = []  # keeps the outputs alive, so that their ids stay unique

        def rewrite(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            if isinstance(module, nn.BatchNorm) and module.path in folded:
                if module.path in fused:
                    return args[0]
                return args[0] + module.get_variable("params", "bias")
            if isinstance(module, ReLU) and id(args[0]) in calls:
                residual = args[1] if len(args) > 1 else kwargs.get("residual")
                if residual is None or jnp.shape(residual) == args[0].shape:
                    return calls[id(args[0])](relu=True, residual=residual)
            if not isinstance(module, Conv):
                return next_fun(*args, **kwargs)
            kernel = module.get_variable("params", "kernel")
            # Where the kernel cannot run (cpu_conv.available() False), the 1x1 dots and XLA's
            # convolution of the model below stay as they were.
            if options.cpu_conv and cpu_conv.available() and cpu_conv.supports(args[0], kernel):
                bias = jnp.zeros(kernel.shape[-1], jnp.float32)
                if module.use_bias:
                    bias = bias + module.get_variable("params", "bias")
                bn = bn_of_conv.get(module.path)
                if bn is not None:
                    bias = bias + _get(variables["params"], bn)["bias"]
                    fused.add(bn)
                call = _kernel_call(module, args[0], kernel, bias)
                y = call()
                calls[id(y)] = call
                keep.append(y)
                return y
            if options.conv1x1_as_dot and _is_pointwise(module):
                s = module.stride
                y = jnp.dot(args[0][:, ::s, ::s], kernel[0, 0])
                return y + module.get_variable("params", "bias") if module.use_bias else y
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(rewrite):
            return model.apply(variables, images, train=False)[0]

    return logits


def _kernel_call(
    conv: Conv, x: jax.Array, kernel: jax.Array, bias: jax.Array
) -> Callable[..., jax.Array]:
    """`call(relu=False, residual=None)`: `conv`'s convolution of x [N, H, W, Cin] + bias
    [Cout] on `cpu_conv.conv2d` (zero or circular padding, inside the kernel)."""
    pads = conv_pads(conv.padding, kernel.shape[:2], conv.dilation, conv.padding_mode)
    return functools.partial(
        cpu_conv.conv2d,
        x,
        kernel,
        bias,
        conv.stride,
        conv.dilation,
        pads,
        padding_mode=conv.padding_mode,
    )


def prepare(
    model: nn.Module,
    variables: Any,
    input_shape: tuple[int, int, int],
    options: FastPath = FastPath(),
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """The fast `logits(variables, images)` of `model` and the variables it takes.

    Args:
      model: a flax classifier, `model.apply(variables, x, train=False) -> (logits, ...)`.
      variables: its variables.
      input_shape: (H, W, C) of the images it will see.
      options: which rewrites to apply.

    Returns:
      (logits_fn, variables): variables are folded when `options.fold_batchnorm`.
    """
    pairs = conv_batchnorm_pairs(model, variables, input_shape)
    if options.fold_batchnorm:
        variables = fold_batchnorm(variables, pairs)
    return logits_fn(model, pairs, options), variables
