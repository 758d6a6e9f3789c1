"""The evaluator: agreement with a brute-force loop, one compile, chunking, sharding, resume."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.core import evaluator, metrics, protocols

K = 6
H = 12


def _data(n=21, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, H, H, 1), dtype=np.float32)
    labels = rng.integers(0, K, n).astype(np.int32)
    return images, labels


def _weights(seed=1):
    # Small enough that tanh does not saturate: no two logits tie exactly, so the top-5 sets
    # do not depend on float rounding (with * 0.5 they did, under other call sizes).
    return jax.random.normal(jax.random.key(seed), (H * H, K)) * 0.1


def _apply(w, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w) * 4.0


def _batches(images, labels, batch_size):
    return [
        (images[i : i + batch_size], labels[i : i + batch_size])
        for i in range(0, len(labels), batch_size)
    ]


PROTO = protocols.build("circular", (H, H, 1), max_shift=2)  # 5 diagonal shifts


def _reference(images, labels, w, cfg, proto=PROTO):
    """Brute force: a Python loop over the sweep, then the metrics on all images at once."""
    probs = np.stack(
        [
            np.asarray(jax.nn.softmax(_apply(w, jax.vmap(proto.transform, (0, None))(images, p))))
            for p in proto.params
        ]
    )  # [T, N, K]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(
        jnp.arange(len(labels))
    )
    pair_keys, k_keys, ref_keys = jax.vmap(lambda k: jax.random.split(k, 3), out_axes=1)(keys)
    pairs = metrics.draw_pairs(pair_keys, len(proto.params), cfg.num_pairs)
    draws = metrics.draw_indices(k_keys, len(proto.params), (cfg.worst_of_k,))
    ref_draws = metrics.draw_indices(ref_keys, len(proto.params), (cfg.num_pairs,))
    ref = proto.reference_index
    top = probs.argmax(-1)
    return {
        "p_top1_change": float(np.mean(top[1:] != top[:-1])),
        "mac": float(np.mean(metrics.mean_absolute_change(probs, ref_index=ref))),
        "consistency": float(np.mean(metrics.consistency(probs, pairs))),
        "consistency_vs_reference": float(
            np.mean(metrics.consistency_vs_reference(probs, ref_draws, ref))
        ),
        "accuracy": float(np.mean(top == labels)),
        "accuracy_reference": float(np.mean(top[ref] == labels)),
        "worst_case_accuracy": float(np.mean(np.all(top == labels, axis=0))),
        "worst_of_k_accuracy": float(np.mean(metrics.worst_of_k_correct(probs, labels, draws))),
        "top5_distance": float(np.mean(metrics.top5_distance(probs))),
        "flip_probability": float(np.mean(top[1:] != top[:-1])),
        "accuracy_per_param": np.mean(top == labels, axis=1),
        "flip_rate_per_pair": np.mean(top[1:] != top[:-1], axis=1),
        "curves": probs[:, np.arange(len(labels)), labels],
    }


def _run(
    images, labels, w, batch_size=8, cfg=evaluator.EvalConfig(chunk_size=2), apply=_apply, **kw
):
    cfg = dataclasses.replace(cfg, batch_size=batch_size)
    ev = evaluator.Evaluator(apply, PROTO, cfg, variables=w)
    return ev, ev.run(_batches(images, labels, batch_size), **kw)


def test_matches_brute_force_loop():
    images, labels = _data()
    w = _weights()
    cfg = evaluator.EvalConfig(chunk_size=2, num_pairs=3, worst_of_k=4, num_curves=5)
    _, res = _run(images, labels, w, cfg=cfg)
    ref = _reference(images, labels, w, cfg)
    assert res.num_images == 21 and res.num_batches == 3
    for name in (
        "p_top1_change",
        "mac",
        "consistency",
        "consistency_vs_reference",
        "accuracy",
        "accuracy_reference",
        "worst_case_accuracy",
        "worst_of_k_accuracy",
        "top5_distance",
        "flip_probability",
    ):
        np.testing.assert_allclose(res.metrics[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(res.accuracy_per_param, ref["accuracy_per_param"], atol=1e-6)
    np.testing.assert_allclose(res.flip_rate_per_pair, ref["flip_rate_per_pair"], atol=1e-6)
    np.testing.assert_allclose(res.curves, ref["curves"][:, :5], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.curve_labels, labels[:5])
    # The metrics are not degenerate on this data, so the comparison can fail.
    assert 0 < res.metrics["p_top1_change"] < 1 and res.metrics["mac"] > 0


def test_one_compile_for_any_batches_and_parameter_values():
    images, labels = _data(n=29)
    w = _weights()
    own = lambda v, x: _apply(v, x)  # noqa: E731  (a function no other test compiled)
    ev, res = _run(images, labels, w, apply=own)  # 4 batches, the last one short
    assert res.compile_count == 1
    other = PROTO.params[::-1] * 0 + np.array([[1.0, -2.0]])  # new values, same shape
    moved = evaluator.Evaluator(own, PROTO.with_sweep(other, 0), ev.config, variables=w)
    moved.run(_batches(images, labels, 8))
    ev.run(_batches(images[:8], labels[:8], 8))
    # A protocol built again with the same options, and another evaluator: no new compile.
    again = protocols.build("circular", (H, H, 1), max_shift=2)
    evaluator.Evaluator(own, again, ev.config, variables=w).run(_batches(images, labels, 8))
    assert ev.compile_count == moved.compile_count == 1


@pytest.mark.parametrize(
    "chunk_size, images_per_call",
    [(1, None), (3, None), (5, None), (8, None), (2, 4), (3, 2), (1, 1)],
)
def test_results_do_not_depend_on_call_sizes(chunk_size, images_per_call):
    images, labels = _data()
    w = _weights()
    _, base = _run(images, labels, w, cfg=evaluator.EvalConfig(chunk_size=2))
    cfg = evaluator.EvalConfig(chunk_size=chunk_size, images_per_call=images_per_call)
    _, res = _run(images, labels, w, cfg=cfg)
    for name, value in base.metrics.items():
        np.testing.assert_allclose(res.metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # Per-image outputs keep the images' order (the first images' curves).
    np.testing.assert_allclose(res.curves, base.curves, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.accuracy_per_param, base.accuracy_per_param, atol=1e-6)


def test_results_do_not_depend_on_batch_size():
    images, labels = _data()
    w = _weights()
    _, a = _run(images, labels, w, batch_size=4)
    _, b = _run(images, labels, w, batch_size=16)
    for name, value in a.metrics.items():
        np.testing.assert_allclose(b.metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_nan_logits_raise_naming_the_batch():
    images, labels = _data(n=20)
    images[13, 0, 0, 0] = np.nan  # batch 1 (images 8..15)
    with pytest.raises(FloatingPointError, match="batch 1 "):
        _run(images, labels, _weights())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        evaluator.EvalConfig(chunk_size=0)
    with pytest.raises(ValueError, match="images_per_call"):
        evaluator.EvalConfig(images_per_call=0)
    with pytest.raises(ValueError, match="images_per_call=3 must divide batch_size=8"):
        evaluator.Evaluator(
            _apply,
            PROTO,
            evaluator.EvalConfig(batch_size=8, images_per_call=3),
            variables=_weights(),
        )
    images, labels = _data()
    with pytest.raises(ValueError, match="reference_index"):
        protocols.custom(_stamp, PROTO.params, (H, H, 1), reference_index=99)
    with pytest.raises(ValueError, match="params"):
        protocols.custom(_stamp, PROTO.params[:1], (H, H, 1))
    ev = evaluator.Evaluator(
        _apply, PROTO, evaluator.EvalConfig(batch_size=8), variables=_weights()
    )
    with pytest.raises(ValueError, match="exceeds"):
        ev.run([(images[:9], labels[:9])])


def test_interrupted_run_resumes_without_redoing_batches(tmp_path):
    images, labels = _data(n=40)
    w = _weights()
    state = str(tmp_path / "state.npz")
    _, full = _run(images, labels, w)
    read = []

    def batches_from(start, fail_at=None):
        for b, batch in enumerate(_batches(images, labels, 8)[start:], start=start):
            if b == fail_at:
                raise KeyboardInterrupt
            read.append(b)
            yield batch

    ev = evaluator.Evaluator(
        _apply, PROTO, evaluator.EvalConfig(batch_size=8, chunk_size=2), variables=w
    )
    with pytest.raises(KeyboardInterrupt):
        ev.run(lambda s: batches_from(s, fail_at=4), state_path=state, save_every=1)
    read.clear()
    res = ev.run(batches_from, state_path=state)
    assert read == [3, 4]  # batch 3 was evaluated but its state not yet saved when interrupted
    for name, value in full.metrics.items():
        np.testing.assert_allclose(res.metrics[name], value, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(res.curves, full.curves)
    # A different sweep does not pick up this state.
    read.clear()
    other = PROTO.with_sweep(PROTO.params * 0 + 1, 0)
    evaluator.Evaluator(_apply, other, ev.config, variables=w).run(batches_from, state_path=state)
    assert read == [0, 1, 2, 3, 4]


_EIGHT_DEVICES = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
import test_evaluate as t
from benchmarks.core import evaluator
assert jax.device_count() == 8, jax.devices()
images, labels = t._data(n=37)
_, res = t._run(images, labels, t._weights(), batch_size=16)
# Two model calls of 8 images (one per device) per chunk give the same numbers.
cfg = evaluator.EvalConfig(chunk_size=2, images_per_call=8)
_, grouped = t._run(images, labels, t._weights(), batch_size=16, cfg=cfg)
try:
    evaluator.Evaluator(t._apply, t.PROTO, evaluator.EvalConfig(batch_size=12))
    bad = "no error"
except ValueError as e:
    bad = str(e)
print(json.dumps({"metrics": res.metrics, "grouped": grouped.metrics,
                  "acc": res.accuracy_per_param.tolist(), "bad": bad}))
"""


