"""Writers of results: one JSON record per run, CSV tables, PNG plots, markdown tables.

Only process 0 of a multi-host run writes (`is_writer`); every writer is atomic (temporary file
then rename), so an interrupted run never leaves a half-written result behind. Paths go through
`etils.epath`, so local directories and `gs://` buckets (a Cloud TPU run's output) both work.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import io
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from benchmarks.core.run_identity import jsonable


def is_writer() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def versions() -> dict[str, str]:
    """Versions of Python, the numeric stack, the devices the run used and its XLA_FLAGS."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in (
        "shiftbench",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "numpy",
        "tensorflow-datasets",
        "orbax-checkpoint",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    out["process_count"] = str(jax.process_count())
    out["xla_flags"] = os.environ.get(
        "XLA_FLAGS", ""
    )  # the CPU kernels: benchmarks.runtime.xla_defaults
    return out


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` (local or gs://) atomically: a temporary file, then a rename.
    Only process 0 writes (`is_writer`); on the other processes of a multi-host run this is a
    no-op, so every writer below is safe to call from all of them."""
    if not is_writer():
        return
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{target.name}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(target)


def read_bytes(path: str) -> bytes | None:
    """The bytes at `path` (local or gs://), or None when there is no such file."""
    target = epath.Path(path)
    return target.read_bytes() if target.exists() else None


def read_bytes_shared(path: str) -> bytes | None:
    """`read_bytes` on process 0, its result broadcast to every process: all processes of a
    multi-host run see the same file (or its absence) even when their disks differ."""
    data = read_bytes(path) if is_writer() else None
    if jax.process_count() == 1:
        return data
    size = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if data is None else len(data))))
    if size < 0:
        return None
    buf = np.frombuffer(data, np.uint8) if data is not None else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes()


def write_json(path: str, record: Mapping[str, Any]) -> None:
    """Writes `record` (numpy values converted) as indented JSON."""
    text = json.dumps(jsonable(record), indent=2, sort_keys=False) + "\n"
    write_bytes(path, text.encode())


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON at `path`, or None when there is none; read by process 0 and shared with the
    other processes (`read_bytes_shared`), so every process takes the same branch."""
    data = read_bytes_shared(path)
    return None if data is None else json.loads(data)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes rows (dicts with the same keys, in order) as CSV with a header."""
    if not rows:
        raise ValueError(f"no rows to write to {path}.")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})
    write_bytes(path, buf.getvalue().encode())


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 4
) -> str:
    """A GitHub markdown table of `columns` of `rows`; floats rounded to `digits`."""
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
