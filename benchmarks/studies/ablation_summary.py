"""Tables of the stride ablation: one row per variant and seed, mean +- std over seeds, and
metrics split at the edge of the training augmentation's range; and the files that hold them
(`write_ablation`).

Inputs are the per-variant result records of `benchmarks.studies.ablation.run_variant` (plain
JSON-able dicts), so every table here is pure numpy and tested on hand-made records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from benchmarks.core import equivariance
from benchmarks.results import plots, report

TABLE_METRICS = ("accuracy", "p_top1_change", "mac", "consistency", "worst_case_accuracy")


def range_split(protocol_result: dict[str, Any], limit: float) -> dict[str, float]:
    """Accuracy and P(top-1 change) inside and outside a shift range (claim 5a of the paper).

    A sweep entry is inside when its |x| (the shift along the sweep, px) is <= `limit`; a
    neighbour pair is inside when both of its entries are.

    Args:
      protocol_result: one protocol of a variant's result, with 'x' [T], 'accuracy_per_param'
        [T], 'pairs' [E, 2] and 'flip_rate_per_pair' [E].
      limit: the largest |shift| inside the range, px (the augmentation's `--aug_max_shift`).

    Returns:
      {'accuracy_in', 'accuracy_out', 'p_top1_change_in', 'p_top1_change_out'}: means over the
      entries / pairs on each side; NaN for a side that has none.
    """
    inside = np.abs(np.asarray(protocol_result["x"], np.float64)) <= limit + 1e-9
    acc = np.asarray(protocol_result["accuracy_per_param"], np.float64)
    pairs = np.asarray(protocol_result["pairs"], np.int64).reshape(-1, 2)
    flips = np.asarray(protocol_result["flip_rate_per_pair"], np.float64)
    pair_in = inside[pairs].all(axis=1) if len(pairs) else np.zeros(0, bool)
    mean = lambda v: float(v.mean()) if v.size else float("nan")
    return {
        "accuracy_in": mean(acc[inside]),
        "accuracy_out": mean(acc[~inside]),
        "p_top1_change_in": mean(flips[pair_in]),
        "p_top1_change_out": mean(flips[~pair_in]),
    }


def summary_row(result: dict[str, Any], range_limit: float | None = None) -> dict[str, Any]:
    """One flat row of the ablation table for one variant and seed.

    Columns: '<protocol>/<metric>' for TABLE_METRICS, 'eq_error/<stage>' (mean relative error
    at matched shifts), train_time_s, params, mflops; with `range_limit`, also the
    `range_split` columns of the 'translate' protocol ('translate/accuracy_in', ...).
    """
    row = {"variant": result["variant"], "seed": result["seed"]}
    for name, proto in result["protocols"].items():
        for metric in TABLE_METRICS:
            row[f"{name}/{metric}"] = float(proto["metrics"][metric])
        if name == "translate" and range_limit is not None:
            for key, value in range_split(proto, range_limit).items():
                row[f"{name}/{key}"] = value
    for stage, err in result["equivariance"]["error"].items():
        row[f"eq_error/{stage}"] = equivariance.matched_mean(err)
    row.update(
        train_time_s=round(float(result["train_time_s"]), 1),
        params=result["params"],
        mflops=round(result["flops"] / 1e6, 2),
    )
    return row


def over_seeds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (ddof=1) over seeds of every numeric column.

    Args:
      rows: `summary_row`s, several seeds per variant.

    Returns:
      One row per variant (in first-seen order): 'variant', 'seeds' (their count), and for each
      numeric column c of the input, c (the mean) and c + '_std' (0.0 with a single seed).
    """
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == variant]
        agg: dict[str, Any] = {"variant": variant, "seeds": len(group)}
        for col in group[0]:
            if col in ("variant", "seed"):
                continue
            values = np.array([float(r[col]) for r in group])
            agg[col] = float(values.mean())
            agg[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(agg)
    return out


def mean_std_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A markdown table of `over_seeds` rows: each of `columns` as 'mean +- std'."""
    header = ["variant", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r[c]:.{digits}f} +- {r[c + '_std']:.{digits}f}" for c in columns]
        lines.append("| " + " | ".join([r["variant"], str(r["seeds"]), *cells]) + " |")
    return "\n".join(lines)


def write_ablation(
    output_dir: str, results: list[dict[str, Any]], config: dict[str, Any], wall_time_s: float
) -> None:
    """ablation.json, ablation.csv (with several seeds also ablation_seeds.csv), metrics.png,
    curves.png and equivariance.png in `output_dir`, and the markdown table on stdout.

    Args:
      results: `run` results.
      config: the settings to record under 'config' (with 'model', 'dataset' and
        'aug_max_shift', the edge of the 'translate' protocol's range split).
      wall_time_s: the study's wall time (s).
    """
    rows = [summary_row(r, config["aug_max_shift"]) for r in results]
    seeds = over_seeds(rows) if len({r["seed"] for r in rows}) > 1 else []
    report.write_json(
        os.path.join(output_dir, "ablation.json"),
        {
            "config": config,
            "variants": {
                f"{r['variant']}/seed{r['seed']}": {
                    k: v for k, v in r.items() if k != "fingerprint"
                }
                for r in results
            },
            "table": rows,
            "over_seeds": seeds,
            "versions": report.versions(),
            "wall_time_s": wall_time_s,
        },
    )
    report.write_csv(os.path.join(output_dir, "ablation.csv"), rows)
    if seeds:
        report.write_csv(os.path.join(output_dir, "ablation_seeds.csv"), seeds)
    names = [f"{r['variant']}/s{r['seed']}" for r in results]
    metric_cols = [f"{p}/{m}" for p in results[0]["protocols"] for m in TABLE_METRICS]
    stderr = {  # over the test images, per variant and seed
        f"{p}/{m}": [r["protocols"][p]["stderr"][m] for r in results]
        for p in results[0]["protocols"]
        for m in TABLE_METRICS
    }
    plots.plot_bars(
        os.path.join(output_dir, "metrics.png"),
        names,
        {c: [row[c] for row in rows] for c in metric_cols},
        stderr,
        title=f"{config['model']} on {config['dataset']} (+- 1 s.e. over test images)",
        ncols=len(TABLE_METRICS),
    )
    first = next(iter(results[0]["protocols"]))
    proto = results[0]["protocols"][first]
    curves = {n: np.asarray(r["protocols"][first]["curves"]) for n, r in zip(names, results)}
    # Show the images whose true-class probability moves most under the first variant.
    shown = np.sort(np.argsort(-np.ptp(curves[names[0]], axis=0))[:4])
    plots.plot_curves(
        os.path.join(output_dir, "curves.png"),
        np.asarray(proto["x"]),
        proto["xlabel"],
        {n: c[:, shown] for n, c in curves.items()},
        title=f"P(true class) under {first} shifts",
        image_ids=shown.tolist(),
    )
    stages = sorted(results[0]["equivariance"]["error"])
    plots.plot_lines(
        os.path.join(output_dir, "equivariance.png"),
        list(range(1, len(stages) + 1)),
        "stage",
        {
            n: [equivariance.matched_mean(r["equivariance"]["error"][s]) for s in stages]
            for n, r in zip(names, results)
        },
        "relative equivariance error",
        "feature equivariance\n(circular shifts, multiples of each stage's stride)",
    )
    columns = ["variant", "seed"] + [c for c in rows[0] if c not in ("variant", "seed")]
    print(report.markdown_table(rows, columns, digits=3))
    if seeds:
        print(f"\nmean +- std over {seeds[0]['seeds']} seeds:")
        print(mean_std_table(seeds, [c for c in columns[2:] if "/" in c]))
    logging.info("wrote %s in %.0f s", output_dir, wall_time_s)
