"""End to end: `python -m benchmarks.stride_ablation` trains, measures, writes, and reuses."""

import csv
import json
import os

import pytest
from entry_point import SHARED_TFDS, fails_with_one_line, run_module

TINY = [
    "--width=4",
    "--train_steps=12",
    "--train_batch_size=32",
    "--num_train=200",
    "--num_images=32",
    "--batch_size=16",
    "--equivariance_images=8",
]


def _run(*args, timeout=600):
    return run_module("benchmarks.stride_ablation", *args, timeout=timeout)


def test_ablation_writes_everything_and_reuses_finished_variants(tmp_path):
    out = tmp_path / "abl"
    args = [
        *TINY,
        "--variants=subsample,full:1",
        "--protocols=crop,circular",
        f"--output_dir={out}",
    ]
    res = _run(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "ablation.json").read_text())
    assert set(record) >= {"config", "variants", "table", "versions", "wall_time_s"}
    variants = record["variants"]
    assert set(variants) == {"subsample/seed0", "full:1/seed0"}
    for v in variants.values():
        assert v["params"] > 0 and v["flops"] > 0 and v["train_time_s"] > 0
        for proto in ("crop", "circular"):
            m = v["protocols"][proto]["metrics"]
            for key in ("accuracy", "p_top1_change", "mac", "consistency", "worst_case_accuracy"):
                assert 0.0 <= m[key] <= 1.0, (proto, key)
        assert set(v["equivariance"]["error"]) == {"stage1", "stage2", "stage3"}
    # full:1 removes the last stage's stride: its strides are 1, 2, 2.
    assert variants["full:1/seed0"]["equivariance"]["strides"] == {
        "stage1": 1,
        "stage2": 2,
        "stage3": 2,
    }
    # Same weights count in every mode; the dense stage costs more FLOPs.
    assert variants["full:1/seed0"]["params"] == variants["subsample/seed0"]["params"]
    assert variants["full:1/seed0"]["flops"] > variants["subsample/seed0"]["flops"]
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["variant"] for r in rows] == ["subsample", "full:1"]
    assert "| variant | seed |" in res.stdout
    for png in ("metrics.png", "curves.png", "equivariance.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The invariance CLI loads the trained checkpoint and measures the same numbers.
    inv = run_module(
        "benchmarks.invariance",
        "--model=vgg_small",
        "--width=4",
        "--stride_mode=subsample",
        f"--checkpoint={out / 'subsample_seed0' / 'checkpoint'}",
        "--dataset=digits",
        "--split=test",
        "--num_images=32",
        "--batch_size=16",
        "--transform=crop",
        "--max_shift=4",
        f"--output_dir={tmp_path / 'inv'}",
    )
    assert inv.returncode == 0, inv.stderr[-3000:]
    got = json.loads((tmp_path / "inv" / "results.json").read_text())["metrics"]
    want = variants["subsample/seed0"]["protocols"]["crop"]["metrics"]
    for key in ("accuracy", "p_top1_change", "mac", "consistency"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    # Run again: nothing is retrained or re-evaluated.
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stderr and "Training" not in again.stderr
    assert json.loads((out / "ablation.json").read_text())["table"] == record["table"]


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--variants=subsample,median", "--variants"),
        ("--protocols=crop,zoom", "--protocols"),
        ("--seeds=a", "--seeds"),
        ("--optimizer=lbfgs", "--optimizer"),
    ],
)
def test_bad_flags_fail_with_one_line(flag, expected, tmp_path):
    res = _run(flag, f"--output_dir={tmp_path}", timeout=120)
    assert fails_with_one_line(res, expected), res.stderr[-2000:]


@pytest.mark.skipif(not os.path.isdir(SHARED_TFDS), reason="../shared/data is not present")
def test_runs_on_real_mnist(tmp_path):
    res = _run(
        *TINY,
        "--dataset=mnist",
        f"--data_dir={SHARED_TFDS}",
        "--train_split=test[:200]",
        "--split=test[9000:9032]",
        "--variants=blur",
        "--protocols=embed",
        f"--output_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((tmp_path / "ablation.json").read_text())
    assert record["config"]["dataset"] == "mnist"
    assert record["variants"]["blur/seed0"]["protocols"]["embed"]["metrics"]["accuracy"] >= 0.0
