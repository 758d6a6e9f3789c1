"""Tables of the stride ablation: one row per variant and seed, mean +- std over seeds, and
metrics split at the edge of the training augmentation's range.

Inputs are the per-variant result records of `benchmarks.stride_ablation.run_variant` (plain
JSON-able dicts), so every function here is pure numpy and tested on hand-made records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.core import equivariance

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