def test_eight_simulated_devices_give_the_same_numbers():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    images, labels = _data(n=37)
    _, res = _run(images, labels, _weights(), batch_size=16)
    for name, value in res.metrics.items():
        np.testing.assert_allclose(got["metrics"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["grouped"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(got["acc"], res.accuracy_per_param, atol=1e-6)
    assert "batch_size=12" in got["bad"] and "(8)" in got["bad"]


# A 3x3 grid of shifts -1..1 whose top-1 class is set by hand (rows dy, columns dx):
#   0 0 1
#   0 0 1
#   2 2 2
GRID_CLASSES = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
GRID = protocols.build("circular", (H, H, 1), sweep="grid", max_shift=1)


def _stamp(image, param):
    """The image with its sweep parameter written into two pixels (read back by _by_hand)."""
    return image.at[0, 0, 0].set(param[0]).at[0, 1, 0].set(param[1])


def _by_hand(x):
    dy, dx = (jnp.round(x[:, 0, i, 0]).astype(jnp.int32) + 1 for i in range(2))
    return 5.0 * jax.nn.one_hot(jnp.asarray(GRID_CLASSES)[dy, dx], K)


def _grid_run(proto, cfg=evaluator.EvalConfig(chunk_size=3)):
    images, labels = _data(n=10)
    stamped = dataclasses.replace(proto, transform=_stamp)
    ev = evaluator.Evaluator(_by_hand, stamped, dataclasses.replace(cfg, batch_size=8))
    return ev.run(_batches(images, labels, 8))


def test_p_top1_change_on_a_grid_by_hand():
    res = _grid_run(GRID)
    # Horizontal steps: 2 of 6 change the class; vertical steps: 3 of 6. The flattened
    # row-major order would give 4 of 8 "steps" (0.5) instead.
    np.testing.assert_allclose(res.metrics["p_top1_change"], 5 / 12, rtol=1e-6)
    np.testing.assert_allclose(res.metrics["flip_probability"], 5 / 12, rtol=1e-6)
    assert res.pairs.shape == (12, 2) and res.flip_rate_per_pair.shape == (12,)
    top = GRID_CLASSES.ravel()
    np.testing.assert_allclose(res.flip_rate_per_pair, top[res.pairs[:, 0]] != top[res.pairs[:, 1]])
    # d = 2 (ImageNet-P difficulty): rows (0, 2): 2 of 3 change; columns (0, 2): 3 of 3.
    far = _grid_run(GRID, evaluator.EvalConfig(chunk_size=3, flip_distance=2))
    np.testing.assert_allclose(far.metrics["flip_probability"], 5 / 6, rtol=1e-6)
    np.testing.assert_allclose(far.metrics["p_top1_change"], 5 / 12, rtol=1e-6)


def test_random_sweep_reports_no_neighbour_metrics():
    proto = protocols.build("circular", (H, H, 1), sweep="random", num_random=6, max_shift=1)
    res = _grid_run(proto)
    for name in ("p_top1_change", "mac", "mac_label", "flip_probability", "top5_distance"):
        assert name not in res.metrics and name not in res.stderr, name
    assert {"consistency", "accuracy", "worst_case_accuracy"} <= set(res.metrics)
    assert res.pairs.shape == (0, 2) and res.flip_rate_per_pair.shape == (0,)


def test_stderr_mac_label_and_flip_probability_against_numpy():
    images, labels = _data(n=37)
    w = _weights()
    cfg = evaluator.EvalConfig(batch_size=8, chunk_size=2, flip_distance=3)
    res = evaluator.Evaluator(_apply, PROTO, cfg, variables=w).run(_batches(images, labels, 8))
    probs = np.stack(
        [
            np.asarray(jax.nn.softmax(_apply(w, jax.vmap(PROTO.transform, (0, None))(images, p))))
            for p in PROTO.params
        ]
    ).astype(np.float64)  # [T, N, K]
    top = probs.argmax(-1)
    label_prob = probs[:, np.arange(len(labels)), labels]
    per_image = {
        "p_top1_change": np.mean(top[1:] != top[:-1], axis=0),
        "mac_label": np.mean(np.abs(label_prob[1:] - label_prob[:-1]), axis=0),
        "flip_probability": np.mean(top[3:] != top[:-3], axis=0),
        "accuracy": np.mean(top == labels, axis=0),
    }
    n = len(labels)
    for name, values in per_image.items():
        np.testing.assert_allclose(res.metrics[name], values.mean(), rtol=1e-5, err_msg=name)
        want = values.std(ddof=1) / np.sqrt(n)
        np.testing.assert_allclose(res.stderr[name], want, rtol=1e-4, atol=1e-7, err_msg=name)
    assert res.stderr["flip_probability"] > 0 and res.metrics["mac_label"] > 0
    with pytest.raises(ValueError, match="flip_distance=5"):
        evaluator.Evaluator(
            _apply, PROTO, evaluator.EvalConfig(batch_size=8, flip_distance=5), variables=w
        )


def test_state_of_other_weights_is_not_resumed(tmp_path):
    images, labels = _data(n=24)
    state = str(tmp_path / "eval_state.npz")
    first = _run(images, labels, _weights(1), state_path=state)[1]
    # Same sweep, config and batch size, other weights: the saved state is not reused.
    second = _run(images, labels, _weights(2), state_path=state)[1]
    fresh = _run(images, labels, _weights(2))[1]
    assert second.metrics == fresh.metrics and second.metrics != first.metrics
    assert (
        second.identity["evaluation"]["weights_sha256"]
        != first.identity["evaluation"]["weights_sha256"]
    )
    # A caller's identity (data, protocol) takes part too.
    other = _run(images, labels, _weights(2), state_path=state, identity={"data": "other"})[1]
    assert other.num_batches == 3 and other.identity["data"] == "other"
    # The state is npz without pickles.
    with np.load(state, allow_pickle=False) as f:
        assert int(f["num_batches"]) == 3 and "totals/count" in f.files


def test_default_call_sizes_come_from_the_memory_budget():
    images, labels = _data()
    w = _weights()
    cfg = evaluator.EvalConfig(batch_size=8)  # the other defaults
    own = lambda v, x: _apply(v, x)  # noqa: E731  (a function no other test compiled)
    ev = evaluator.Evaluator(own, PROTO, cfg, variables=w)
    res = ev.run(_batches(images, labels, 8))
    per_image = ev.bytes_per_image((H, H, 1))
    budget = evaluator.DEFAULT_MEMORY_BUDGET_MB << 20
    want = evaluator.call_sizes_for_budget(per_image, 8, 1, len(PROTO.params), budget)
    assert res.call_sizes == want == ev.call_sizes((H, H, 1))
    _, explicit = _run(images, labels, w, cfg=evaluator.EvalConfig(chunk_size=1))
    for name, value in explicit.metrics.items():
        np.testing.assert_allclose(res.metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert res.compile_count == 1


# --- what the evaluator is handed is checked before it computes ------------------------------


@pytest.mark.parametrize(
    "batch, message",
    [
        (
            (np.zeros((8, 10, 10, 1), np.float32), np.zeros(8, np.int32)),
            r"input_shape=\(12, 12, 1\)",
        ),
        ((np.zeros((8, H, H, 1), np.uint8), np.zeros(8, np.int32)), "uint8"),
        ((np.full((8, H, H, 1), 255.0, np.float32), np.zeros(8, np.int32)), r"\[255, 255\]"),
        ((np.zeros((8, H, H, 1), np.float32), np.zeros(8, np.float32)), "integers"),
        ((np.zeros((8, H, H, 1), np.float32),), "pairs"),
    ],
)
def test_bad_batches_are_refused_before_any_compute(batch, message):
    calls = []
    ev = evaluator.Evaluator(
        lambda x: calls.append(1) or jnp.zeros((x.shape[0], K)),
        PROTO,
        evaluator.EvalConfig(batch_size=8, chunk_size=5),
    )
    with pytest.raises(ValueError, match=message):
        ev.run([batch])
    assert not calls  # refused before tracing the classifier


def test_uint8_images_are_converted_when_asked():
    images, labels = _data(n=8)
    w = _weights()
    as_uint8 = np.round(images * 255).astype(np.uint8)
    cfg = evaluator.EvalConfig(batch_size=8, chunk_size=5, convert_uint8=True)
    got = evaluator.Evaluator(_apply, PROTO, cfg, variables=w).run([(as_uint8, labels)])
    cfg = dataclasses.replace(cfg, convert_uint8=False)
    want = evaluator.Evaluator(_apply, PROTO, cfg, variables=w).run(
        [(as_uint8.astype(np.float32) / 255, labels)]
    )
    assert got.metrics == want.metrics


def test_probabilities_are_refused_as_logits_and_taken_when_declared():
    images, labels = _data(n=16)
    w = _weights()
    probs_fn = lambda v, x: jax.nn.softmax(_apply(v, x))  # noqa: E731
    cfg = evaluator.EvalConfig(batch_size=8, chunk_size=5)
    with pytest.raises(ValueError, match="look like probabilities"):
        evaluator.Evaluator(probs_fn, PROTO, cfg, variables=w).run(_batches(images, labels, 8))
    declared = dataclasses.replace(cfg, outputs="probabilities")
    got = evaluator.Evaluator(probs_fn, PROTO, declared, variables=w).run(
        _batches(images, labels, 8)
    )
    want = evaluator.Evaluator(_apply, PROTO, cfg, variables=w).run(_batches(images, labels, 8))
    for name, value in want.metrics.items():
        np.testing.assert_allclose(got.metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_model_in_training_mode_gets_a_clear_error():
    """flax's examples put BatchNorm(axis_name='batch') in their ResNets: in training mode it
    reduces over a named axis that plain jit does not have."""

    class TrainModeNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.BatchNorm(use_running_average=not train, axis_name="batch")(x)
            return nn.Dense(K)(x.reshape(x.shape[0], -1))

    model = TrainModeNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, H, H, 1)), train=False)
    images, labels = _data(n=8)
    cfg = evaluator.EvalConfig(batch_size=8, chunk_size=5)

    def training_mode(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])[0]

    with pytest.raises(ValueError, match="train=False"):
        evaluator.Evaluator(training_mode, PROTO, cfg, variables=variables).run([(images, labels)])
    inference = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    res = evaluator.Evaluator(inference, PROTO, cfg, variables=variables).run([(images, labels)])
    assert res.num_images == 8


def test_repeated_evaluate_calls_reuse_the_compiled_function():
    images, labels = _data(n=16)
    w = _weights()
    own = lambda v, x: _apply(v, x)  # noqa: E731  (a function no other test compiled)
    cfg = evaluator.EvalConfig(batch_size=8, chunk_size=5)
    first = evaluator.evaluate(own, _batches(images, labels, 8), PROTO, cfg, variables=w)
    # The same model, a protocol built again with the same options, the same shapes.
    again = protocols.build("circular", (H, H, 1), max_shift=2)
    second = evaluator.evaluate(own, _batches(images, labels, 8), again, cfg, variables=w)
    assert first.compile_count == second.compile_count == 1
    assert first.metrics == second.metrics
