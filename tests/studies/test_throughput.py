"""The throughput benchmark end to end, the inference rewrites (benchmarks/inference/fastpath.py), the
torch twins (benchmarks/studies/throughput/torch_twins.py, skipped without torch) and the evaluator's
one-compile and chunk-budget contracts. No timed assertions: the benchmark prints the figures."""

import importlib.util
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from entry_point import fails_with_one_line, run_module

from benchmarks.core import evaluator, protocols
from benchmarks.inference import classifiers, fastpath
from benchmarks.runtime import xla_defaults
from models import registry
from models.architectures import small
from models.layers import conv


def _model(name, size, **fields):
    classes = {} if name in ("resnet50", "efficientnet_lite0") else {"num_classes": 10}
    model = registry.build(name, **classes, **fields)
    return model, classifiers.random_variables(model, (size, size, 3))


def _images(n, size, seed=1):
    return jnp.asarray(np.random.default_rng(seed).random((n, size, size, 3), np.float32))


# --- BatchNorm folding and 1x1 convolutions as dots --------------------------------------------


def test_fold_batchnorm_hand_worked():
    """One Conv 1x1 + BatchNorm: the folded kernel and shift against the formula in numpy."""
    module = small.ConvBN(features=2, kernel_size=1)
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2) / 10
    kernel = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    scale, bias = np.array([2.0, 0.5], np.float32), np.array([0.1, -0.3], np.float32)
    mean, var = np.array([0.4, -1.0], np.float32), np.array([4.0, 0.25], np.float32)
    variables = {
        "params": {"conv": {"kernel": kernel[None, None]}, "bn": {"scale": scale, "bias": bias}},
        "batch_stats": {"bn": {"mean": mean, "var": var}},
    }
    pairs = fastpath.conv_batchnorm_pairs(module, variables, (2, 3, 2))
    assert pairs == (fastpath.ConvBatchNorm(("conv",), ("bn",), small._BN_EPSILON),)
    folded = fastpath.fold_batchnorm(variables, pairs)
    s = scale / np.sqrt(var + small._BN_EPSILON)
    np.testing.assert_allclose(folded["params"]["conv"]["kernel"][0, 0], kernel * s, rtol=1e-6)
    np.testing.assert_allclose(folded["params"]["bn"]["bias"], bias - mean * s, rtol=1e-6)
    expected = (x @ kernel - mean) * s + bias  # BatchNorm(conv(x)), by hand
    for v in (variables, folded):  # the plain module computes the same with either
        got = module.apply(v, x, train=False)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert variables["params"]["conv"]["kernel"][0, 0, 0, 1] == -2.0  # input left unchanged


class _ConvBNWithout(nn.Module):
    """Conv 1x1 (no bias) + an inference BatchNorm without scale (Keras InceptionResNetV2's
    unit) or without bias (which cannot take the folded shift)."""

    use_scale: bool = True
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, train=False):
        x = conv.Conv(2, 1, use_bias=False, name="conv")(x)
        bn = nn.BatchNorm(True, use_scale=self.use_scale, use_bias=self.use_bias, name="bn")
        return bn(x), {}


def test_fold_batchnorm_without_scale_and_skips_without_bias():
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2) / 10
    kernel = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    bias, mean = np.array([0.1, -0.3], np.float32), np.array([0.4, -1.0], np.float32)
    var = np.array([4.0, 0.25], np.float32)
    variables = {
        "params": {"conv": {"kernel": kernel[None, None]}, "bn": {"bias": bias}},
        "batch_stats": {"bn": {"mean": mean, "var": var}},
    }
    module = _ConvBNWithout(use_scale=False)
    pairs = fastpath.conv_batchnorm_pairs(module, variables, (2, 3, 2))
    assert len(pairs) == 1
    folded = fastpath.fold_batchnorm(variables, pairs)
    s = 1 / np.sqrt(var + pairs[0].epsilon)
    np.testing.assert_allclose(folded["params"]["bn"]["bias"], bias - mean * s, rtol=1e-6)
    assert "scale" not in folded["params"]["bn"]
    expected = (x @ kernel - mean) * s + bias
    for v in (variables, folded):
        np.testing.assert_allclose(module.apply(v, x)[0], expected, rtol=1e-5, atol=1e-6)
    logits, fast_variables = fastpath.prepare(module, variables, (2, 3, 2))
    np.testing.assert_allclose(logits(fast_variables, x), expected, rtol=1e-5, atol=1e-6)
    no_bias = {"params": {"conv": variables["params"]["conv"], "bn": {"scale": var}}}
    no_bias["batch_stats"] = variables["batch_stats"]
    assert fastpath.conv_batchnorm_pairs(_ConvBNWithout(use_bias=False), no_bias, (2, 3, 2)) == ()


