"""Tabulates the results.json of several `benchmarks.invariance` runs, with ratios to a baseline.

    python -m benchmarks.compare --runs=runs/r20_crop,runs/r56_crop --output=runs/depth.md
    python -m benchmarks.compare --runs=runs/sub,runs/blur3,runs/full --baseline=runs/sub

Each row is one run: its model, switch, protocol, and every requested metric as mean +-
standard error. With --baseline, the ratio of each run's flip probability and top-5 distance to
the baseline's (ImageNet-P's FR and T5D relative to a baseline; averaging those ratios over
perturbations gives mFR and mT5D) is added. Runs of different images (dataset, version, split,
number) are refused: a ratio is only meaningful on the same images; image sizes may differ
(models with their own input size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from absl import flags

from benchmarks.cli import flags as sb_flags
from benchmarks.results import report

FLAGS = flags.FLAGS

flags.DEFINE_list("runs", None, "Output directories of benchmarks.invariance runs.")
flags.DEFINE_string("baseline", None, "One of --runs whose flip probability is the denominator.")
flags.DEFINE_list(
    "metrics",
    ["accuracy_reference", "p_top1_change", "mac", "consistency", "worst_case_accuracy"],
    "Metrics to tabulate (results.json 'metrics' keys).",
)
flags.DEFINE_string("output", None, "Also write the markdown table here (and a .csv beside it).")

RATIO_METRICS = ("flip_probability", "top5_distance")


def load_run(path: str) -> dict[str, Any]:
    """The results.json of the run in directory `path`; FlagError when there is none."""
    record = report.read_json(os.path.join(path, "results.json"))
    if record is None:
        raise sb_flags.FlagError(f"--runs: {path} holds no results.json.")
    return record


def rows_for(
    names: Sequence[str], records: Sequence[dict], metrics: Sequence[str], baseline: int | None
) -> list[dict[str, Any]]:
    """One row per run: config summary, 'metric' as 'mean +- stderr', and ratios to the
    baseline run (index into records) for RATIO_METRICS."""
    rows = []
    for name, rec in zip(names, records):
        cfg = rec["config"]
        row = {
            "run": name,
            "model": cfg.get("model"),
            "stride_mode": cfg.get("stride_mode") or "default",
            "padding": cfg.get("padding") or "default",
            "transform": cfg.get("transform"),
            "images": rec.get("num_images"),
        }
        for m in metrics:
            value = rec["metrics"].get(m)
            row[m] = "absent" if value is None else f"{value:.4f} +- {rec['stderr'][m]:.4f}"
        if baseline is not None:
            base = records[baseline]["metrics"]
            for m in RATIO_METRICS:
                ok = m in rec["metrics"] and base.get(m)
                row[f"{m} / baseline"] = f"{rec['metrics'][m] / base[m]:.3f}" if ok else "absent"
        rows.append(row)
    return rows


def main() -> None:
    if not FLAGS.runs:
        raise sb_flags.FlagError("--runs: give one or more benchmarks.invariance output dirs.")
    records = [load_run(p) for p in FLAGS.runs]
    keys = ("name", "version", "split", "num_images")
    data = [{k: (r.get("identity", {}).get("data") or {}).get(k) for k in keys} for r in records]
    if any(d != data[0] for d in data):
        raise sb_flags.FlagError(
            "--runs: the runs evaluated different images (identity.data name, version, split "
            "or num_images differ); compare runs of the same dataset, split and images."
        )
    baseline = None
    if FLAGS.baseline is not None:
        if FLAGS.baseline not in FLAGS.runs:
            raise sb_flags.FlagError(f"--baseline={FLAGS.baseline} must be one of --runs.")
        baseline = FLAGS.runs.index(FLAGS.baseline)
    rows = rows_for(FLAGS.runs, records, FLAGS.metrics, baseline)
    table = report.markdown_table(rows, list(rows[0]))
    print(table)
    if FLAGS.output:
        report.write_bytes(FLAGS.output, (table + "\n").encode())
        report.write_csv(os.path.splitext(FLAGS.output)[0] + ".csv", rows)


if __name__ == "__main__":
    sb_flags.run_main(main)
