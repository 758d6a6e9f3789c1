"""End to end: `python -m benchmarks.invariance` writes its report; bad flags fail in one line."""

import csv
import json
import os
import subprocess
import sys

import pytest
from entry_point import ROOT, SHARED_TFDS, fails_with_one_line, run_module

from benchmarks.runtime import xla_defaults


def _run(*args, timeout=600):
    return run_module("benchmarks.invariance", *args, timeout=timeout)


def test_writes_json_csv_and_plots(tmp_path):
    out = tmp_path / "run"
    args = (
        "--model=allconv",
        "--dataset=digits",
        "--split=test[:40]",
        "--batch_size=16",
        "--transform=circular",
        "--max_shift=2",
        f"--output_dir={out}",
    )
    res = _run(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert set(record) >= {"config", "metrics", "versions", "wall_time_s"}
    for key in ("p_top1_change", "mac", "consistency", "accuracy", "worst_case_accuracy"):
        assert 0.0 <= record["metrics"][key] <= 1.0, key
    assert record["config"]["transform"] == "circular" and record["config"]["model"] == "allconv"
    assert record["num_images"] == 40 and record["compile_count"] == 1
    assert record["shared_phases"] is None  # zero padding: every shift is evaluated
    assert record["versions"]["jax"]
    if xla_defaults.cpu_device_count_in_env() is None:
        assert record["versions"]["devices"] == "1 x cpu"
    rows = list(csv.DictReader((out / "per_param.csv").open()))
    assert len(rows) == 5 and float(rows[0]["x"]) == -2.0
    for png in ("sweep.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # Running again finds the finished evaluation and returns the same numbers.
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["metrics"] == record["metrics"]
    assert record["identity"]["data"]["name"] == "digits" and record["identity"]["evaluation"]
    pairs = list(csv.DictReader((out / "per_pair.csv").open()))
    assert len(pairs) == 4 and pairs[0]["param_a"] == "-2 -2"
    # Other weights (another init seed) into the same directory: their own numbers, not the
    # first run's, and the log says why the saved state was not resumed.
    other = _run(*args, "--seed=1")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "belongs to another run" in other.stderr and "weights_sha256" in other.stderr
    # (that they equal a fresh evaluation of those weights is tested on the library,
    # tests/test_evaluate.py::test_state_of_other_weights_is_not_resumed)
    redone = json.loads((out / "results.json").read_text())
    assert redone["metrics"] != record["metrics"] and redone["num_images"] == 40
    weights = lambda r: r["identity"]["evaluation"]["weights_sha256"]
    assert weights(redone) != weights(record)


def test_circular_padding_shares_phases(tmp_path):
    """The CLI evaluates each phase once (that this equals the plain evaluation is tested on
    the library, tests/test_shared_phases.py): entries of one phase get identical numbers."""
    res = _run(
        "--model=allconv",
        "--width=8",
        "--padding=circular",
        "--dataset=digits",
        "--split=test[:16]",
        "--batch_size=16",
        "--transform=circular",
        "--max_shift=2",
        "--cpu_devices=2",  # the batch sharded over 2 simulated CPU devices
        f"--output_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "results.json").read_text())
    if xla_defaults.cpu_device_count_in_env() is None:
        assert got["versions"]["devices"] == "2 x cpu"
    # Diagonal shifts -2..2 on a net of total stride 4: phases 2, 3, 0, 1, 2.
    assert got["shared_phases"] == {"period": 4, "distinct": 4, "entries": 5}
    label_prob = got["per_param"]["label_prob"]
    assert label_prob[0] == label_prob[4] and len(set(label_prob[:4])) > 1


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--max_shift=-1", "--max_shift"),
        ("--transform=shear", "--transform"),
        ("--dataset=no_such_dataset", "--dataset"),
        ("--split=validation", "--split"),
        ("--crop_size=40", "--crop_size"),
        ("--model=resnet9000", "--model"),
        ("--stride_mode=sideways", "--stride_mode"),
        ("--images_per_call=3", "--images_per_call=3"),
    ],
)
def test_bad_flags_fail_with_one_clear_line(flag, expected, tmp_path):
    res = _run(flag, f"--output_dir={tmp_path}", timeout=120)
    assert fails_with_one_line(res, expected), res.stderr[-2000:]


@pytest.mark.skipif(not os.path.isdir(SHARED_TFDS), reason="../shared/data is not present")
def test_missing_dataset_names_the_data_dir(tmp_path):
    res = _run(
        "--dataset=cifar100", f"--data_dir={SHARED_TFDS}", f"--output_dir={tmp_path}", timeout=120
    )
    assert res.returncode == 2 and "not prepared" in res.stderr and "Traceback" not in res.stderr


def test_batch_not_divisible_by_the_device_count(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    res = _run("--batch_size=12", f"--output_dir={tmp_path}", timeout=120)
    assert fails_with_one_line(res, "--batch_size=12"), res.stderr[-2000:]
    assert "(8)" in res.stderr
    res = _run("--cpu_devices=2", f"--output_dir={tmp_path}", timeout=120)
    assert fails_with_one_line(res, "--cpu_devices=2 conflicts with XLA_FLAGS"), res.stderr[-2000:]


@pytest.mark.skipif(not os.path.isdir(SHARED_TFDS), reason="../shared/data is not present")
def test_evaluation_needs_no_tensorflow():
    code = (
        "import sys; from benchmarks import invariance; from benchmarks.core import evaluator;"
        "from benchmarks.data import datasets;"
        f"ds = datasets.open_dataset('mnist', 'test[:4]', {SHARED_TFDS!r});"
        "datasets.load_arrays(ds);"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
