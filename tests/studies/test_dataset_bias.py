"""The photographer's bias: box statistics (hand-worked and numpy references), digit placement
(numpy pastes), `python -m benchmarks.dataset_bias` on a mocked TFDS 'voc' and the placement
experiment end to end (subprocesses), and bad flags failing in one line."""

import csv
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from entry_point import ROOT, fails_with_one_line, run_module

from benchmarks.studies import bias_stats

# Dyadic coordinates, so that every hand-worked value below is exact in float32.
BOXES = np.array(
    [
        [0.0, 0.0, 0.5, 0.5],  # centre (0.25, 0.25), height 0.5, width 0.5, size 0.5
        [0.25, 0.25, 0.75, 0.75],  # centre (0.5, 0.5), 0.5, 0.5, size 0.5
        [0.375, 0.25, 0.625, 1.0],  # centre (0.5, 0.625), 0.25, 0.75, size sqrt(0.1875)
        [0.75, 0.75, 1.0, 1.0],  # centre (0.875, 0.875), 0.25, 0.25, size 0.25
    ],
    np.float32,
)


def _run(*args, timeout=300):
    return run_module("benchmarks.dataset_bias", *args, timeout=timeout)


# ----------------------------------------------------------------------------- statistics


def test_centres_extents_sizes_by_hand():
    np.testing.assert_array_equal(
        bias_stats.box_centres(BOXES), [[0.25, 0.25], [0.5, 0.5], [0.5, 0.625], [0.875, 0.875]]
    )
    np.testing.assert_array_equal(
        bias_stats.box_extents(BOXES), [[0.5, 0.5], [0.5, 0.5], [0.25, 0.75], [0.25, 0.25]]
    )
    np.testing.assert_allclose(
        bias_stats.box_sizes(BOXES), [0.5, 0.5, math.sqrt(0.1875), 0.25], rtol=1e-6
    )


@pytest.mark.parametrize("side, expected", [(1.0, 1.0), (0.5, 0.75), (0.25, 0.5), (0.1, 0.25)])
def test_central_fraction_by_hand(side, expected):
    # side 0.5: [0.25, 0.75]^2 holds the first three centres (edges count); side 0.25:
    # [0.375, 0.625]^2 holds (0.5, 0.5) and (0.5, 0.625); side 0.1 only (0.5, 0.5).
    centres = bias_stats.box_centres(BOXES)
    assert float(bias_stats.central_fraction(centres, side)) == expected


def test_summarize_by_hand():
    s = bias_stats.summarize(BOXES, side_fraction=0.5, quantiles=(0.0, 0.25, 0.5, 0.75, 1.0))
    np.testing.assert_allclose(s["centre_mean"], [2.125 / 4, 2.25 / 4])
    # deviations y: -0.28125, -0.03125, -0.03125, 0.34375; x: -0.3125, -0.0625, 0.0625, 0.3125
    np.testing.assert_allclose(s["centre_std"], np.sqrt([0.19921875 / 4, 0.203125 / 4]), rtol=1e-6)
    np.testing.assert_allclose(
        s["centre_distance_mean"],
        (0.25 * math.sqrt(2) + 0.125 + 0.375 * math.sqrt(2)) / 4,
        rtol=1e-6,
    )
    assert float(s["central_fraction"]) == 0.75
    root = math.sqrt(0.1875)
    np.testing.assert_allclose(s["size_mean"], (1.25 + root) / 4, rtol=1e-6)
    # sorted sizes 0.25, root, 0.5, 0.5: level q sits at index 3 q, linearly interpolated
    np.testing.assert_allclose(
        s["size_quantiles"],
        [0.25, 0.25 + 0.75 * (root - 0.25), (root + 0.5) / 2, 0.5, 0.5],
        rtol=1e-6,
    )
    np.testing.assert_allclose(s["height_quantiles"], [0.25, 0.25, 0.375, 0.5, 0.5])
    np.testing.assert_allclose(s["width_quantiles"], [0.25, 0.4375, 0.5, 0.5625, 0.75])


