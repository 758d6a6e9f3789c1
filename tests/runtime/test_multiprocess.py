"""Two real JAX processes on CPU (gloo), as the hosts of a pod run the entry points.

One process with 2 simulated devices trains a small net with `stride_ablation`; two processes
of 1 device each train the same net on the same global mesh size and must reach the same
loss and the same measured invariance, bit for bit (the gradient mean is reduced over the
same 2 devices; on 1 device instead of 2 the final loss of this run moves by 9e-5 relative,
see WORKSPACE_NOTES.md); two processes then evaluate the one-process checkpoint with
`invariance` (1 and 4 devices per process) and must give the one-process numbers; a process
that dies makes its peer fail within the heartbeat timeout.
"""

import json
import os
import time

import launcher
import pytest
from entry_point import run_module

# One worker runs them all (setup.cfg: --dist=loadgroup), so the trained fixture is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]

TRAIN = [
    "--width=8",
    "--train_steps=30",
    "--train_batch_size=32",
    "--num_train=400",
    "--num_images=32",
    "--batch_size=16",
    "--equivariance_images=8",
    "--variants=subsample",
    "--protocols=crop",
    "--max_shift=2",
    "--chunk_size=3",  # fixed call sizes: no memory probe to compile
    "--images_per_call=8",
]
# Metrics that count top-1 decisions: equal across process and device counts. Probability
# averages (MAC, top-5 distance) sum in another order on other device counts: equal to float32
# rounding.
COUNTS = ("accuracy", "p_top1_change", "consistency", "worst_case_accuracy", "flip_probability")
MEANS = ("mac", "mac_label", "top5_distance")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The ablation on one process with 2 devices: its record and output directory."""
    out = tmp_path_factory.mktemp("one") / "abl"
    res = run_module(
        "benchmarks.stride_ablation", *TRAIN, f"--output_dir={out}", timeout=300, devices=2
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "ablation.json").read_text())["variants"]["subsample/seed0"], out


def _assert_same_metrics(got: dict, want: dict) -> None:
    for key in COUNTS:
        assert got[key] == want[key], key
    for key in MEANS:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_training_on_two_processes_matches_one(one_process, tmp_path):
    want, _ = one_process
    assert want["protocols"]["crop"]["metrics"]["accuracy"] > 0.3  # a net that learned
    out = tmp_path / "abl"
    cluster = launcher.start(
        "benchmarks.stride_ablation", *TRAIN, f"--output_dir={out}", logdir=str(tmp_path)
    )
    results = cluster.wait(timeout=240)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    got = json.loads((out / "ablation.json").read_text())
    assert got["versions"]["process_count"] == "2"
    run = got["variants"]["subsample/seed0"]
    # Same seeds, global batch and mesh size: the same training and the same numbers.
    assert run["final_loss"] == want["final_loss"]
    assert run["protocols"]["crop"]["metrics"] == want["protocols"]["crop"]["metrics"]
    assert run["equivariance"]["error"] == want["equivariance"]["error"]
    # One set of outputs, by process 0; process 1 printed no table and left no temporary file.
    assert "| variant |" in results[0][1] and "| variant |" not in results[1][1]
    names = sorted(os.listdir(out))
    assert names == sorted(
        ["ablation.csv", "ablation.json", "curves.png", "equivariance.png", "metrics.png"]
        + ["subsample_seed0"]
    )
    assert sorted(os.listdir(out / "subsample_seed0")) == ["checkpoint", "result.json"]


@pytest.mark.parametrize("devices_per_process", [1, 4])
def test_invariance_of_a_checkpoint_on_two_processes(one_process, tmp_path, devices_per_process):
    want, trained = one_process
    cluster = launcher.start(
        "benchmarks.invariance",
        "--model=vgg_small",
        "--width=8",
        f"--checkpoint={trained / 'subsample_seed0' / 'checkpoint'}",
        "--dataset=digits",
        "--split=test",
        "--num_images=32",
        "--batch_size=16",
        "--transform=crop",
        "--max_shift=2",
        "--chunk_size=3",
        "--images_per_call=8",
        f"--output_dir={tmp_path / 'inv'}",
        devices_per_process=devices_per_process,
        logdir=str(tmp_path),
    )
    for code, _, err in cluster.wait(timeout=180):
        assert code == 0, err[-3000:]
    got = json.loads((tmp_path / "inv" / "results.json").read_text())
    assert got["versions"]["devices"].startswith(f"{2 * devices_per_process} x")
    _assert_same_metrics(got["metrics"], want["protocols"]["crop"]["metrics"])


def test_a_dead_process_stops_its_peer_within_the_heartbeat_timeout(tmp_path):
    cluster = launcher.start(
        "benchmarks.invariance",
        "--model=vgg_small",
        "--dataset=digits",
        "--split=test",
        "--batch_size=16",
        "--transform=circular",
        "--sweep=grid",
        "--max_shift=4",
        "--heartbeat_timeout_s=3",
        f"--output_dir={tmp_path / 'inv'}",
        logdir=str(tmp_path),
    )
    deadline = time.monotonic() + 120
    while "process 1 of 2" not in (tmp_path / "proc1.err").read_text():
        assert time.monotonic() < deadline and cluster.procs[1].poll() is None
        time.sleep(0.1)
    cluster.procs[1].kill()
    killed = time.monotonic()
    (code, _, err), _ = cluster.wait(timeout=60)
    assert code is not None and code != 0, "process 0 hung after its peer died"
    assert time.monotonic() - killed < 30
    assert "stopped sending heartbeats" in err, err[-3000:]
