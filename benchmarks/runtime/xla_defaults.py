"""XLA CPU settings the package starts JAX with (before its CPU backend exists).

Nothing here runs on import: the entry points call `configure_xla_cpu()` before JAX starts
(`benchmarks.cli.flags.run_main`), and a library user calls it (as `benchmarks.configure_xla_cpu()`)
before the first JAX computation. A flag the user's own XLA_FLAGS already names is left alone, and
SHIFTBENCH_NO_XLA_DEFAULTS=1 in the environment turns the defaults off.

`XLA_CPU_FLAGS`: ``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions; XLA's
own convolution and dot kernels). Measured on the 2-core AVX-512 machine with jaxlib 0.10.2,
bare forwards with the inference fast path, each setting in its own process, two rounds
(WORKSPACE_NOTES.md, "Library defaults on XLA's own CPU kernels"): against jaxlib's
default, 1.1-1.2x on ResNet-20, 1.2x on ResNet-50, 1.3-1.4x with circular padding, 1.8-2.0x
in `full` mode (dilated convolutions) and 1.9x on EfficientNet-Lite0 (depthwise convolutions). The only case it loses
is dense ResNet-20 against YNNPACK's eltwise fusions (0.9x); those fusions halve `full` mode
and EfficientNet, so they are not the default.

`set_cpu_device_count`: `invariance --cpu_devices=n` shards the batch over n simulated CPU
devices. The default stays one device: in the evaluator on the 2-core machine, 2 devices gave
ResNet-20 0.98x, ResNet-50 1.07x, EfficientNet-Lite0 1.17x and ResNet-20 `full` 0.5x of the
one-device rate (WORKSPACE_NOTES.md, the same section). Evaluation results do not depend on
the device count (tested).

No JAX import here: this runs before anything else of the package.
"""

from __future__ import annotations

import os
from importlib import metadata

XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
MIN_JAXLIB = (0, 10)  # the flag exists (and was measured) from here; older XLA aborts on it
OPT_OUT_ENV = "SHIFTBENCH_NO_XLA_DEFAULTS"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def defaults_enabled() -> bool:
    """False when SHIFTBENCH_NO_XLA_DEFAULTS is set to anything but '' or '0'."""
    return os.environ.get(OPT_OUT_ENV, "0") in ("", "0")


def _jaxlib_at_least(version: tuple[int, int]) -> bool:
    """Whether the installed jaxlib (read from its metadata; JAX is not imported) is at least
    (major, minor); False when it is missing or its version does not parse."""
    try:
        parts = metadata.version("jaxlib").split(".")[:2]
        return tuple(int(p) for p in parts) >= version
    except (metadata.PackageNotFoundError, ValueError):
        return False


def _named(flags: str) -> set[str]:
    return {f.split("=")[0] for f in flags.split()}


def configure_xla_cpu() -> str:
    """Adds `XLA_CPU_FLAGS` to the XLA_FLAGS environment variable, each unless already named.

    Takes effect only if called before JAX starts its CPU backend (the first computation or
    device query); does nothing when the environment sets SHIFTBENCH_NO_XLA_DEFAULTS to a
    non-empty value other than '0', or with a jaxlib older than MIN_JAXLIB (whose XLA would
    abort on the unknown flag). Returns the resulting XLA_FLAGS ('' when unset).
    """
    current = os.environ.get("XLA_FLAGS", "")
    if not defaults_enabled() or not _jaxlib_at_least(MIN_JAXLIB):
        return current
    extra = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in _named(current)]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return os.environ.get("XLA_FLAGS", "")


def cpu_device_count_in_env() -> int | None:
    """The device count XLA_FLAGS sets with --xla_force_host_platform_device_count (the last
    occurrence, as XLA reads it), or None when it sets none.

    Raises:
      ValueError: XLA_FLAGS gives that flag a value that is not a positive integer.
    """
    values = [
        f.partition("=")[2]
        for f in os.environ.get("XLA_FLAGS", "").split()
        if f.partition("=")[0] == DEVICE_COUNT_FLAG
    ]
    if not values:
        return None
    if not values[-1].isdigit() or int(values[-1]) < 1:
        raise ValueError(f"XLA_FLAGS: {DEVICE_COUNT_FLAG}={values[-1]} is not a positive integer")
    return int(values[-1])


def set_cpu_device_count(n: int) -> None:
    """Makes XLA_FLAGS give n simulated CPU devices (adds --xla_force_host_platform_device_count
    unless XLA_FLAGS already gives n).

    Takes effect only before JAX starts its CPU backend (it concerns the CPU platform only;
    an accelerator stays the default backend).

    Raises:
      ValueError: XLA_FLAGS already gives another count, or an invalid one.
    """
    given = cpu_device_count_in_env()
    if given == n:
        return
    if given is not None:
        raise ValueError(f"conflicts with XLA_FLAGS, which sets {DEVICE_COUNT_FLAG}={given}")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}={n}".strip()