def test_conv1x1_as_dot_matches_numpy():
    """A strided 1x1 conv with bias, rewritten as a dot, against x[:, ::2, ::2] @ W + b."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return conv.Conv(5, 1, stride=2, padding="VALID")(x), {}

    x = _images(2, 7)
    net = Net()
    variables = classifiers.random_variables(net, (7, 7, 3))
    p = variables["params"]["Conv_0"]
    expected = np.einsum("nhwc,co->nhwo", np.asarray(x)[:, ::2, ::2], p["kernel"][0, 0])
    expected = expected + np.asarray(p["bias"])
    fast = fastpath.logits_fn(net, (), fastpath.FastPath(fold_batchnorm=False))
    np.testing.assert_allclose(jax.jit(fast)(variables, x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.apply(variables, x)[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, num_pairs", [("resnet20", 19), ("vgg_small", 6), ("allconv", 8), ("resnet50", 53)]
)
def test_fast_logits_match_the_plain_model(name, num_pairs):
    size = 32
    model, variables = _model(name, size)
    x = _images(4, size)
    plain_fn = jax.jit(lambda v, x: model.apply(v, x)[0])
    plain = np.asarray(plain_fn(variables, x))
    pairs = fastpath.conv_batchnorm_pairs(model, variables, (size, size, 3))
    assert len(pairs) == num_pairs  # every conv + BN of the model (hand count)
    logits, fast_variables = fastpath.prepare(model, variables, (size, size, 3))
    fast = np.asarray(jax.jit(logits)(fast_variables, x))
    scale = np.abs(plain).max()
    np.testing.assert_allclose(fast / scale, plain / scale, atol=2e-5)
    np.testing.assert_array_equal(fast.argmax(-1), plain.argmax(-1))
    # The folded variables are valid for the unmodified model too (same compiled function).
    folded = fastpath.fold_batchnorm(variables, pairs)
    np.testing.assert_allclose(plain_fn(folded, x) / scale, plain / scale, atol=2e-5)
    # The rewrites did change the program: no BatchNorm arithmetic (rsqrt) is left.
    assert "rsqrt" not in jax.jit(logits).lower(fast_variables, x).as_text()
    assert "rsqrt" in plain_fn.lower(variables, x).as_text()


def test_fast_logits_batched_looped_and_vmapped_agree():
    model, variables = _model("resnet20", 16)
    logits, fast_variables = fastpath.prepare(model, variables, (16, 16, 3))
    x = _images(4, 16)
    batched = np.asarray(jax.jit(logits)(fast_variables, x))
    one = jax.jit(logits)
    looped = np.concatenate([np.asarray(one(fast_variables, x[i : i + 1])) for i in range(4)])
    vmapped = jax.jit(jax.vmap(logits, (None, 0)))(fast_variables, x.reshape(2, 2, 16, 16, 3))
    scale = np.abs(batched).max()
    np.testing.assert_allclose(looped / scale, batched / scale, atol=2e-5)
    np.testing.assert_allclose(
        np.asarray(vmapped).reshape(4, -1) / scale, batched / scale, atol=2e-5
    )


def test_fast_path_options_apply_separately():
    model, variables = _model("resnet20", 16)
    x = _images(3, 16)
    plain = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))
    for options in (fastpath.FastPath(fold_batchnorm=False), fastpath.FastPath(False, False)):
        logits, v = fastpath.prepare(model, variables, (16, 16, 3), options)
        assert v is variables  # nothing folded
        np.testing.assert_allclose(jax.jit(logits)(v, x), plain, rtol=1e-4, atol=1e-4)


# --- the evaluator with the fast path --------------------------------------------------------


def test_evaluator_compiles_once_with_the_fast_path():
    model, variables = _model("resnet20", 16)
    logits, fast_variables = fastpath.prepare(model, variables, (16, 16, 3))
    proto = protocols.build("crop", (20, 20, 3), sweep="diagonal", max_shift=2, crop_size=16)
    config = evaluator.EvalConfig(batch_size=4, chunk_size=2)
    ev = evaluator.Evaluator(logits, proto, config, variables=fast_variables)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, d, **kw: (
            compiles.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    rng = np.random.default_rng(0)
    batches = [(rng.random((4, 20, 20, 3), np.float32), rng.integers(0, 10, 4)) for _ in range(3)]
    first = ev.run(batches)
    assert len(compiles) == 1 and ev.compile_count == 1
    reversed_sweep = proto.with_sweep(proto.params[::-1], 0)  # new sweep values, same shape
    other_ev = evaluator.Evaluator(logits, reversed_sweep, config, variables=fast_variables)
    other = other_ev.run(batches[1:])  # new batches too
    ev.compiled((20, 20, 3))  # the memory / HLO view: cached, no compile
    assert len(compiles) == 1 and ev.compile_count == other_ev.compile_count == 1
    assert first.num_images == 12 and other.num_images == 8
    # The fast path gives the plain classifier's numbers.
    plain = evaluator.Evaluator(
        lambda v, x: model.apply(v, x)[0], proto, config, variables=variables
    )
    ref = plain.run(batches)
    np.testing.assert_array_equal(first.accuracy_per_param, ref.accuracy_per_param)
    for key in ("p_top1_change", "mac", "accuracy"):
        np.testing.assert_allclose(first.metrics[key], ref.metrics[key], rtol=1e-4, atol=1e-6)
    memory = ev.compiled((20, 20, 3)).memory_analysis()
    assert memory.temp_size_in_bytes > 0


@pytest.mark.parametrize(
    "per_image, batch, devices, num_params, budget, expected",
    [
        (1000, 10, 1, 81, 100_000, (10, 10)),  # 10 parameters of 10 images x 1000 bytes fit
        (1000, 10, 1, 4, 100_000, (4, 10)),  # never more than the sweep
        (1000, 80, 8, 81, 100_000, (10, 80)),  # the budget is per device: 10 images each
        (1000, 12, 1, 81, 7_000, (1, 6)),  # one parameter exceeds: the largest divisor <= 7
        (1000, 24, 2, 81, 7_000, (1, 12)),  # 6 images per device, 2 devices
        # Not even one image fits: MIN_IMAGES_PER_CALL (4) per device, or the largest divisor.
        (1000, 10, 1, 81, 500, (1, 2)),
        (1000, 16, 2, 81, 500, (1, 8)),
        (1000, 3, 1, 81, 500, (1, 3)),
        (0, 10, 1, 9, 1, (9, 10)),  # a model without temporaries: everything fits
    ],
)
def test_call_sizes_for_budget(per_image, batch, devices, num_params, budget, expected):
    sizes = evaluator.call_sizes_for_budget(per_image, batch, devices, num_params, budget)
    assert sizes == expected


# --- the torch twins (optional) --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, fields",
    [
        ("resnet20", 32, {}),
        ("resnet20", 32, {"padding": "circular"}),
        ("resnet20", 32, {"stride_mode": "full"}),
        ("resnet20", 32, {"stride_mode": "full", "padding": "circular"}),
        ("resnet50", 32, {}),
        ("efficientnet_lite0", 72, {}),  # odd sizes 9, 5, 3 inside: the pads of 72 px, not 224
    ],
)
def test_torch_twin_matches_flax(name, size, fields):
    torch = pytest.importorskip("torch")
    if name.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch")
    from benchmarks.studies.throughput import torch_twins

    model, variables = _model(name, size, **fields)
    x = _images(3, size)
    flax_logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))
    twin = torch_twins.from_flax(model, variables, size).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        images = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
        torch_logits = twin(images.contiguous(memory_format=torch.channels_last)).numpy()
    scale = np.abs(flax_logits).max()
    np.testing.assert_allclose(torch_logits / scale, flax_logits / scale, atol=1e-4)
    np.testing.assert_array_equal(torch_logits.argmax(-1), flax_logits.argmax(-1))


def test_torch_twin_rejects_models_without_one():
    pytest.importorskip("torch")
    from benchmarks.studies.throughput import torch_twins

    for model in (small.vgg_small(), small.resnet20(stride_mode="blur")):
        variables = classifiers.random_variables(model, (16, 16, 3))
        with pytest.raises(ValueError, match="model"):
            torch_twins.from_flax(model, variables)


# --- the benchmark, end to end ---------------------------------------------------------------


HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_benchmark_runs_end_to_end_and_writes_its_json(tmp_path):
    # With torch, (e) torch_compile has its own test below (its first call compiles for 10-30 s).
    variants = ["--variants=evaluator,bare_forward,python_loop,torch_eager"] if HAS_TORCH else []
    res = run_module(
        "benchmarks.throughput",
        *variants,
        "--protocols=resnet20",
        "--batch_size=8",
        "--crop_size=16",
        "--max_shift=1",
        "--repeats=1",
        "--scaling_base=2",
        "--scaling_factors=1,4",
        "--memory_budget_mb=1",
        "--device_counts=1,2",
        "--profile",
        f"--output_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((tmp_path / "throughput.json").read_text())
    assert set(record) >= {"config", "versions", "env", "load_average", "protocols"}
    if xla_defaults.defaults_enabled():  # the package's XLA CPU settings reached the run
        assert "ynn_fusion_type" in record["env"]["XLA_FLAGS"]
    r = record["protocols"]["resnet20"]
    variants = {"evaluator", "bare_forward", "python_loop"} | (
        {"torch_eager"} if "torch" in record["versions"] else set()
    )
    assert set(r["rates"]) == variants and all(v > 0 for v in r["rates"].values())
    assert set(r["ratios"]) == {f"evaluator/{k}" for k in variants - {"evaluator"}}
    assert record["peak_gflops"] > 0 and r["flops_per_image"] > 0
    assert set(r["gflops"]) == set(r["fraction_of_peak"]) == variants
    assert all(0 < f < 5 for f in r["fraction_of_peak"].values())
    assert r["num_transforms"] == 4 and r["batch_size"] == 8  # a 2 x 2 grid of shifts
    assert r["compile"]["evaluator"]["compile_count"] == 1
    assert r["compile"]["evaluator"]["compiles"] == 1 and r["compiles_during_rounds"] == 0
    assert r["agreement"]["evaluator_vs_loop_accuracy_max_diff"] == 0
    assert r["agreement"]["fast_vs_plain_top1_agreement"] == 1
    assert r["agreement"]["fast_vs_plain_max_rel_diff"] < 1e-4
    if "torch_eager" in variants:
        assert r["agreement"]["torch_vs_loop_top1_agreement"] == 1
    else:  # the skip path: one note, no torch variant
        assert r["torch_note"] == "torch is not installed: (d) and (e) skipped"
    scaling = r["scaling_transforms"]
    assert [s["num_transforms"] for s in scaling] == [2, 8]
    assert all(s["compiles"] == 1 for s in scaling)  # one compile per sweep
    peaks = [s["peak_bytes"] for s in scaling]
    assert max(peaks) < 1.2 * min(peaks)  # flat in the number of transforms
    devices = {d["devices"]: d for d in r["scaling_devices"]}
    assert set(devices) == {1, 2} and all(d["compile_count"] == 1 for d in devices.values())
    assert r["profile"]["by_category"] and r["profile"]["total_op_ms"] > 0
    assert "| evaluator |" in res.stdout and "load average" in res.stdout


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_compile_variant_agrees_with_the_others(tmp_path):
    res = run_module(
        "benchmarks.throughput",
        "--variants=evaluator,python_loop,torch_compile",
        "--protocols=resnet20",
        "--batch_size=8",
        "--crop_size=16",
        "--max_shift=1",
        "--repeats=1",
        "--noscaling",
        "--device_counts=",
        f"--output_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "throughput.json").read_text())["protocols"]["resnet20"]
    assert "torch_compile_note" not in r, r.get("torch_compile_note")
    assert set(r["ratios"]) == {"evaluator/python_loop", "evaluator/torch_compile"}
    assert r["agreement"]["torch_compile_vs_loop_top1_agreement"] == 1
    assert r["agreement"]["evaluator_vs_torch_compile_accuracy_max_diff"] == 0
    c = r["compile"]["torch_compile"]
    assert c["mode"] == "default" and c["compiles"] == 1 and c["first_call_s"] > 0


def test_bad_flags_fail_in_one_line():
    res = run_module("benchmarks.throughput", "--protocols=resnet21")
    assert fails_with_one_line(res, "--protocols=resnet21")
