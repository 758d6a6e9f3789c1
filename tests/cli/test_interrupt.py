"""Ctrl-C: one line saying what was saved, exit 130, and the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import time

from entry_point import ROOT


def test_ctrl_c_says_what_was_saved_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    args = [
        "--model=allconv",
        "--width=4",
        "--dataset=digits",
        "--split=train[:1280]",  # 160 batches: the state appears after 20
        "--batch_size=8",
        "--transform=circular",
        "--max_shift=2",
        f"--output_dir={out}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.invariance", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "eval_state.npz").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no state was saved"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]  # interrupted, not finished
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("interrupted:")]
    assert len(line) == 1 and f"--output_dir={out}" in line[0] and "resumes" in line[0]
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.invariance", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after" in again.stderr
    assert json.loads((out / "results.json").read_text())["num_images"] == 1280
