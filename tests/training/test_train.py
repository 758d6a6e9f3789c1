"""Tests for benchmarks.data.augment and benchmarks.training.train: numpy references, hand-worked optimizer
steps, determinism, honest resume-from-disk after an interrupt (in-process and SIGKILL)."""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from entry_point import ROOT
from tiny_net import TinyNet

from benchmarks.data import augment
from benchmarks.training.batches import batch_indices
from benchmarks.training.checkpoint import restore_variables
from benchmarks.training.config import TrainConfig, steps_for_epochs
from benchmarks.training.optimizer import make_optimizer, make_schedule
from benchmarks.training.train import evaluate_accuracy, train


def quadrant_data(n=200, size=8, seed=0):
    """Class q lights up quadrant q of a noisy image: learnable, labels not random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.uniform(0, 0.3, (n, size, size, 1)).astype(np.float32)
    half = size // 2
    for i, q in enumerate(labels):
        images[i, (q // 2) * half : (q // 2 + 1) * half, (q % 2) * half : (q % 2 + 1) * half] += 0.7
    return images, labels


DATA = quadrant_data()
FAST = TrainConfig(
    optimizer="adam",
    learning_rate=0.03,
    schedule="constant",
    batch_size=20,
    num_steps=9,
    log_every=3,
    checkpoint_every=3,
)


def tree_equal(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# ---------------------------------------------------------------------------------------------
# Augmentation


def ref_shift(image, dy, dx):
    """np.roll, then zero the rows/columns that wrapped around."""
    out = np.roll(image, (dy, dx), axis=(0, 1))
    if dy > 0:
        out[:dy] = 0
    elif dy < 0:
        out[dy:] = 0
    if dx > 0:
        out[:, :dx] = 0
    elif dx < 0:
        out[:, dx:] = 0
    return out


@pytest.mark.parametrize("dy,dx", [(0, 0), (1, 0), (0, -1), (2, -2), (-2, 1), (-1, -1)])
def test_shift_image_matches_roll_with_zero_fill(dy, dx):
    image = np.random.default_rng(1).uniform(size=(5, 6, 2)).astype(np.float32)
    shift_fn = jax.jit(augment.shift_image, static_argnums=2)
    np.testing.assert_array_equal(shift_fn(image, np.array([dy, dx]), 2), ref_shift(image, dy, dx))


def test_shift_image_vmap_matches_loop():
    images = np.random.default_rng(2).uniform(size=(4, 5, 5, 1)).astype(np.float32)
    shifts = np.array([[1, 1], [-1, 0], [0, 0], [1, -1]])
    batched = jax.vmap(lambda im, s: augment.shift_image(im, s, 1))(images, shifts)
    for im, s, out in zip(images, shifts, batched):
        np.testing.assert_array_equal(out, ref_shift(im, *s))


def test_embed_image_places_image_in_zero_canvas():
    image = np.arange(1, 13, dtype=np.float32).reshape(2, 3, 2)
    out = np.asarray(jax.jit(augment.embed_image, static_argnums=2)(image, np.array([3, 1]), 5))
    expected = np.zeros((5, 5, 2), np.float32)
    expected[3:5, 1:4] = image
    np.testing.assert_array_equal(out, expected)


def test_random_embed_keeps_whole_image_inside_canvas():
    image = np.random.default_rng(3).uniform(0.5, 1, size=(4, 4, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 40)
    offsets = set()
    for out in np.asarray(jax.jit(jax.vmap(lambda k: augment.random_embed(k, image, 7)))(keys)):
        ys, xs = np.nonzero(out[..., 0])
        oy, ox = ys.min(), xs.min()
        np.testing.assert_array_equal(out[oy : oy + 4, ox : ox + 4], image)
        assert np.count_nonzero(out) == image.size
        offsets.add((oy, ox))
    assert len(offsets) > 5 and all(0 <= o <= 3 for off in offsets for o in off)


def test_random_shift_and_flip_draw_from_their_sets():
    image = np.random.default_rng(4).uniform(size=(6, 6, 1)).astype(np.float32)
    candidates = {(dy, dx): ref_shift(image, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    keys = jax.random.split(jax.random.PRNGKey(1), 60)
    shifted = jax.jit(jax.vmap(lambda k: augment.random_shift(k, image, 2)))(keys)
    flipped = jax.jit(jax.vmap(lambda k: augment.random_flip(k, image)))(keys)
    seen = set()
    for out in np.asarray(shifted):
        match = [s for s, ref in candidates.items() if np.array_equal(out, ref)]
        assert match
        seen.update(match)
    assert len(seen) > 12
    is_flipped = [np.array_equal(out, image[:, ::-1]) for out in np.asarray(flipped)]
    assert all(f or np.array_equal(out, image) for f, out in zip(is_flipped, np.asarray(flipped)))
    assert 10 < sum(is_flipped) < 50


@pytest.mark.parametrize(
    "kind,kwargs",
    [("crop", {"max_shift": 1}), ("embed", {"canvas_size": 9}), ("flip", {}), ("none", {})],
)
def test_augment_batch_is_per_image_and_matches_loop(kind, kwargs):
    images = np.random.default_rng(5).uniform(size=(6, 6, 6, 1)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    batched = np.asarray(
        jax.jit(lambda k, x: augment.augment_batch(k, x, kind, **kwargs))(key, images)
    )
    per_image = {
        "crop": lambda k, im: augment.random_shift(k, im, 1),
        "embed": lambda k, im: augment.random_embed(k, im, 9),
        "flip": augment.random_flip,
        "none": lambda k, im: im,
    }[kind]
    looped = [per_image(k, im) for k, im in zip(jax.random.split(key, 6), images)]
    np.testing.assert_array_equal(batched, np.stack(looped))
    if kind in ("crop", "embed"):  # independent draws: not all images moved the same way
        moved = [np.argwhere(b[..., 0] == im[2, 2, 0])[0] for b, im in zip(batched, images)]
        assert len({tuple(m) for m in moved}) > 1


def test_augment_bad_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        augment.augment_batch(jax.random.PRNGKey(0), np.zeros((1, 4, 4, 1)), "rotate")
    with pytest.raises(ValueError, match="canvas_size"):
        augment.embed_image(np.zeros((4, 4, 1)), np.array([0, 0]), 3)
    with pytest.raises(ValueError, match="max_shift"):
        augment.shift_image(np.zeros((4, 4, 1)), np.array([0, 0]), -1)


# ---------------------------------------------------------------------------------------------
# Config, schedule, optimizer, data order


@pytest.mark.parametrize(
    "field,value",
    [
        ("optimizer", "rmsprop"),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("momentum", 1.0),
        ("schedule", "step"),
        ("weight_decay", -1e-4),
        ("batch_size", 0),
        ("batch_size", 8.0),
        ("num_steps", 0),
        ("augmentation", "rotate"),
        ("max_shift", 2),
        ("canvas_size", 40),
        ("warmup_steps", 5),
        ("seed", -1),
        ("log_every", 0),
        ("checkpoint_every", True),
    ],
)
def test_config_rejects_bad_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"augmentation": "crop"}, "max_shift"),
        ({"augmentation": "embed"}, "canvas_size"),
        ({"schedule": "warmup_cosine"}, "warmup_steps"),
        ({"schedule": "warmup_cosine", "warmup_steps": 10, "num_steps": 10}, "warmup_steps"),
    ],
)
def test_config_requires_dependent_field(kwargs, field):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**kwargs)


def test_steps_for_epochs():
    assert steps_for_epochs(1, 200, 20) == 10
    assert steps_for_epochs(2.5, 100, 32) == 8  # ceil(250 / 32)
    with pytest.raises(ValueError, match="epochs"):
        steps_for_epochs(0, 100, 32)


def test_schedules_hand_values():
    cos = make_schedule(TrainConfig(learning_rate=0.4, schedule="cosine", num_steps=100))
    np.testing.assert_allclose([cos(0), cos(50), cos(100)], [0.4, 0.2, 0.0], atol=1e-7)
    warm = make_schedule(
        TrainConfig(learning_rate=0.4, schedule="warmup_cosine", warmup_steps=10, num_steps=110)
    )
    np.testing.assert_allclose(
        [warm(0), warm(5), warm(10), warm(60), warm(110)], [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-7
    )
    const = make_schedule(TrainConfig(learning_rate=0.4, schedule="constant"))
    np.testing.assert_allclose([const(0), const(999)], [0.4, 0.4])


def run_optimizer(config, grads_seq, params):
    tx = make_optimizer(config)
    state = tx.init(params)
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


def test_sgd_momentum_and_weight_decay_hand_steps():
    params = {"kernel": np.full((2, 2), 1.0, np.float32), "bias": np.array([1.0], np.float32)}
    g = {"kernel": np.full((2, 2), 0.5, np.float32), "bias": np.array([0.5], np.float32)}
    base = {"learning_rate": 0.1, "schedule": "constant"}
    sgd = run_optimizer(TrainConfig(optimizer="sgd", **base), [g, g], params)
    np.testing.assert_allclose(sgd["kernel"], 1 - 2 * 0.1 * 0.5)
    # heavy ball: v1 = g, v2 = 0.9 g + g -> p = 1 - 0.1 (0.5 + 0.95)
    mom = run_optimizer(TrainConfig(optimizer="momentum", momentum=0.9, **base), [g, g], params)
    np.testing.assert_allclose(mom["kernel"], 1 - 0.1 * (0.5 + 0.95), rtol=1e-6)
    # L2 on kernels only: kernel grad 0.5 + 0.2 * 1.0, bias grad 0.5
    wd = run_optimizer(TrainConfig(optimizer="sgd", weight_decay=0.2, **base), [g], params)
    np.testing.assert_allclose(wd["kernel"], 1 - 0.1 * 0.7, rtol=1e-6)
    np.testing.assert_allclose(wd["bias"], 1 - 0.1 * 0.5, rtol=1e-6)
    # AdamW: first step moves every coordinate by lr (sign of g), decoupled decay on kernels only
    adamw = run_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.2, **base), [g], params)
    np.testing.assert_allclose(adamw["kernel"], 1 - 0.1 * (1 + 0.2 * 1.0), rtol=1e-5)
    np.testing.assert_allclose(adamw["bias"], 1 - 0.1, rtol=1e-5)


def test_batch_indices_pure_and_epoch_permutation():
    n, b = 50, 8  # 6 batches per epoch, 2 examples skipped each epoch
    epoch0 = np.concatenate([batch_indices(3, s, n, b) for s in range(6)])
    assert len(set(epoch0.tolist())) == 48 and epoch0.min() >= 0 and epoch0.max() < n
    np.testing.assert_array_equal(batch_indices(3, 4, n, b), epoch0[32:40])
    epoch1 = np.concatenate([batch_indices(3, s, n, b) for s in range(6, 12)])
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(batch_indices(4, 0, n, b), epoch0[:8])
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(0, 0, 5, 6)
    with pytest.raises(ValueError, match="step must be >= 0"):
        batch_indices(0, -1, 5, 2)


# ---------------------------------------------------------------------------------------------
# Training

RESUME = dataclasses.replace(
    FAST, optimizer="momentum", learning_rate=0.05, schedule="cosine", weight_decay=1e-3
)
VARIANTS = {
    "bn-crop": (True, {"augmentation": "crop", "max_shift": 1}),
    "nobn-embed": (False, {"augmentation": "embed", "canvas_size": 11}),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """name -> (model, config, workdir, result) of an uninterrupted run, trained once per module."""
    runs = {}

    def get(name):
        if name not in runs:
            batch_norm, extra = VARIANTS[name]
            model, config = TinyNet(batch_norm), dataclasses.replace(RESUME, **extra)
            workdir = str(tmp_path_factory.mktemp(name))
            runs[name] = (model, config, workdir, train(model, *DATA, config, workdir))
        return runs[name]

    return get


def test_loss_decreases_and_learns(tmp_path, caplog):
    images, labels = DATA
    config = dataclasses.replace(FAST, num_steps=40, log_every=10, checkpoint_every=40)
    with caplog.at_level(logging.INFO):
        result = train(TinyNet(), images, labels, config, str(tmp_path))
    losses = [h["loss"] for h in result.history]
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]
    assert result.steps == 40 and result.final_loss == losses[-1] and result.wall_time_s > 0
    assert losses[-1] < 0.1 * np.log(4) and losses[-1] < losses[0]
    assert evaluate_accuracy(TinyNet(), result.variables, images, labels, 64) > 0.9
    assert any(
        "step 20/40" in r.getMessage() and "steps/s" in r.getMessage() and "ETA" in r.getMessage()
        for r in caplog.records
    )


def test_evaluate_accuracy_matches_direct_argmax():
    images, labels = DATA
    images, labels = images[:37], labels[:37]
    model = TinyNet(batch_norm=False)
    variables = model.init(jax.random.PRNGKey(0), images[:1])
    logits, _ = model.apply(variables, images)
    expected = np.mean(np.argmax(logits, -1) == labels)
    assert 0 < expected < 1
    for batch_size in (1, 10, 37, 64):  # the padded rows of the last batch must not count
        assert evaluate_accuracy(model, variables, images, labels, batch_size) == pytest.approx(
            expected
        )


def test_same_seed_same_params_other_seed_differs(tmp_path, reference):
    model, config, _, ref = reference("bn-crop")
    again = train(model, *DATA, config, str(tmp_path / "again"))
    other = train(model, *DATA, dataclasses.replace(config, seed=1), str(tmp_path / "other"))
    assert tree_equal(again.variables, ref.variables) and again.history == ref.history
    assert set(ref.variables) == {"params", "batch_stats"}
    for a, b in zip(jax.tree.leaves(ref.variables), jax.tree.leaves(other.variables)):
        assert not np.array_equal(a, b)


class Interrupt(KeyboardInterrupt):
    pass


def stop_at(step, record):
    def on_step(done):
        record.append(done)
        if done == step:
            raise Interrupt

    return on_step


@pytest.mark.parametrize("name", list(VARIANTS))
def test_interrupted_run_resumes_to_identical_result(tmp_path, reference, name):
    model, config, _, full = reference(name)
    steps_first, steps_second = [], []
    with pytest.raises(Interrupt):
        train(model, *DATA, config, str(tmp_path), on_step=stop_at(8, steps_first))
    assert steps_first == list(range(1, 9))
    assert sorted(os.listdir(tmp_path)) == ["3", "6"]  # on disk: steps 3 and 6, not 8
    resumed = train(model, *DATA, config, str(tmp_path), on_step=steps_second.append)
    assert steps_second == [7, 8, 9]  # restarted from the step-6 checkpoint
    assert resumed.steps == full.steps == 9
    assert tree_equal(resumed.variables, full.variables)
    assert resumed.history == full.history and resumed.final_loss == full.final_loss
    assert sorted(os.listdir(tmp_path)) == ["6", "9"]  # keeps the latest 2


def test_finished_run_is_returned_not_retrained(reference):
    model, config, workdir, first = reference("nobn-embed")
    calls = []
    again = train(model, *DATA, config, workdir, on_step=calls.append)
    assert calls == [] and again.steps == config.num_steps
    assert tree_equal(again.variables, first.variables)
    assert (again.history, again.final_loss, again.wall_time_s) == (
        first.history,
        first.final_loss,
        first.wall_time_s,
    )


@pytest.mark.parametrize("name,input_shape", [("bn-crop", (8, 8, 1)), ("nobn-embed", (11, 11, 1))])
def test_restore_variables_loads_the_trained_model(tmp_path, reference, name, input_shape):
    model, _, workdir, result = reference(name)
    assert tree_equal(restore_variables(workdir, model, input_shape), result.variables)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        restore_variables(str(tmp_path), model, input_shape)
    with pytest.raises(ValueError, match="does not exist"):
        restore_variables(str(tmp_path / "missing"), model, input_shape)


def test_restoring_needs_no_optax(reference):
    """Evaluating a trained model reads its variables without importing optax."""
    _, _, workdir, result = reference("bn-crop")
    here = os.path.dirname(os.path.abspath(__file__))
    script = f"""
        import sys
        sys.modules["optax"] = None  # any import of optax now fails
        sys.path.insert(0, {here!r})
        import jax, numpy as np
        from benchmarks.inference import classifiers
        from benchmarks.training import checkpoint
        from tiny_net import TinyNet
        variables = checkpoint.restore_variables({workdir!r}, TinyNet(True), (8, 8, 1))
        print(sum(float(np.abs(x).sum()) for x in jax.tree.leaves(variables)))
        """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    want = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(result.variables))
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(want, rel=1e-6)


def test_resume_with_other_config_is_refused(reference):
    model, config, workdir, _ = reference("nobn-embed")
    other = dataclasses.replace(config, learning_rate=0.01)
    with pytest.raises(ValueError, match=r"different config.*'learning_rate': \(0\.05, 0\.01\)"):
        train(model, *DATA, other, workdir)


def test_resume_with_other_data_identity_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    config = dataclasses.replace(FAST, num_steps=2, checkpoint_every=2, log_every=2)
    digits = {"data": {"name": "digits", "sha256": "aa"}}
    train(TinyNet(), *DATA, config, workdir, identity=digits)
    # The same config on other data: refused, naming what differs (never reported as done).
    mnist = {"data": {"name": "mnist", "sha256": "bb"}}
    with pytest.raises(ValueError, match=r"another run \(data\.name: stored \"digits\", now"):
        train(TinyNet(), *DATA, config, workdir, identity=mnist)
    # A checkpoint without an identity (an older run) is not taken for one with an identity.
    bare = str(tmp_path / "bare")
    train(TinyNet(), *DATA, config, bare)
    with pytest.raises(ValueError, match="data.name"):
        train(TinyNet(), *DATA, config, bare, identity=mnist)
    assert train(TinyNet(), *DATA, config, workdir, identity=digits).steps == 2


def test_bad_data_and_mesh_are_rejected(tmp_path):
    images, labels = DATA
    cases = [
        (images[..., 0], labels, FAST, "images must be"),
        (images, labels[:10], FAST, "labels must be"),
        (images, -labels - 1, FAST, "labels must be >= 0"),
        (images[:10], labels[:10], FAST, "batch_size must be <="),
        (
            images,
            labels,
            dataclasses.replace(FAST, augmentation="embed", canvas_size=6),
            "canvas_size must be >=",
        ),
    ]
    for x, y, config, message in cases:
        with pytest.raises(ValueError, match=message):
            train(TinyNet(), x, y, config, str(tmp_path))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="axis named 'batch'"):
        train(TinyNet(), images, labels, FAST, str(tmp_path), mesh=mesh)
    assert os.listdir(tmp_path) == []  # rejected before any checkpoint directory is made


def start_python(script, log_path, **env):
    """Starts `script` (after importing this file's fixtures) in a fresh interpreter; stdout is
    piped, stderr goes to `log_path` (a pipe nobody reads could fill up and block it)."""
    prefix = textwrap.dedent(f"""
        import dataclasses, sys, time
        import jax, numpy as np
        sys.path[:0] = [{os.path.dirname(os.path.abspath(__file__))!r}, {ROOT + "/tests"!r}]
        from test_train import DATA, FAST, RESUME, VARIANTS, TinyNet
        from benchmarks.training.train import train
        """)
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-c", prefix + textwrap.dedent(script)],
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def test_sigkilled_run_resumes_to_identical_result(tmp_path, reference):
    """A hard kill (no exception handling, no cleanup) once the step-3 checkpoint is on disk."""
    proc = start_python(
        f"""
        batch_norm, extra = VARIANTS["bn-crop"]
        def slow(done):
            print(done, flush=True)
            time.sleep(0.5 if done >= 3 else 0.0)
        train(TinyNet(batch_norm), *DATA, dataclasses.replace(RESUME, **extra),
              {str(tmp_path / "run")!r}, on_step=slow)
        """,
        tmp_path / "stderr.txt",
    )
    try:
        model, config, _, full = reference("bn-crop")  # trains while the subprocess starts
        deadline = time.time() + 120
        while not os.path.isdir(tmp_path / "run" / "3") and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        stdout, _ = proc.communicate()
    printed = [int(line) for line in stdout.split()]
    assert 3 <= printed[-1] < config.num_steps  # killed mid-run
    steps = []
    resumed = train(model, *DATA, config, str(tmp_path / "run"), on_step=steps.append)
    assert steps[0] in (4, 7) and steps[-1] == 9  # from the last complete checkpoint on disk
    assert tree_equal(resumed.variables, full.variables) and resumed.history == full.history


def test_mesh_batch_sharding_matches_single_device(tmp_path):
    """On 4 host devices: batches split over 'batch', params replicated, same result (SGD)."""
    config = dataclasses.replace(FAST, optimizer="sgd", learning_rate=0.1)
    proc = start_python(
        f"""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        assert jax.device_count() == 4
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        config = dataclasses.replace(FAST, optimizer="sgd", learning_rate=0.1)
        result = train(TinyNet(), *DATA, config, {str(tmp_path / "mesh")!r}, mesh=mesh)
        kernel = result.variables["params"]["Dense_0"]["kernel"]
        assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, P()), kernel.ndim)
        np.savez({str(tmp_path / "mesh.npz")!r}, *jax.tree.leaves(result.variables))
        try:
            train(TinyNet(), *DATA, dataclasses.replace(config, batch_size=18), "/nonexistent",
                  mesh=mesh)
        except ValueError as e:
            assert "multiple of the mesh 'batch' axis size 4" in str(e), e
        else:
            raise AssertionError("batch_size 18 on 4 devices accepted")
        """,
        tmp_path / "stderr.txt",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    try:
        single = train(TinyNet(), *DATA, config, str(tmp_path / "single"))
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    sharded = np.load(tmp_path / "mesh.npz")
    leaves = jax.tree.leaves(single.variables)
    assert len(sharded.files) == len(leaves)
    for i, leaf in enumerate(leaves):
        np.testing.assert_allclose(sharded[f"arr_{i}"], leaf, rtol=1e-5, atol=1e-6)