def test_heatmap_by_hand_and_against_numpy():
    centres = bias_stats.box_centres(BOXES)
    np.testing.assert_array_equal(bias_stats.centre_heatmap(centres, 2), [[0.25, 0], [0, 0.75]])
    edge = bias_stats.centre_heatmap(np.array([[1.0, 0.0], [0.0, 1.0]]), 4)  # 1.0: last cell
    assert edge[3, 0] == 0.5 and edge[0, 3] == 0.5
    points = np.random.default_rng(0).uniform(size=(500, 2)).astype(np.float32)
    ref, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=7, range=[[0, 1], [0, 1]])
    np.testing.assert_allclose(bias_stats.centre_heatmap(points, 7), ref / 500, atol=1e-7)


def test_valid_boxes_by_hand():
    boxes = [
        [0.1, 0.2, 0.3, 0.4],
        [0.5, 0.5, 0.5, 0.5],  # empty but well formed
        [0.3, 0.2, 0.1, 0.4],  # ymin > ymax
        [0.1, 0.4, 0.3, 0.2],  # xmin > xmax
        [-0.1, 0.2, 0.3, 0.4],
        [0.1, 0.2, 0.3, 1.5],
        [0.1, np.nan, 0.3, 0.4],
    ]
    np.testing.assert_array_equal(bias_stats.valid_boxes(boxes), [1, 1, 0, 0, 0, 0, 0])


def test_summarize_jit_and_vmap_match_loop():
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 0.5, size=(3, 40, 2))
    sets = np.concatenate([lo, lo + rng.uniform(0, 0.5, size=(3, 40, 2))], -1).astype(np.float32)
    batched = jax.vmap(jax.jit(lambda b: bias_stats.summarize(b, 0.4)))(jnp.asarray(sets))
    for i, boxes in enumerate(sets):
        one = bias_stats.summarize(boxes, 0.4)
        for key, value in one.items():
            np.testing.assert_allclose(batched[key][i], value, rtol=1e-5, atol=1e-7, err_msg=key)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        np.testing.assert_allclose(one["centre_std"], centres.std(0), rtol=1e-5)
        inside = np.all(np.abs(centres - 0.5) <= 0.2, axis=1).mean()
        np.testing.assert_allclose(one["central_fraction"], inside)


@pytest.mark.parametrize(
    "call",
    [
        lambda: bias_stats.summarize(BOXES[:, :3]),
        lambda: bias_stats.central_fraction(BOXES[:, :2], 0.0),
        lambda: bias_stats.central_fraction(BOXES[:, :2], 1.5),
        lambda: bias_stats.central_fraction(BOXES[:, :2], True),
        lambda: bias_stats.centre_heatmap(BOXES[:, :2], 0),
        lambda: bias_stats.summarize(BOXES, quantiles=(0.5, 1.2)),
    ],
)
def test_bad_statistics_arguments(call):
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------------------------- placement


@pytest.mark.parametrize(
    "spec, bias",
    [("uniform", bias_stats.Bias("uniform")), ("centred:sigma=2", bias_stats.Bias("centred", 2.0))],
)
def test_parse_bias_round_trips(spec, bias):
    assert bias_stats.parse_bias(spec) == bias and bias.name == spec


@pytest.mark.parametrize(
    "spec", ["centred", "centred:sigma=-1", "centred:sigma=x", "uniform:sigma=2", "gauss", ""]
)
def test_parse_bias_rejects(spec):
    with pytest.raises(ValueError, match="centred:sigma=S"):
        bias_stats.parse_bias(spec)


def test_max_offset():
    assert bias_stats.max_offset(48, 20) == 14
    for canvas, digit in ((48, 19), (20, 20), (20, 0)):
        with pytest.raises(ValueError, match="canvas_size"):
            bias_stats.max_offset(canvas, digit)


