"""benchmarks/core/sweeps.py: the sweep builders, by hand and against their invalid arguments."""

import numpy as np
import pytest

from benchmarks.core import sweeps


def test_line_values_and_dtypes():
    np.testing.assert_array_equal(
        sweeps.line(-3, 2, 1), [[0, -3], [0, -2], [0, -1], [0, 0], [0, 1], [0, 2]]
    )
    np.testing.assert_array_equal(sweeps.line(0, 4, 2, axis="y"), [[0, 0], [2, 0], [4, 0]])
    assert sweeps.line(-3, 2, 1).dtype == np.int32
    scales = sweeps.line(0.4, 1.15, 0.025, axis="scalar")  # ImageNet-P scale: 31 frames
    assert scales.shape == (31, 1) and scales.dtype == np.float32
    np.testing.assert_allclose(scales[[0, -1], 0], [0.4, 1.15], rtol=1e-6)
    np.testing.assert_array_equal(
        sweeps.line(-15, 15, 1.0, axis="scalar")[:, 0], np.arange(-15, 16)
    )


def test_diagonal_and_grid_values():
    np.testing.assert_array_equal(sweeps.diagonal(0, 3, 1), [[0, 0], [1, 1], [2, 2], [3, 3]])
    np.testing.assert_array_equal(
        sweeps.grid(-1, 1, 1),
        [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1]],
    )
    assert (
        sweeps.grid(0.0, 1.0, 0.5).shape == (9, 2)
        and sweeps.grid(0.0, 1.0, 0.5).dtype == np.float32
    )


def test_random_offsets_seeded_uniform_inclusive():
    draws = sweeps.random_offsets(0, 4000, 0, 3)
    assert draws.shape == (4000, 2) and draws.dtype == np.int32
    np.testing.assert_array_equal(draws, sweeps.random_offsets(0, 4000, 0, 3))
    assert not np.array_equal(draws, sweeps.random_offsets(1, 4000, 0, 3))
    for axis in range(2):
        counts = np.bincount(draws[:, axis], minlength=4)
        assert counts.size == 4 and np.all(np.abs(counts - 1000) < 150)
    per_axis = sweeps.random_offsets(5, 500, (0, 10), (2, 10))
    assert set(per_axis[:, 0]) == {0, 1, 2} and set(per_axis[:, 1]) == {10}


@pytest.mark.parametrize(
    "builder, args, name",
    [
        (sweeps.line, (0, 4, 0), "step"),
        (sweeps.line, (0, 4, -1), "step"),
        (sweeps.line, (4, 0, 1), "stop"),
        (sweeps.line, (0, 4, 1, "z"), "axis"),
        (sweeps.line, ("0", 4, 1), "start"),
        (sweeps.diagonal, (0, float("nan"), 1), "stop"),
        (sweeps.grid, (0, 4, 0.0), "step"),
        (sweeps.random_offsets, (-1, 4, 0, 3), "seed"),
        (sweeps.random_offsets, (0, 0, 0, 3), "num"),
        (sweeps.random_offsets, (0, 4, 3, 0), "high"),
        (sweeps.random_offsets, (0, 4, 0.5, 3), "low"),
        (sweeps.random_offsets, (0, 4, 0, (1, 2, 3)), "high"),
    ],
)
def test_sweep_builders_invalid_args_raise(builder, args, name):
    with pytest.raises(ValueError, match=name):
        builder(*args)
