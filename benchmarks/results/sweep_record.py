"""The files of one evaluation under one sweep: results.json, per_param.csv, per_pair.csv,
sweep.png and curves.png (what `python -m benchmarks.invariance` writes)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from benchmarks.core import evaluator, protocols
from benchmarks.results import plots, report


def _param(values) -> str:
    """A sweep parameter as text: [-2.0, 1.0] -> '-2 1'."""
    return " ".join(f"{v:g}" for v in values)


def write_sweep_record(
    output_dir: str,
    config: Mapping[str, Any],
    protocol: protocols.Protocol,
    result: evaluator.EvalResult,
    wall_time_s: float,
    num_upscaled: int = 0,
    sharing: Mapping[str, int] | None = None,
    notes: Sequence[str] = (),
) -> None:
    """results.json, per_param.csv, per_pair.csv (when the sweep has neighbour pairs),
    sweep.png and curves.png of one evaluation in `output_dir`; prints its metrics as a
    markdown table.

    Args:
      config: the settings to record under 'config' (with 'model' and 'dataset', for titles).
      protocol: the evaluated protocol: per-entry x [T] and params [T, P].
      result: the evaluation: metrics, per-entry accuracy and true-class probability [T],
        neighbour pairs [E, 2] and their P(top-1 change) [E], curves.
      wall_time_s: the run's wall time (s; the evaluation's own is `result.wall_time_s`).
      num_upscaled: images whose shorter side was below the image size (enlarged by the
        resize).
      sharing: {'period', 'distinct', 'entries'} when circular shifts shared phases, else None.
      notes: what a reader of the numbers must know (e.g. weights run in a mode they were not
        trained in); logged as warnings and recorded.
    """
    for note in notes:
        logging.warning("note: %s", note)
    n = result.num_images
    record = {
        "config": config,
        "notes": list(notes),
        "geometry": protocol.geometry(),
        "metrics": result.metrics,
        "stderr": result.stderr,
        "per_param": {
            "x": protocol.x,
            "params": protocol.params,
            "accuracy": result.accuracy_per_param,
            "accuracy_stderr": plots.binomial_stderr(result.accuracy_per_param, n),
            "label_prob": result.label_prob_per_param,
        },
        "per_pair": {
            "pairs": result.pairs,
            "p_top1_change": result.flip_rate_per_pair,
            "p_top1_change_stderr": plots.binomial_stderr(result.flip_rate_per_pair, n),
        },
        "identity": result.identity,
        "call_sizes": result.call_sizes,
        "num_images": result.num_images,
        "num_upscaled": num_upscaled,
        "shared_phases": sharing,
        "compile_count": result.compile_count,
        "versions": report.versions(),
        "wall_time_s": wall_time_s,
        "eval_time_s": result.wall_time_s,
    }
    report.write_json(os.path.join(output_dir, "results.json"), record)
    rows = [
        {
            "index": i,
            "x": float(protocol.x[i]),
            "param": _param(protocol.params[i]),
            "accuracy": float(result.accuracy_per_param[i]),
            "accuracy_stderr": float(plots.binomial_stderr(result.accuracy_per_param[i], n)),
            "label_prob": float(result.label_prob_per_param[i]),
        }
        for i in range(len(protocol.x))
    ]
    report.write_csv(os.path.join(output_dir, "per_param.csv"), rows)
    if len(result.pairs):
        pair_rows = [
            {
                "a": int(i),
                "b": int(j),
                "param_a": _param(protocol.params[i]),
                "param_b": _param(protocol.params[j]),
                "p_top1_change": float(f),
                "p_top1_change_stderr": float(plots.binomial_stderr(f, n)),
            }
            for (i, j), f in zip(result.pairs, result.flip_rate_per_pair)
        ]
        report.write_csv(os.path.join(output_dir, "per_pair.csv"), pair_rows)
    title = f"{config['model']} on {config['dataset']}: {protocol.name}"
    plots.plot_sweep(
        os.path.join(output_dir, "sweep.png"),
        protocol.x,
        protocol.xlabel,
        result.accuracy_per_param,
        result.pairs,
        result.flip_rate_per_pair,
        n,
        title,
        protocol.lattice,
        protocol.params,
    )
    plots.plot_curves(
        os.path.join(output_dir, "curves.png"),
        protocol.x,
        protocol.xlabel,
        {config["model"]: result.curves},
        title,
    )
    summary = {k: round(v, 4) for k, v in result.metrics.items()}
    logging.info("wrote %s: %s", output_dir, summary)
    print(report.markdown_table([summary], list(summary)))
