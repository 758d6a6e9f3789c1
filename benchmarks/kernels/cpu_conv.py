"""A direct AVX-512 convolution kernel for XLA's CPU backend (inference fast path).

XLA's CPU convolution (Eigen) runs the narrow convolutions of the CIFAR ResNets (16-64
channels) at about half the rate of the oneDNN kernels that PyTorch calls, and the jaxlib
wheel does not route convolutions to its oneDNN (WORKSPACE_NOTES.md, "A direct convolution
kernel"). `cpu_conv.cc` is a direct NHWC kernel of the oneDNN kind, called through JAX's FFI
(`jax.ffi.ffi_call`, an XLA custom call): a tile of output pixels x 16-64 output channels
stays in registers while the taps and input channels run, with the bias, a residual and a
ReLU applied before the store and zero or circular padding done while reading, split over
output rows on XLA's intra-op thread pool.

    y = cpu_conv.conv2d(x, kernel, bias, stride=1, dilation=1, pads=((1, 1), (1, 1)))

computes `lax.conv_general_dilated` (NHWC, HWIO, zero padding) + bias, float32, the same
sums in another order (within float rounding, tested against XLA's convolution).

The kernel is compiled with g++ at its first use in a process and cached under
~/.cache/shiftbench (`benchmarks.kernels.build`, which loads it only from a cache that no other
user can write). Where it cannot run (not x86-64 with AVX-512F and FMA, no g++, a failed build,
SHIFTBENCH_CPU_CONV=0 in the environment), `available()` is False and `conv2d` computes the
same function with XLA's convolution. On other platforms (GPU, TPU)
`conv2d` always lowers to XLA's convolution (`lax.platform_dependent`).

The custom call is wrapped in `custom_partitioning`: under `jit` with the batch axis sharded
over a mesh, each device runs the kernel on its own images (the other axes are gathered).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from benchmarks.kernels import build
from models.layers.conv import Pads, padded_conv2d

TARGET = "shiftbench_conv2d"
TARGET_RESIDUAL = "shiftbench_conv2d_residual"
SYMBOLS = {TARGET: "ShiftbenchConv2d", TARGET_RESIDUAL: "ShiftbenchConv2dResidual"}  # in the .cc
PADDING_MODES = ("zero", "circular")
LANES = 16  # output channels per AVX-512 register: Cout must be a multiple of it
MAX_KERNEL_ROWS = 16  # kernel heights the .cc handles (row pointers on its stack)
OPT_OUT_ENV = "SHIFTBENCH_CPU_CONV"


def enabled() -> bool:
    """False when SHIFTBENCH_CPU_CONV is set to '0' (the kernel is then never built or used)."""
    return os.environ.get(OPT_OUT_ENV, "1") != "0"


def cpu_supported() -> bool:
    """Whether this host is x86-64 Linux with AVX-512F and FMA (read from /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return "avx512f" in flags and "fma" in flags


def _register(library: ctypes.CDLL) -> None:
    """Registers the library's handlers as XLA CPU custom-call targets (TARGET, TARGET_RESIDUAL).

    Raises:
      AttributeError: the library lacks one of SYMBOLS (then none is registered).
    """
    handlers = {target: jax.ffi.pycapsule(getattr(library, sym)) for target, sym in SYMBOLS.items()}
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, handler, "cpu")


@functools.cache
def available() -> bool:
    """Whether `conv2d` runs the kernel on CPU in this process (builds and registers it once).

    False (with one logged warning saying why) where it cannot run; see the module docstring.
    """
    if not enabled() or not cpu_supported():
        return False
    try:
        _register(build.load())
    except (RuntimeError, OSError, AttributeError) as e:  # AttributeError: not our library
        logging.warning("cpu_conv: using XLA's convolution instead of the kernel: %s", e)
        return False
    return True


def in_use() -> bool:
    """Whether `conv2d` computes with the kernel under the default backend (CPU, available)."""
    return jax.default_backend() == "cpu" and available()


def supports(x: ArrayLike, kernel: ArrayLike) -> bool:
    """Whether the kernel computes this convolution: float32 x [N, H, W, Cin] and kernel
    [kh, kw, Cin, Cout] with Cout a multiple of 16, 1 <= kh <= 16 and kw >= 1 (no feature
    groups)."""
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    return (
        x.ndim == 4
        and kernel.ndim == 4
        and x.dtype == jnp.float32
        and kernel.dtype == jnp.float32
        and kernel.shape[2] == x.shape[3]
        and kernel.shape[3] % LANES == 0
        and 1 <= kernel.shape[0] <= MAX_KERNEL_ROWS
        and kernel.shape[1] >= 1
    )