def test_sample_offsets_follow_their_bias():
    key = jax.random.key(0)
    uniform = np.asarray(bias_stats.sample_offsets(key, 4900, bias_stats.Bias("uniform"), 3))
    counts = np.unique(uniform, axis=0, return_counts=True)[1]
    assert uniform.min() == -3 and uniform.max() == 3 and len(counts) == 49
    assert counts.min() > 50 and counts.max() < 150  # expected 100 each
    centred = np.asarray(bias_stats.sample_offsets(key, 4000, bias_stats.Bias("centred", 2.0), 14))
    np.testing.assert_allclose(centred.mean(0), 0, atol=0.15)
    np.testing.assert_allclose(centred.std(0), math.sqrt(4 + 1 / 12), rtol=0.05)  # rounded normal
    clipped = np.asarray(bias_stats.sample_offsets(key, 500, bias_stats.Bias("centred", 10.0), 3))
    assert np.abs(clipped).max() == 3 and np.mean(np.abs(clipped) == 3) > 0.5
    fixed = bias_stats.sample_offsets(key, 10, bias_stats.Bias("centred", 0.0), 3)
    assert not np.any(fixed)


def test_ring_offsets():
    np.testing.assert_array_equal(bias_stats.ring_offsets(0, 8), [[0, 0]])
    np.testing.assert_array_equal(bias_stats.ring_offsets(4, 4), [[0, 4], [4, 0], [0, -4], [-4, 0]])
    ring = bias_stats.ring_offsets(12, 8)
    assert len(ring) == 8 and [8, 8] in ring.tolist() and [-12, 0] in ring.tolist()
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 12, atol=0.75)


def test_place_pastes_where_it_says():
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0.1, 1, size=(5, 20, 20, 1)).astype(np.float32)
    offsets = np.array([[0, 0], [14, -14], [-3, 7], [-14, 0], [5, 5]])
    placed = np.asarray(bias_stats.place(boxes, offsets, 48, 20))
    expected = np.zeros((5, 48, 48, 1), np.float32)
    for i, (dy, dx) in enumerate(offsets):
        expected[i, 14 + dy : 34 + dy, 14 + dx : 34 + dx] = boxes[i]
    np.testing.assert_array_equal(placed, expected)


def test_place_downscales_inside_its_box_and_placement_boxes_agree():
    ones = np.ones((3, 20, 20, 1), np.float32)
    offsets = np.array([[0, 0], [-10, 4], [10, 10]])
    placed = np.asarray(bias_stats.place(ones, offsets, 30, 10))  # digit 10 px, room 10 px
    boxes = np.asarray(bias_stats.placement_boxes(offsets, 30, 10))
    for image, box, (dy, dx) in zip(placed[..., 0], boxes, offsets):
        rows, cols = np.nonzero(image)
        found = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / 30
        np.testing.assert_allclose(box, found, atol=1e-6)
        inside = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        np.testing.assert_allclose(inside, 1, rtol=1e-6)  # the resized all-ones digit
        assert image.sum() == pytest.approx(100, rel=1e-5)
    np.testing.assert_allclose(bias_stats.box_centres(boxes), 0.5 + offsets / 30, atol=1e-6)


def test_place_rejects_out_of_range():
    with pytest.raises(ValueError, match="offsets"):
        bias_stats.place(np.zeros((1, 20, 20, 1)), [[15, 0]], 48, 20)


# ----------------------------------------------------------------------------- end to end

MOCK = """
import runpy, sys
import numpy as np
import tensorflow_datasets as tfds
boxes_path, argv = sys.argv[1], sys.argv[2:]
with tfds.testing.mock_data(num_examples=12):
    sys.argv = ["dataset_bias", *argv]
    try:
        runpy.run_module("benchmarks.dataset_bias", run_name="__main__")
    except SystemExit as e:
        code = e.code
    src = tfds.data_source("voc", split="validation")
    np.save(boxes_path, np.concatenate([src[i]["objects"]["bbox"] for i in range(10)]))
sys.exit(code)
"""


