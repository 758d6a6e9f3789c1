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


def _pyplot():
    """pyplot on the headless Agg backend, imported at the first plot (choosing a backend is a
    global setting: importing this module must not make it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())
    _pyplot().close(fig)


def plot_sweep(
    path: str,
    x: np.ndarray,
    xlabel: str,
    accuracy: np.ndarray,
    pairs: np.ndarray,
    flip_rate: np.ndarray,
    title: str = "",
) -> None:
    """PNG of accuracy per parameter [T] against `x` [T], and of P(top-1 change) per
    neighbour pair (`pairs` [E, 2], `flip_rate` [E]) at the pair's midpoint of x."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(x, accuracy, "o-")
    a.set(xlabel=xlabel, ylabel="top-1 accuracy", title="accuracy per parameter")
    pairs = np.asarray(pairs, int).reshape(-1, 2)
    if len(pairs):
        b.plot((x[pairs[:, 0]] + x[pairs[:, 1]]) / 2, flip_rate, "o", color="C3")
    else:
        b.text(0.5, 0.5, "the sweep has no neighbour pairs", ha="center", transform=b.transAxes)
    b.set(
        xlabel=xlabel + " (between neighbours)",
        ylabel="P(top-1 change)",
        title="P(top-1 change) of neighbouring parameters",
    )
    for ax in (a, b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, y=1.02)
    _save(fig, path)


def plot_curves(
    path: str,
    x: np.ndarray,
    xlabel: str,
    curves: Mapping[str, np.ndarray],
    title: str = "",
    image_ids: Sequence[int] | None = None,
) -> None:
    """PNG of true-class probability vs parameter x [T], one panel per image.

    `curves`: legend -> [T, n] for n images; `image_ids`: the images' indices (panel titles).
    """
    plt = _pyplot()
    n = max(c.shape[1] for c in curves.values())
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6), squeeze=False, sharey=True)
    for j, ax in enumerate(axes[0]):
        for i, (name, c) in enumerate(curves.items()):
            if j < c.shape[1]:
                ax.plot(x, c[:, j], color=f"C{i}", label=name)
        ax.set(
            xlabel=xlabel,
            ylim=(-0.02, 1.02),
            title=f"image {j if image_ids is None else image_ids[j]}",
        )
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("P(true class)")
    axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title, y=1.02)
    _save(fig, path)


def plot_bars(
    path: str,
    names: Sequence[str],
    values: Mapping[str, Sequence[float]],
    errors: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    ncols: int | None = None,
) -> None:
    """PNG with one bar panel per metric, `ncols` panels a row (default: all in one row);
    `values`: metric -> one value per name; `errors`: optional error bars alike."""
    plt = _pyplot()
    ncols = min(ncols or len(values), len(values))
    nrows = -(-len(values) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.ravel()[len(values) :]:
        ax.axis("off")
    for ax, (metric, vals) in zip(axes.ravel(), values.items()):
        err = None if errors is None else errors.get(metric)
        ax.bar(range(len(names)), vals, yerr=err, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, y=1.02)
    _save(fig, path)


def plot_lines(
    path: str,
    x: Sequence,
    xlabel: str,
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str = "",
) -> None:
    """PNG of several named series against a shared x (e.g. a metric against depth)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (name, ys) in enumerate(series.items()):
        ax.plot(x, ys, "o-", color=f"C{i}", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xticks(list(x))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_heatmaps(
    path: str, maps: Mapping[str, np.ndarray], xlabel: str, ylabel: str, title: str = ""
) -> None:
    """PNG with one heat-map panel per entry of `maps` (name -> [rows, cols]), each drawn over
    the unit square with row 0 at the top, with a colour bar."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(maps), figsize=(4.4 * len(maps), 3.6), squeeze=False, layout="constrained"
    )
    for ax, (name, grid) in zip(axes[0], maps.items()):
        im = ax.imshow(np.asarray(grid), extent=(0, 1, 1, 0), cmap="viridis")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, y=1.02)
    _save(fig, path)


def plot_histograms(
    path: str,
    samples: Mapping[str, np.ndarray],
    bins: int,
    xlabel: str,
    title: str = "",
    value_range: tuple[float, float] | None = None,
) -> None:
    """PNG with one histogram panel per entry of `samples` (name -> values [N]): counts in `bins`
    equal bins over `value_range` (default: each sample's min..max)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(samples), figsize=(3.6 * len(samples), 3.2), squeeze=False, layout="constrained"
    )
    for i, (ax, (name, values)) in enumerate(zip(axes[0], samples.items())):
        ax.hist(np.asarray(values), bins=bins, range=value_range, color=f"C{i}")
        ax.set(xlabel=xlabel, ylabel="count", title=name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, y=1.02)
    _save(fig, path)