def _output_shape(x_shape, kernel_shape, stride: int, dilation: int, pads: Pads):
    """[N, oh, ow, Cout] of the convolution of x [N, H, W, Cin] with kernel [kh, kw, Cin, Cout],
    as lax's: 0 rows (columns) where the padded map is smaller than the dilated kernel."""
    n, h, w, _ = x_shape
    kh, kw, _, cout = kernel_shape
    oh, ow = (
        max(0, (size + lo + hi - dilation * (k - 1) - 1) // stride + 1)
        for size, (lo, hi), k in ((h, pads[0], kh), (w, pads[1], kw))
    )
    return (n, oh, ow, cout)


def _pack(x, kernel, bias, residual) -> tuple:
    """The custom call's operands: (x, kernel, bias[, residual])."""
    return (x, kernel, bias) if residual is None else (x, kernel, bias, residual)


def _unpack(operands) -> tuple:
    """(x, kernel, bias, residual or None) of `_pack`'s operands."""
    return (*operands[:3], operands[3] if len(operands) == 4 else None)


def _xla_conv(x, kernel, bias, residual, stride, dilation, pads, relu, circular):
    """The same function with XLA's convolution (the models' own, `padded_conv2d`)."""
    mode = "circular" if circular else "zero"
    y = padded_conv2d(x, kernel, stride, pads, dilation, mode)
    y = y + bias if residual is None else y + bias + residual
    return jnp.maximum(y, 0.0) if relu else y


def _kernel_call(x, kernel, bias, residual, stride, dilation, pads, relu, circular):
    """The custom call on one device's arrays: x [N, H, W, Cin] -> [N, oh, ow, Cout]."""
    shape = _output_shape(x.shape, kernel.shape, stride, dilation, pads)
    target = TARGET if residual is None else TARGET_RESIDUAL
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32))
    return call(
        *_pack(x, kernel, bias, residual),
        stride=np.int64(stride),
        dilation=np.int64(dilation),
        pad_top=np.int64(pads[0][0]),
        pad_left=np.int64(pads[1][0]),
        relu=bool(relu),
        circular=bool(circular),
    )


def _batch_sharding(mesh, sharding) -> NamedSharding:
    """x's sharding of its batch axis alone (the other axes replicated)."""
    spec = getattr(sharding, "spec", None)
    return NamedSharding(mesh, P(spec[0] if spec else None))


def _partition(stride, dilation, pads, relu, circular, mesh, arg_shapes, result_shape):
    """x and the residual (if any) sharded on their batch axis, kernel and bias replicated."""
    del result_shape
    batch = _batch_sharding(mesh, arg_shapes[0].sharding)
    replicated = NamedSharding(mesh, P())

    def lower(*operands):
        return _kernel_call(*_unpack(operands), stride, dilation, pads, relu, circular)

    return mesh, lower, batch, (batch, replicated, replicated, batch)[: len(arg_shapes)]


def _infer_sharding(stride, dilation, pads, relu, circular, mesh, arg_shapes, result_shape):
    del stride, dilation, pads, relu, circular, result_shape
    return _batch_sharding(mesh, arg_shapes[0].sharding)


def _partitioned(kernel_call, operands: str):
    """`kernel_call` sharded along the batch axis only: each device convolves its own images
    with the whole kernel. operands: the Shardy rule's operand factors."""
    n = len(operands.split(","))  # then stride, dilation, pads, relu, circular: static
    fn = custom_partitioning(kernel_call, static_argnums=tuple(range(n, n + 5)))
    fn.def_partition(
        partition=_partition,
        infer_sharding_from_operands=_infer_sharding,
        sharding_rule=f"{operands} -> n o p d",
        need_replication_factors=("h", "w", "c", "i", "j", "d", "o", "p"),
    )
    return fn


def _plain_call(x, kernel, bias, stride, dilation, pads, relu, circular):
    return _kernel_call(x, kernel, bias, None, stride, dilation, pads, relu, circular)


def _residual_call(x, kernel, bias, residual, stride, dilation, pads, relu, circular):
    return _kernel_call(x, kernel, bias, residual, stride, dilation, pads, relu, circular)


_PARTITIONED = {
    False: _partitioned(_plain_call, "n h w c, i j c d, d"),
    True: _partitioned(_residual_call, "n h w c, i j c d, d, n o p d"),
}


