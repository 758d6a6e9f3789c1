"""The ablation's tables on hand-made records: range split, mean +- std over seeds."""

import math

import numpy as np
import pytest

from benchmarks.studies import ablation_summary


def _proto(x, acc, pairs, flips):
    metrics = {m: 0.5 for m in ablation_summary.TABLE_METRICS}
    return {
        "x": x,
        "accuracy_per_param": acc,
        "pairs": pairs,
        "flip_rate_per_pair": flips,
        "metrics": metrics,
    }


def test_range_split_by_hand():
    # Shifts -2..2; inside |x| <= 1: entries 1, 2, 3; pairs (1,2), (2,3) inside, (0,1), (3,4) not.
    proto = _proto(
        [-2, -1, 0, 1, 2],
        [0.1, 0.5, 0.9, 0.7, 0.3],
        [[0, 1], [1, 2], [2, 3], [3, 4]],
        [0.4, 0.1, 0.3, 0.2],
    )
    got = ablation_summary.range_split(proto, 1)
    assert got["accuracy_in"] == pytest.approx((0.5 + 0.9 + 0.7) / 3)
    assert got["accuracy_out"] == pytest.approx(0.2)
    assert got["p_top1_change_in"] == pytest.approx(0.2)
    assert got["p_top1_change_out"] == pytest.approx(0.3)


def test_range_split_with_nothing_outside_is_nan():
    proto = _proto([-1, 0, 1], [0.5, 1.0, 0.5], [[0, 1], [1, 2]], [0.5, 0.5])
    got = ablation_summary.range_split(proto, 4)
    assert got["accuracy_in"] == pytest.approx(2 / 3)
    assert math.isnan(got["accuracy_out"]) and math.isnan(got["p_top1_change_out"])


def _result(variant, seed, acc):
    proto = _proto([-1, 0, 1], [acc, acc, acc], [[0, 1], [1, 2]], [0.1, 0.3])
    proto["metrics"]["accuracy"] = acc
    return {
        "variant": variant,
        "seed": seed,
        "protocols": {"translate": proto},
        "equivariance": {"error": {"stage1": [0.2, float("nan")]}},
        "train_time_s": 3.0,
        "params": 10,
        "flops": 2e6,
    }


def test_summary_row_adds_the_split_only_with_a_limit():
    plain = ablation_summary.summary_row(_result("blur", 0, 0.8))
    assert "translate/accuracy_in" not in plain and plain["translate/accuracy"] == 0.8
    split = ablation_summary.summary_row(_result("blur", 0, 0.8), range_limit=0)
    assert math.isnan(split["translate/p_top1_change_in"])  # no pair inside |x| <= 0
    assert split["translate/p_top1_change_out"] == pytest.approx(0.2)


def test_over_seeds_mean_and_sample_std():
    rows = [
        ablation_summary.summary_row(_result(v, s, a))
        for v, s, a in [("sub", 0, 0.6), ("blur", 0, 0.7), ("sub", 1, 0.8), ("sub", 2, 0.7)]
    ]
    agg = ablation_summary.over_seeds(rows)
    assert [r["variant"] for r in agg] == ["sub", "blur"]
    sub, blur = agg
    assert sub["seeds"] == 3 and sub["translate/accuracy"] == pytest.approx(0.7)
    assert sub["translate/accuracy_std"] == pytest.approx(np.std([0.6, 0.8, 0.7], ddof=1))
    assert blur["seeds"] == 1 and blur["translate/accuracy_std"] == 0.0
    table = ablation_summary.mean_std_table(agg, ["translate/accuracy"])
    assert "| sub | 3 | 0.700 +- 0.100 |" in table
