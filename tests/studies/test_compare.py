"""benchmarks.compare: the table of several runs, ratios to a baseline, refusal of other data."""

import json

from entry_point import fails_with_one_line, run_module

from benchmarks import compare


def _record(fp, t5d, data="digits"):
    return {
        "config": {"model": "resnet20", "stride_mode": None, "padding": None, "transform": "crop"},
        "num_images": 10,
        "metrics": {"p_top1_change": fp, "flip_probability": fp, "top5_distance": t5d},
        "stderr": {"p_top1_change": 0.01, "flip_probability": 0.01, "top5_distance": 0.1},
        "identity": {"data": {"name": data, "version": "1", "split": "test", "num_images": 10}},
    }


def test_ratios_to_the_baseline():
    records = [_record(0.2, 2.0), _record(0.05, 1.5)]
    rows = compare.rows_for(["a", "b"], records, ["p_top1_change", "mac"], baseline=0)
    assert rows[0]["flip_probability / baseline"] == "1.000"
    assert rows[1]["flip_probability / baseline"] == "0.250"  # 0.05 / 0.2
    assert rows[1]["top5_distance / baseline"] == "0.750"
    assert rows[1]["p_top1_change"] == "0.0500 +- 0.0100" and rows[1]["mac"] == "absent"


def test_runs_of_other_images_are_refused(tmp_path):
    for name, rec in (("a", _record(0.2, 2.0)), ("b", _record(0.1, 1.0, data="mnist"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(rec))
    res = run_module("benchmarks.compare", f"--runs={tmp_path / 'a'},{tmp_path / 'b'}")
    assert fails_with_one_line(res, "--runs"), res.stderr[-2000:]
    ok = run_module(
        "benchmarks.compare",
        f"--runs={tmp_path / 'a'},{tmp_path / 'a'}",
        f"--baseline={tmp_path / 'a'}",
        f"--output={tmp_path / 'table.md'}",
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "flip_probability / baseline" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "table.csv").exists()