def test_stats_on_mocked_voc_match_the_boxes(tmp_path):
    out, boxes_path = tmp_path / "stats", tmp_path / "boxes.npy"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            MOCK,
            str(boxes_path),
            "--dataset=voc",
            "--split=validation",
            "--num_images=10",
            "--central_fraction=0.6",
            "--bins=5",
            f"--output_dir={out}",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "stats.json").read_text())
    boxes = np.load(boxes_path)  # read back independently of the command
    ok = (
        (boxes[:, 0] <= boxes[:, 2])
        & (boxes[:, 1] <= boxes[:, 3])
        & np.all((boxes >= 0) & (boxes <= 1), axis=1)
    )
    assert record["bbox_feature"] == "objects/bbox" and record["num_images"] == 10
    assert record["num_boxes"] == ok.sum() > 0 and record["num_invalid_boxes"] == (~ok).sum()
    good = boxes[ok].astype(np.float64)
    centres = (good[:, :2] + good[:, 2:]) / 2
    s = record["summary"]
    np.testing.assert_allclose(s["centre_mean"], centres.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["centre_std"], centres.std(0), rtol=1e-4)
    assert s["central_fraction"] == pytest.approx(np.all(np.abs(centres - 0.5) <= 0.3, 1).mean())
    levels = record["quantile_levels"]
    sizes = np.sqrt((good[:, 2] - good[:, 0]) * (good[:, 3] - good[:, 1]))
    np.testing.assert_allclose(s["size_quantiles"], np.quantile(sizes, levels), rtol=1e-4)
    np.testing.assert_allclose(
        s["width_quantiles"], np.quantile(good[:, 3] - good[:, 1], levels), rtol=1e-4, atol=1e-6
    )
    heat = np.asarray(record["centre_heatmap"])
    assert heat.shape == (5, 5) and heat.sum() == pytest.approx(1)
    assert record["central_region"]["area_fraction"] == pytest.approx(0.36)
    for png in ("centres.png", "sizes.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_experiment_end_to_end_and_rerun_reuses_results(tmp_path):
    out = tmp_path / "exp"
    args = (
        "--mode=experiment",
        "--train_steps=10",
        "--train_batch_size=32",
        "--num_train=96",
        "--num_images=32",
        "--batch_size=32",
        "--placements=1",
        "--offsets=8,0",
        "--num_directions=4",
        f"--output_dir={out}",
    )
    res = _run(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "experiment.json").read_text())
    table = record["table"]
    assert [(r["bias"], r["offset"], r["positions"]) for r in table] == [
        ("centred:sigma=2", 0, 1),
        ("centred:sigma=2", 8, 4),
        ("uniform", 0, 1),
        ("uniform", 8, 4),
    ]
    for row in table:
        for key in ("accuracy", "p_top1_change", "sweep_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (row, key)
    assert [r["radius"] for r in table[:2]] == [0.0, 8.0]
    rows = list(csv.DictReader((out / "experiment.csv").open()))
    assert len(rows) == 4 and rows[1]["bias"] == "centred:sigma=2"
    for name, result in record["biases"].items():
        assert result["compile_count"] == 1, name  # one compile for every position of the sweep
        positions = [p["position"] for p in result["offsets"][1]["positions"]]
        assert sorted(positions) == [[-8, 0], [0, -8], [0, 8], [8, 0]]
    # Training placements follow the biases: spread ~2 px vs ~uniform over 29 positions.
    std = {
        n: np.mean(r["placement_summary"]["centre_std"]) * 48 for n, r in record["biases"].items()
    }
    assert 1.5 < std["centred:sigma=2"] < 2.6 and 7 < std["uniform"] < 9.8
    for png in ("accuracy.png", "p_top1_change.png", "placements.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stderr and "Training" not in again.stderr
    assert json.loads((out / "experiment.json").read_text())["table"] == table


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--mode=sideways"], "--mode"),
        (["--central_fraction=1.5"], "--central_fraction"),
        (["--dataset=digits"], "--dataset"),
        (["--dataset=voc", "--bbox_feature=objects/box"], "--bbox_feature"),
        (["--mode=experiment", "--biases=gauss"], "--biases"),
        (["--mode=experiment", "--offsets=0,14"], "--offsets"),
        (["--mode=experiment", "--canvas_size=47"], "--canvas_size"),
    ],
)
def test_bad_flags_fail_with_one_clear_line(flags, expected, tmp_path):
    res = _run(*flags, f"--output_dir={tmp_path}", timeout=120)
    assert fails_with_one_line(res, expected), res.stderr[-2000:]
