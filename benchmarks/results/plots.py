"""The PNG figures of the entry points, each with its uncertainty drawn.

Rates of 0/1 outcomes per image (accuracy at one sweep entry, P(top-1 change) of one pair) get
their binomial standard error, sqrt(p (1 - p) / (n - 1)) over n images; other means get the
standard errors the caller passes. Rate axes start at 0 and their labels state the range
shown, so that a small difference is not drawn as a large one. Grid sweeps are drawn as heat
maps. Every figure uses matplotlib's constrained layout: no title or label overlaps another.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from benchmarks.results.report import write_bytes


def _pyplot():
    """pyplot on the headless Agg backend, imported at the first plot (choosing a backend is a
    global setting: importing this module must not make it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())
    _pyplot().close(fig)


def binomial_stderr(rate: np.ndarray, n: int) -> np.ndarray:
    """Standard error of the mean of n 0/1 outcomes with mean `rate` (any shape)."""
    rate = np.asarray(rate, np.float64)
    return np.sqrt(np.clip(rate * (1 - rate), 0, None) / max(n - 1, 1))


def _rate_axis(ax, label: str, values: np.ndarray, errors: np.ndarray, full: bool) -> None:
    """y from 0 (to 1 when `full`, else just above the highest error bar); the label says so."""
    top = 1.0 if full else float(min(1.0, max(0.02, np.max(values + errors, initial=0) * 1.15)))
    ax.set_ylim(0, top)
    ax.set_ylabel(f"{label} (axis 0-{top:.2g})")


def plot_sweep(
    path: str,
    x: np.ndarray,
    xlabel: str,
    accuracy: np.ndarray,
    pairs: np.ndarray,
    flip_rate: np.ndarray,
    num_images: int,
    title: str = "",
    lattice: tuple[int, ...] | None = None,
    params: np.ndarray | None = None,
) -> None:
    """PNG of accuracy per sweep entry [T] and of P(top-1 change) per neighbour pair
    (`pairs` [E, 2], `flip_rate` [E]), with binomial standard errors over `num_images`.

    An ordered sweep is drawn against `x` [T] (a pair at its midpoint); a grid sweep (`lattice`
    (R, C), row-major entries, pairs as `sweeps.lattice_pairs` orders them) as heat maps of the
    accuracy at each shift and of P(top-1 change) to the right and to the lower neighbour,
    labelled with the shifts of `params` [T, 2] (dy, dx) when given.
    """
    if lattice is not None and len(lattice) == 2:
        _plot_grid(path, accuracy, flip_rate, num_images, title, lattice, params)
        return
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    acc_err = binomial_stderr(accuracy, num_images)
    a.errorbar(x, accuracy, yerr=acc_err, fmt="o-", capsize=3)
    a.set(xlabel=xlabel, title="accuracy per sweep entry (+- 1 s.e.)")
    _rate_axis(a, "top-1 accuracy", accuracy, acc_err, full=True)
    pairs = np.asarray(pairs, int).reshape(-1, 2)
    if len(pairs):
        flip_err = binomial_stderr(flip_rate, num_images)
        mid = (x[pairs[:, 0]] + x[pairs[:, 1]]) / 2
        b.errorbar(mid, flip_rate, yerr=flip_err, fmt="o", color="C3", capsize=3)
        _rate_axis(b, "P(top-1 change)", flip_rate, flip_err, full=False)
    else:
        b.text(0.5, 0.5, "the sweep has no neighbour pairs", ha="center", transform=b.transAxes)
    b.set(xlabel=xlabel + " (between neighbours)", title="P(top-1 change) of neighbours")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _plot_grid(path, accuracy, flip_rate, num_images, title, lattice, params) -> None:
    """The heat maps of `plot_sweep` for a grid sweep."""
    rows, cols = lattice
    if params is None:
        dy, dx = np.arange(rows), np.arange(cols)
    else:
        grid = np.asarray(params).reshape(rows, cols, -1)
        dy, dx = grid[:, 0, 0], grid[0, :, 1]
    horizontal = rows * (cols - 1)
    maps = {
        "accuracy": np.asarray(accuracy).reshape(rows, cols),
        "P(top-1 change) to the right": np.asarray(flip_rate[:horizontal]).reshape(rows, -1),
        "P(top-1 change) below": np.asarray(flip_rate[horizontal:]).reshape(-1, cols),
    }
    worst = float(
        np.max(binomial_stderr(np.concatenate([m.ravel() for m in maps.values()]), num_images))
    )
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    for ax, (name, grid) in zip(axes, maps.items()):
        top = 1.0 if name == "accuracy" else max(0.05, float(grid.max(initial=0)))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=top)
        for (r, c), v in np.ndenumerate(grid):
            ink = "k" if v > 0.6 * top else "w"
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color=ink)
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in dx[: grid.shape[1]]])
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in dy[: grid.shape[0]]])
        ax.set(xlabel="dx (px; first of the pair)", ylabel="dy (px; first of the pair)")
        ax.set_title(f"{name} (colour 0-{top:.2g})")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}\n(standard error of each cell at most {worst:.3f})".strip())
    _save(fig, path)


def plot_curves(
    path: str,
    x: np.ndarray,
    xlabel: str,
    curves: Mapping[str, np.ndarray],
    title: str = "",
    image_ids: Sequence[int] | None = None,
) -> None:
    """PNG of true-class probability vs parameter x [T], one panel per image (single images:
    no error bars). `curves`: legend -> [T, n] for n images; `image_ids`: panel titles."""
    plt = _pyplot()
    n = max(c.shape[1] for c in curves.values())
    fig, axes = plt.subplots(
        1, n, figsize=(2.6 * n, 3.0), squeeze=False, sharey=True, layout="constrained"
    )
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
    axes[0, 0].set_ylabel("P(true class) (axis 0-1)")
    axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
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
    `values`: metric -> one value per name; `errors`: its standard errors alike. Axes start
    at 0."""
    plt = _pyplot()
    ncols = min(ncols or len(values), len(values))
    nrows = -(-len(values) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 3.6 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[len(values) :]:
        ax.axis("off")
    for ax, (metric, vals) in zip(axes.ravel(), values.items()):
        err = None if errors is None else errors.get(metric)
        ax.bar(
            range(len(names)), vals, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(names))]
        )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_lines(
    path: str,
    x: Sequence,
    xlabel: str,
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str = "",
    errors: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """PNG of several named non-negative series against a shared x (e.g. a metric against
    depth; the y axis starts at 0), with `errors` (name -> standard errors alike) as error bars
    where given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), layout="constrained")
    for i, (name, ys) in enumerate(series.items()):
        err = None if errors is None else errors.get(name)
        ax.errorbar(x, ys, yerr=err, fmt="o-", color=f"C{i}", label=name, capsize=3)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_ylim(bottom=0)  # rates and errors: a zoomed axis would exaggerate differences
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
        1, len(maps), figsize=(4.4 * len(maps), 3.8), squeeze=False, layout="constrained"
    )
    for ax, (name, grid) in zip(axes[0], maps.items()):
        im = ax.imshow(np.asarray(grid), extent=(0, 1, 1, 0), cmap="viridis")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
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
        1, len(samples), figsize=(3.6 * len(samples), 3.4), squeeze=False, layout="constrained"
    )
    for i, (ax, (name, values)) in enumerate(zip(axes[0], samples.items())):
        ax.hist(np.asarray(values), bins=bins, range=value_range, color=f"C{i}")
        ax.set(xlabel=xlabel, ylabel="count", title=name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
