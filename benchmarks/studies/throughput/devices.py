"""The evaluator against the number of simulated CPU devices: a child process per count.

XLA fixes the device count when its CPU backend starts, so each other count runs the entry point
`benchmarks.throughput` again, in a child process whose XLA_FLAGS add
--xla_force_host_platform_device_count=n, and reads its throughput.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import jax

from benchmarks.runtime import xla_defaults
from benchmarks.studies.throughput.config import ThroughputConfig

ENTRY_POINT = "benchmarks.throughput"
# The settings a child run inherits (the rest: evaluator only, no scaling, no children).
_INHERITED = (
    "repeats",
    "num_batches",
    "batch_size",
    "crop_size",
    "max_shift",
    "chunk_size",
    "images_per_call",
    "memory_budget_mb",
    "fast",
    "seed",
)


def device_row(result: dict[str, Any]) -> dict[str, Any]:
    """The device-scaling row of one protocol's `measure.measure` record: the evaluator's
    'rate' (images x transforms / s), 'chunk_size', 'images_per_call', 'compile_count' and
    XLA's 'peak_bytes' per call."""
    return {
        "rate": result["rates"]["evaluator"],
        "chunk_size": result["chunk_size"],
        "images_per_call": result["images_per_call"],
        "compile_count": result["compile"]["evaluator"]["compile_count"],
        "peak_bytes": result["memory"]["evaluator"]["peak_bytes"],
    }


def _child_run(name: str, n: int, config: ThroughputConfig) -> dict[str, Any]:
    """The `measure.measure` record of protocol `name` by a child process with `n` simulated
    CPU devices and the settings `_INHERITED` from `config`.

    Raises:
      RuntimeError: the child failed (with the end of its stderr).
    """
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            sys.executable,
            "-m",
            ENTRY_POINT,
            f"--protocols={name}",
            "--variants=evaluator",
            "--device_counts=",
            "--noscaling",
            f"--output_dir={tmp}",
        ]
        for field in _INHERITED:
            value = getattr(config, field)
            if value is not None:
                args.append(f"--{field}={value}")
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_defaults.DEVICE_COUNT_FLAG}={n}",
        )
        proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"the {n}-device run failed:\n{proc.stderr[-3000:]}")
        with open(os.path.join(tmp, "throughput.json")) as f:
            return json.load(f)["protocols"][name]


def scaling_devices(
    name: str, config: ThroughputConfig, own: dict[str, Any]
) -> list[dict[str, Any]]:
    """The evaluator on protocol `name` at each of `config.device_counts`: `own` (this
    process's `device_row`) for its own count, a child process for the others.

    Returns:
      A `device_row` per count, with 'devices' first.
    """
    rows = []
    for n in config.device_counts:
        row = own if n == jax.device_count() else device_row(_child_run(name, n, config))
        rows.append({"devices": n, **row})
    return rows
