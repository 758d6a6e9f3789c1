"""Training: optax optimizers and schedules, a jitted train step, orbax checkpoints, resume.

`train` fits a flax linen classifier (`model.apply(variables, x, train=bool, mutable=[...]) ->
(logits [N, K], features)`, with or without a 'batch_stats' collection) on in-memory arrays.

Determinism: the data order is a pure function of (seed, step) (`batch_indices`), and the
augmentation key of a step is `fold_in(key, step)`, so a run that is interrupted and resumed from
its checkpoint sees the same batches, and ends with the same parameters, as one that is not.
Checkpoints (the latest 2) live in `workdir` (local or gs://) with the config and the run
identity (model, data) they were made with; resuming with a different config or identity is
refused with a message that names what differs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.typing import ArrayLike

from benchmarks.core import run_identity
from benchmarks.data.augment import augment_batch
from benchmarks.training import batches
from benchmarks.training.batches import batch_indices
from benchmarks.training.checkpoint import checkpoint_dir, load_meta, load_state
from benchmarks.training.config import (
    TrainConfig,
    TrainResult,
)
from benchmarks.training.optimizer import make_optimizer
from models.layers.conv import is_int


@functools.lru_cache(maxsize=4)
def _train_step(
    model: nn.Module, config: TrainConfig, replicated: NamedSharding | None
) -> Callable:
    """jit((state, images [B,H,W,C], labels [B]) -> (state, mean loss)); state is donated.

    Cached on its (hashable) arguments, so runs of the same model and config in one process
    (e.g. an interrupted run and its resumption) share one compilation.
    """
    tx = make_optimizer(config)
    key = jax.random.split(jax.random.PRNGKey(config.seed))[1]

    def loss_fn(params, rest, images, labels, dropout_key):
        (logits, _), updates = model.apply(
            {"params": params, **rest},
            images,
            train=True,
            mutable=list(rest),
            rngs={"dropout": dropout_key},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    def step_fn(state, images, labels):
        aug_key, dropout_key = jax.random.split(jax.random.fold_in(key, state["step"]))
        images = augment_batch(
            aug_key, images, config.augmentation, config.max_shift, config.canvas_size
        )
        params = state["variables"]["params"]
        rest = {k: v for k, v in state["variables"].items() if k != "params"}
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, images, labels, dropout_key
        )
        deltas, opt_state = tx.update(grads, state["opt_state"], params)
        variables = {**rest, **updates, "params": optax.apply_updates(params, deltas)}
        return {"step": state["step"] + 1, "variables": variables, "opt_state": opt_state}, loss

    out = {} if replicated is None else {"out_shardings": replicated}
    return jax.jit(step_fn, donate_argnums=0, **out)


def _cached_train_step(
    model: nn.Module, config: TrainConfig, replicated: NamedSharding | None
) -> Callable:
    """`_train_step`, from its cache unless the model is unhashable (e.g. has a list field)."""
    try:
        hash(model)
    except TypeError:
        return _train_step.__wrapped__(model, config, replicated)
    return _train_step(model, config, replicated)


def _init_state(
    model: nn.Module,
    config: TrainConfig,
    input_shape: tuple[int, ...],
    replicated: NamedSharding | None = None,
) -> dict:
    """A fresh training state {'step', 'variables', 'opt_state'} for inputs of shape (H, W, C).

    One jitted call creates it (op by op, flax's init compiles every primitive separately:
    10.6 s for vgg_small against 5 s jitted, nearly all of it the compile; the values are the
    same bit for bit). With `replicated`, directly in that sharding, so every array is a
    global array on the mesh (as a multi-process run and orbax need), never a single-device
    one; without it, on the default device.
    """
    return jax.jit(_state_fn(model, config, input_shape), out_shardings=replicated)()


def _state_fn(model: nn.Module, config: TrainConfig, input_shape: tuple[int, ...]) -> Callable:
    """() -> a fresh training state (see `_init_state`)."""

    def init():
        init_key = jax.random.split(jax.random.PRNGKey(config.seed))[0]
        variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        opt_state = make_optimizer(config).init(variables["params"])
        return {"step": jnp.zeros((), jnp.int32), "variables": variables, "opt_state": opt_state}

    return init


def _restore(
    manager: ocp.CheckpointManager,
    state: Any,
    config: TrainConfig,
    identity: dict,
    workdir: str,
) -> tuple[Any, dict]:
    """Loads the latest checkpoint into the structure (and shardings) of `state`.

    Raises:
      ValueError: the checkpoint was made with a different config or run identity.
    """
    step = manager.latest_step()
    meta = load_meta(manager, step)
    run_identity.check(
        meta.get("identity", {}),
        identity,
        f"workdir={workdir!r} holds a checkpoint (step {step}) that",
    )
    given = dataclasses.asdict(config)
    if meta["config"] != given:
        diff = {
            k: (meta["config"].get(k), given.get(k))
            for k in given.keys() | meta["config"].keys()
            if meta["config"].get(k) != given.get(k)
        }
        raise ValueError(
            f"workdir={workdir!r} holds a checkpoint (step {step}) of a run with a "
            f"different config, field: (stored, given): {diff}. Use a new workdir, or "
            "the stored config to resume."
        )
    return load_state(manager, step, state), meta


def _run_steps(
    manager: ocp.CheckpointManager,
    step_fn: Callable,
    state: Any,
    meta: dict,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    batch_sharding: NamedSharding | None,
    on_step: Callable[[int], None] | None,
) -> tuple[Any, dict]:
    """The training loop from state["step"] to config.num_steps: logs, checkpoints.

    Returns the final state and `meta` (updated in place: history, final_loss, wall_time_s).
    """
    start = int(state["step"])
    t_start = t_log = time.perf_counter()
    wall_before, step_log = meta["wall_time_s"], start
    for step in range(start, config.num_steps):
        idx = batch_indices(config.seed, step, len(labels), config.batch_size)
        state, loss = step_fn(state, *batches.device_batch(images, labels, idx, batch_sharding))
        done = step + 1
        if done % config.log_every == 0 or done == config.num_steps:
            loss_value, now = float(loss), time.perf_counter()
            rate = (done - step_log) / (now - t_log)
            eta = (config.num_steps - done) / rate
            logging.info(
                "step %d/%d  loss %.4f  %.2f steps/s  ETA %.0f s",
                done,
                config.num_steps,
                loss_value,
                rate,
                eta,
            )
            meta["history"].append({"step": done, "loss": loss_value})
            t_log, step_log = now, done
        if done % config.checkpoint_every == 0 or done == config.num_steps:
            meta["final_loss"] = float(loss)
            meta["wall_time_s"] = wall_before + time.perf_counter() - t_start
            snapshot = {**meta, "history": list(meta["history"])}  # saved asynchronously
            manager.save(
                done,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(snapshot)
                ),
            )
        if on_step is not None:
            on_step(done)
    manager.wait_until_finished()
    return state, meta


def train(
    model: nn.Module,
    images: ArrayLike,
    labels: ArrayLike,
    config: TrainConfig,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    on_step: Callable[[int], None] | None = None,
    identity: dict | None = None,
) -> TrainResult:
    """Trains `model` with softmax cross-entropy, resuming from `workdir` if it holds a checkpoint.

    Each step draws batch `batch_indices(seed, step, N, batch_size)`, augments it inside the jitted
    step, and takes one optimizer step; it logs step, loss, steps/s and ETA every log_every steps,
    and checkpoints every checkpoint_every steps and at the end (keeping the latest 2). A run whose
    checkpoint already has all num_steps returns it without training.

    Args:
      model: flax linen module, `apply(variables, x, train=bool, mutable=[...]) -> (logits [B, K],
        features)`; collections other than 'params' (e.g. 'batch_stats') are updated each step.
      images: float [N, H, W, C] in [0, 1] (host memory; batches are copied to the device(s)).
      labels: int [N] in [0, K).
      config: the run (also checked against the checkpoint's config on resume).
      workdir: directory for the checkpoints (created if missing); one run per directory.
      mesh: optional mesh with an axis 'batch': batches are split over it and the state is
        replicated. It may span several processes (`jax.distributed`): every process then
        calls `train` with the same arguments (the same host arrays), feeds the rows of its
        own devices, and takes part in every checkpoint save and restore (workdir must be
        one directory they all see, e.g. gs://). None: the default device.
      on_step: called with the number of completed steps after every step (after that step's
        checkpoint, if any, is queued); an exception it raises stops training and propagates.
      identity: what else determines the run (model name and fields, data identity and
        digest); stored with every checkpoint and checked on resume (`run_identity`).

    Returns:
      A `TrainResult`.

    Raises:
      ValueError: bad arrays or mesh, or a checkpoint in workdir made with a different config
        or identity.
    """
    identity = run_identity.jsonable(identity or {})
    images, labels = batches.check_data(images, labels, config)
    batch_sharding, replicated = batches.shardings(mesh, config.batch_size)
    canvas = (config.canvas_size, config.canvas_size) if config.augmentation == "embed" else None
    input_shape = (*(canvas or images.shape[1:3]), images.shape[3])
    state = _init_state(model, config, input_shape, replicated)
    meta = {
        "config": dataclasses.asdict(config),
        "history": [],
        "wall_time_s": 0.0,
        "final_loss": None,
        "identity": identity,
    }
    options = ocp.CheckpointManagerOptions(max_to_keep=2)
    with ocp.CheckpointManager(checkpoint_dir(workdir), options=options) as manager:
        if manager.latest_step() is not None:
            state, meta = _restore(manager, state, config, identity, workdir)
        if int(state["step"]) < config.num_steps:
            logging.info(
                "Training %s from step %d to %d in %s",
                type(model).__name__,
                int(state["step"]),
                config.num_steps,
                workdir,
            )
            state, meta = _run_steps(
                manager,
                _cached_train_step(model, config, replicated),
                state,
                meta,
                images,
                labels,
                config,
                batch_sharding,
                on_step,
            )
    return TrainResult(
        variables=state["variables"],
        steps=int(state["step"]),
        wall_time_s=meta["wall_time_s"],
        final_loss=meta["final_loss"],
        history=meta["history"],
    )


def evaluate_accuracy(
    model: nn.Module, variables: Any, images: ArrayLike, labels: ArrayLike, batch_size: int = 256
) -> float:
    """Top-1 accuracy of `model.apply(variables, x, train=False)` on a labelled set.

    Args:
      model: flax linen module returning (logits [B, K], features).
      variables: its variables.
      images: float [N, H, W, C], N >= 1.
      labels: int [N].
      batch_size: images per forward pass, >= 1 (the last batch is zero-padded; one compile).

    Returns:
      Fraction of images whose argmax logit equals the label, in [0, 1].
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    if images.ndim != 4 or labels.shape != images.shape[:1] or not labels.size:
        raise ValueError(
            f"images must be [N, H, W, C] and labels [N] with N >= 1, got "
            f"{images.shape} and {labels.shape}."
        )
    if not (is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")

    @jax.jit
    def count_correct(variables, x, y):
        logits, _ = model.apply(variables, x, train=False)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    batch_size = min(batch_size, len(labels))
    pad = -len(labels) % batch_size
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
    labels = np.concatenate([labels.astype(np.int32), np.full(pad, -1, np.int32)])  # never correct
    correct = sum(
        int(count_correct(variables, images[i : i + batch_size], labels[i : i + batch_size]))
        for i in range(0, len(labels), batch_size)
    )
    return correct / (len(labels) - pad)
