"""benchmarks/classifiers.py: numpy-drawn random variables."""

import jax
import numpy as np
import pytest

from benchmarks import classifiers
from models import registry


@pytest.mark.parametrize("name", ["resnet20", "vgg_small"])
def test_random_variables_match_init_and_are_seeded(name):
    model = registry.build(name, num_classes=10)
    drawn = classifiers.random_variables(model, (16, 16, 3), seed=3)
    init = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 16, 16, 3)), train=False)
    )
    assert jax.tree.structure(drawn) == jax.tree.structure(init)
    assert jax.tree.map(np.shape, drawn) == jax.tree.map(lambda l: l.shape, init)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(drawn))
    again = classifiers.random_variables(model, (16, 16, 3), seed=3)
    other = classifiers.random_variables(model, (16, 16, 3), seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(drawn), jax.tree.leaves(again)))
    assert not np.array_equal(jax.tree.leaves(drawn)[0], jax.tree.leaves(other)[0])
    stats = [v for path, v in jax.tree_util.tree_leaves_with_path(drawn) if path[-1].key == "var"]
    assert stats and all(((v >= 0.5) & (v <= 2.0)).all() for v in stats)


def test_random_kernels_are_he_scaled():
    model = registry.build("vgg_small", num_classes=10, width=64)
    drawn = classifiers.random_variables(model, (16, 16, 3))
    kernels = [
        v for path, v in jax.tree_util.tree_leaves_with_path(drawn) if path[-1].key == "kernel"
    ]
    big = max(kernels, key=np.size)  # fan_in = kh * kw * cin
    np.testing.assert_allclose(big.std(), np.sqrt(2.0 / np.prod(big.shape[:-1])), rtol=0.05)