def _varying_axes(x) -> tuple[str, ...]:
    """The shard_map mesh axes x varies over (() outside shard_map). Named `vma` in newer JAX,
    `manual_axis_type.varying` in jax 0.10."""
    aval = jax.typeof(x)
    axes = getattr(aval, "vma", None)
    if axes is None:
        axes = getattr(getattr(aval, "manual_axis_type", None), "varying", ())
    return tuple(sorted(axes))


def _kernel_conv(x, kernel, bias, residual, stride, dilation, pads, relu, circular):
    """The kernel with batching: vmap over x / the residual folds the vmapped axis into N;
    vmap over the kernel or bias goes to XLA's convolution."""
    static = (stride, dilation, pads, relu, circular)
    call = _PARTITIONED[residual is not None]

    @custom_vmap
    def conv(*operands):
        return call(*operands, *static)

    @conv.def_vmap
    def conv_vmap(axis_size, in_batched, *operands):
        if in_batched[1] or in_batched[2]:  # kernel or bias

            def xla(*o):
                return _xla_conv(*_unpack(o), *static)

            axes = tuple(0 if b else None for b in in_batched)
            return jax.vmap(xla, in_axes=axes)(*operands), True
        folded = [
            (o if b else jnp.broadcast_to(o, (axis_size, *o.shape))).reshape(-1, *o.shape[-3:])
            if i in (0, 3)
            else o
            for i, (o, b) in enumerate(zip(operands, in_batched, strict=True))
        ]
        y = conv(*folded)
        return y.reshape(axis_size, -1, *y.shape[1:]), True

    y = conv(*_pack(x, kernel, bias, residual))
    # Inside shard_map, XLA's convolution of a per-device x varies over the mesh axes; say the
    # same of the custom call's output (platform_dependent's branches must have one type).
    varying = _varying_axes(x)
    return lax.pcast(y, varying, to="varying") if varying else y


def conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike,
    stride: int = 1,
    dilation: int = 1,
    pads: Pads = ((0, 0), (0, 0)),
    relu: bool = False,
    residual: ArrayLike | None = None,
    padding_mode: str = "zero",
) -> jax.Array:
    """2-D convolution + bias (+ residual, + ReLU) of an NHWC map, zero or circular padding,
    with the kernel on CPU.

    Args:
      x: [N, H, W, Cin] float32.
      kernel: [kh, kw, Cin, Cout] float32 (HWIO), kh and kw >= 1.
      bias: [Cout], added to every output pixel.
      stride, dilation: of the convolution (ints >= 1).
      pads: ((top, bottom), (left, right)) rows and columns of padding, each >= 0.
      relu: apply max(y, 0) to the result (after the residual).
      residual: None or [N, oh, ow, Cout] (float32), added to the result before the ReLU
        (a ResNet block's shortcut).
      padding_mode: 'zero' (zeros outside x) or 'circular' (x wrapped around: the padding
        rows and columns repeat the opposite edge, as `jnp.pad(mode='wrap')`).

    Returns:
      [N, oh, ow, Cout], oh = (H + top + bottom - dilation (kh - 1) - 1) // stride + 1 (ow
      likewise; 0 where that is negative, a map smaller than the kernel):
      `lax.conv_general_dilated(x, kernel, stride, pads, rhs_dilation)` + bias
      (+ residual), then max(., 0) with `relu`.
      Computed by the kernel on CPU when `available()` and `supports(x, kernel)`, otherwise
      (and on every other platform) by XLA's convolution.
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    bias = jnp.broadcast_to(jnp.asarray(bias, x.dtype), kernel.shape[-1:])
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if kernel.ndim != 4 or min(kernel.shape[:2]) < 1:
        raise ValueError(
            f"kernel must be [kh, kw, Cin, Cout] with kh, kw >= 1, got {list(kernel.shape)}"
        )
    if any(p < 0 for pair in pads for p in pair):
        raise ValueError(f"pads must be >= 0, got {pads}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    static = (stride, dilation, pads, relu, padding_mode == "circular")
    if residual is not None:
        residual = jnp.asarray(residual)
        shape = _output_shape(x.shape, kernel.shape, stride, dilation, pads)
        if residual.shape != shape or residual.dtype != x.dtype:
            raise ValueError(
                f"residual must be {x.dtype.name}{list(shape)}, got "
                f"{residual.dtype.name}{list(residual.shape)}"
            )
    if not (available() and supports(x, kernel)):
        return _xla_conv(x, kernel, bias, residual, *static)
    return lax.platform_dependent(
        *_pack(x, kernel, bias, residual),
        cpu=lambda *o: _kernel_conv(*_unpack(o), *static),
        default=lambda *o: _xla_conv(*_unpack(o), *static),
    )
