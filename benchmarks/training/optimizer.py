"""The optax optimizer and learning-rate schedule a `TrainConfig` names."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks.training.config import TrainConfig


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """The learning-rate schedule of `config`: step (int) -> learning rate."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.num_steps
    )


def _kernels_only(params: Any) -> Any:
    """Weight-decay mask: True for arrays with ndim > 1 (conv and dense kernels)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer of `config` (optimizer, schedule, weight decay on kernels)."""
    lr = make_schedule(config)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay, mask=_kernels_only)
    if config.optimizer == "adam":
        base = optax.adam(lr)
    else:
        base = optax.sgd(lr, momentum=config.momentum if config.optimizer == "momentum" else None)
    if config.weight_decay == 0:
        return base
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=_kernels_only), base)
