"""Bad inputs across the four entry points: each is refused with one line that names the flag
(and, where the values are a set, the allowed ones), never a traceback. The list is recorded in
WORKSPACE_NOTES.md ("Bad inputs")."""

import json
import os
import subprocess
import sys

import pytest
from entry_point import ROOT

# (entry point, arguments, text the error line must hold)
CASES = {
    "benchmarks.invariance": [
        (["--transform=shear"], "--transform"),
        (["--max_shift=-1"], "--max_shift"),
        (["--sweep=spiral"], "--sweep"),
        (["--dataset=no_such_dataset"], "--dataset"),
        (["--split=validation"], "--split"),
        (["--crop_size=40"], "--crop_size"),
        (["--model=resnet9000"], "--model"),
        (["--stride_mode=sideways"], "--stride_mode"),
        (["--images_per_call=3"], "--images_per_call=3"),
        (["--flip_distance=9"], "--flip_distance=9"),
        (["--transform=rescale", "--sweep=grid"], "--sweep"),
        (["--transform=rotate", "--sweep=diagonal"], "--sweep"),
        (["--transform=rescale", "--canvas_size=40"], "--canvas_size"),
        (["--transform=circular", "--crop_padding=4"], "--crop_padding"),
        (["--transform=rotate", "--fill=mean"], "--fill"),
        (["--transform=rescale", "--scale_min=1.2", "--scale_max=1.1"], "--scale_max"),
        (["--transform=embed", "--embed_size=16", "--max_shift=9"], "--max_shift"),
        (["--transform=translate", "--shift_step=0.5"], "--shift_step"),
        (["--transform=rotate", "--angle_max=0.5"], "--angle_max"),
        (["--blur_size=9"], "--blur_size"),
        (["--checkpoint=/no/such/dir"], "--checkpoint"),
        (["--checkpoint=/a", "--weights=/b"], "--checkpoint"),
        (["--model=vgg_small", "--weights=/no/such.h5"], "--weights"),
        (["--batch_size=0"], "--batch_size"),
        (["--num_pairs=0"], "--num_pairs"),
        (["--fill_value=abc"], "--fill_value"),
        (["--memory_budget_mb=0"], "--memory_budget_mb"),
        (["stray"], "unexpected arguments"),
        (["--coordinator_address=localhost:1234"], "--coordinator_address"),
        (["--multihost"], "--multihost"),
        (
            ["--multihost", "--coordinator_address=nohost", "--num_processes=2", "--process_id=0"],
            "--coordinator_address='nohost'",
        ),
    ],
    "benchmarks.stride_ablation": [
        (["--variants=sideways"], "--variants"),
        (["--seeds=a"], "--seeds"),
        (["--protocols=shear"], "--protocols"),
        (["--optimizer=lbfgs"], "--optimizer"),
        (["--multihost", "--coordinator_address=localhost:1"], "--num_processes and --process_id"),
        (["--train_steps=0"], "--train_steps"),
        (["--max_shift=0"], "--max_shift"),
    ],
    "benchmarks.dataset_bias": [
        (["--mode=nope"], "--mode"),
        (["--process_id=1"], "--process_id"),
        (
            ["--multihost", "--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
            "--process_id=2",
        ),
        (["--mode=experiment", "--offsets=x"], "--offsets"),
        (["--head=conv"], "--head"),
    ],
    "benchmarks.throughput": [
        (["--repeats=0"], "--repeats"),
        (["--multihost", "--variants=evaluator,bare_forward"], "--variants"),
        (["--max_shift=0"], "--max_shift"),
    ],
}


def _run_cases(module, cases):
    args = json.dumps([a for a, _ in cases])
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "bad_inputs.py"), module, args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_at_least_thirty_bad_inputs():
    assert sum(len(c) for c in CASES.values()) >= 30


@pytest.mark.parametrize("module", sorted(CASES))
def test_bad_inputs_fail_with_one_line_naming_the_flag(module):
    results = _run_cases(module, CASES[module])
    assert len(results) == len(CASES[module])
    for (args, expected), got in zip(CASES[module], results):
        lines = [line for line in got["stderr"].splitlines() if expected in line]
        assert got["code"] != 0, (args, got)
        assert "Traceback" not in got["stderr"], (args, got["stderr"][-2000:])
        assert lines, (args, expected, got["stderr"][-2000:])
