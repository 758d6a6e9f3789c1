"""The markdown tables a throughput run prints: per protocol, the variants' rates, compiles,
memory, agreement, transform and device scaling, op profile."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.results import report


def print_tables(record: dict[str, Any]) -> None:
    """Prints the markdown tables of one run's `record` (its 'protocols', each a
    `measure.measure` record), the measured peak and the load average."""
    for name, r in record["protocols"].items():
        print(
            f"\n## {name}: {r['model']}, batch {r['batch_size']}, {r['num_transforms']} "
            f"transforms, chunk {r['chunk_size']} x {r['images_per_call']} images per call, "
            f"fast={r['fast']}\n"
        )
        rows = [
            {
                "variant": k,
                "images x transforms / s": round(v, 1),
                "median s / round": round(float(np.median(r["seconds"][k])), 3),
                "evaluator / variant": round(r["ratios"].get(f"evaluator/{k}", 1.0), 3),
                "GFLOP/s": round(r["gflops"][k], 1),
                "of peak": round(r["fraction_of_peak"][k], 3),
            }
            for k, v in r["rates"].items()
        ]
        print(report.markdown_table(rows, list(rows[0]), 3))
        for note in ("torch_note", "torch_compile_note"):
            if r.get(note):
                print(f"\n{r[note]}")
        c = r["compile"]
        print(
            f"\ncompiles: evaluator {c['evaluator']['compile_count']} trace(s), "
            + ", ".join(
                f"{k} {v['compiles']} compile(s) {v['compile_s']:.1f} s" for k, v in c.items()
            )
            + f"; during timed rounds: {r['compiles_during_rounds']}"
        )
        mem = r["memory"]
        print(
            f"XLA bytes per call: evaluator {mem['evaluator']['peak_bytes'] / 2**20:.1f} MiB, "
            f"bare forward {mem['bare_forward']['peak_bytes'] / 2**20:.1f} MiB; "
            f"process max RSS {mem['max_rss_bytes'] / 2**20:.0f} MiB"
        )
        print("agreement: " + ", ".join(f"{k} {v:.3g}" for k, v in r["agreement"].items()))
        if r.get("scaling_transforms"):
            cols = [
                "factor",
                "num_transforms",
                "seconds_per_batch",
                "rate",
                "cost_per_transform_vs_x1",
                "compiles",
                "peak_bytes",
            ]
            print("\n" + report.markdown_table(r["scaling_transforms"], cols, 3))
        if r.get("scaling_devices"):
            print(
                "\n" + report.markdown_table(r["scaling_devices"], list(r["scaling_devices"][0]), 1)
            )
        if r.get("profile"):
            p = r["profile"]
            print(
                f"\nprofile of one round: {p['wall_ms']:.0f} ms wall, {p['total_op_ms']:.0f} ms "
                "attributed to XLA ops (Eigen convolutions are undercounted):\n"
            )
            print(report.markdown_table(p["by_category"], ["category", "ms", "share"], 3))
    print(f"\nmeasured fp32 peak (2048^3 matmul): {record['peak_gflops']:.0f} GFLOP/s")
    load = record["load_average"]
    print(
        f"\nload average (1, 5, 15 min) at start {load['start']}, at end {load['end']}; "
        f"{record['cpu_count']} CPUs"
    )
