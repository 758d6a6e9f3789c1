"""The JAX variants, each a zero-argument runner that evaluates every batch and blocks, and
the timing of runners and of the evaluator against the sweep length.

  (a) evaluator     `benchmarks.core.evaluator.Evaluator.run`: one jitted call per batch that
                    crops, runs the model and reduces every metric;
  (b) bare_forward  the jitted model alone on already-cropped batches of the same total size;
  (c) python_loop   a Python loop over the sweep calling the jitted crop + model per parameter.

The torch peers (d) and (e) are in `torch_loops`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from benchmarks.core import evaluator
from benchmarks.studies.throughput.accounting import compile_log, memory_bytes
from benchmarks.studies.throughput.workloads import Workload


def make_evaluator(
    w: Workload, chunk_size: int, images_per_call: int
) -> tuple[evaluator.Evaluator, Callable[[], np.ndarray]]:
    """(a): the evaluator of `w` with `chunk_size` sweep entries and `images_per_call` images
    per model call, and a runner returning its accuracy per parameter [T]."""
    config = evaluator.EvalConfig(
        batch_size=w.batch_size, chunk_size=chunk_size, images_per_call=images_per_call
    )
    ev = evaluator.Evaluator(w.logits, w.protocol, config, variables=w.variables)
    batches = w.host_batches  # sliced once, outside the timed calls

    def run():
        return ev.run(batches, progress_every=0).accuracy_per_param

    return ev, run


def make_bare_forward(
    w: Workload, forward: Callable
) -> tuple[jax.stages.Compiled, Callable[[], list[jax.Array]]]:
    """(b): the jitted model `forward` on pre-cropped batches [B, h, w, C], one call per
    (batch, shift). Returns (the compiled forward, runner -> logits [B, K] per call)."""
    crop_all = jax.jit(jax.vmap(jax.vmap(w.protocol.transform, (0, None)), (None, 0)))
    params = jax.device_put(w.protocol.params)
    cropped = [list(crop_all(jax.device_put(x), params)) for x, _ in w.batches]  # T x [B, ...]
    variables = jax.device_put(w.variables)

    def run():
        return jax.block_until_ready([forward(variables, x) for xs in cropped for x in xs])

    return forward.lower(variables, cropped[0][0]).compile(), run


def make_python_loop(w: Workload) -> Callable[[], np.ndarray]:
    """(c): a Python loop over the sweep; the runner returns top-1 [T, N] (batches
    concatenated)."""
    step = jax.jit(
        lambda v, images, p: w.logits(v, jax.vmap(w.protocol.transform, (0, None))(images, p))
    )
    images = [jax.device_put(x) for x, _ in w.batches]
    params = [jax.device_put(p) for p in w.protocol.params]
    variables = jax.device_put(w.variables)

    def run():
        out = [[step(variables, x, p) for x in images] for p in params]
        return np.stack([np.concatenate([np.argmax(l, -1) for l in row]) for row in out])

    return run


def timed_rounds(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each runner per round, `repeats` rounds; the runners alternate within every
    round (so that the load of a shared machine hits each alike)."""
    seconds = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def scaling_transforms(
    ev: evaluator.Evaluator, w: Workload, base: int, factors: list[int]
) -> list[dict[str, Any]]:
    """Evaluator cost on the first batch for sweeps of base x factor parameters (the
    protocol's sweep repeated), with the call sizes and variables of `ev`.

    Returns:
      A row per factor: 'factor', 'num_transforms', 'seconds_per_batch', 'rate' (images x
      transforms per second), 'compiles', 'compile_s', the `memory_bytes` of its call, and
      'cost_per_transform_vs_x1' (seconds per transform over the first factor's).
    """
    rows = []
    first = w.host_batches[:1]
    log = compile_log()
    for factor in factors:
        params = np.resize(w.protocol.params, (base * factor, w.protocol.params.shape[1]))
        sweep = evaluator.Evaluator(
            w.logits, w.protocol.with_sweep(params, 0), ev.config, variables=w.variables
        )
        mark = log.mark()
        sweep.run(first, progress_every=0)  # compile
        compiles, compile_s = log.since(mark)
        start = time.perf_counter()
        sweep.run(first, progress_every=0)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "factor": factor,
                "num_transforms": len(params),
                "seconds_per_batch": seconds,
                "rate": w.batch_size * len(params) / seconds,
                "compiles": compiles,
                "compile_s": compile_s,
                **memory_bytes(sweep.compiled(w.image_shape)),
            }
        )
    for row in rows:  # seconds per transform relative to the x1 sweep
        row["cost_per_transform_vs_x1"] = (row["seconds_per_batch"] / row["num_transforms"]) / (
            rows[0]["seconds_per_batch"] / rows[0]["num_transforms"]
        )
    return rows
