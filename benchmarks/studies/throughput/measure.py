"""Every measurement of one throughput protocol (`measure`), and the figures it is read against:
the machine's fp32 peak (`matmul_peak_gflops`) and the model's FLOPs (`model_flops_per_image`).

In one process, on the same images and sweep, the variants (`variants`, `torch_loops`) are
compiled by a first call, then timed in alternating rounds; their predictions are cross-checked
(`agreement`).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from benchmarks.core import evaluator
from benchmarks.studies.throughput import devices, op_profile, torch_loops, variants
from benchmarks.studies.throughput.accounting import CompileLog, compile_log, memory_bytes
from benchmarks.studies.throughput.config import TORCH_VARIANTS, VARIANTS, ThroughputConfig
from benchmarks.studies.throughput.workloads import Workload, build_workload


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured fp32 peak: GFLOP/s of a jitted [n, n] @ [n, n] matmul (2 n^3
    FLOPs), median of `repeats` calls after one warm-up."""
    a = jax.device_put(np.random.default_rng(0).random((n, n), dtype=np.float32))
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(seconds)) / 1e9


def model_flops_per_image(w: Workload) -> float:
    """XLA's FLOP count of the plain model (its HLO before compiling) per image [h, w, C] of
    the protocol's output. Counted on the plain model: XLA cannot see inside the fast path's
    custom calls (`benchmarks.kernels.cpu_conv`)."""
    images = jax.ShapeDtypeStruct((w.batch_size, *w.protocol.output_shape), jnp.float32)
    lowered = jax.jit(w.classifier.logits).lower(w.classifier.variables, images)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / w.batch_size


def _warm_up(
    runners: dict[str, Callable[[], Any]], log: CompileLog
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], str | None]:
    """Calls every runner once (compiling it) and drops torch_compile where it fails.

    Returns:
      ({variant: {'compiles', 'compile_s', 'first_call_s'}}, {variant: its first result},
      a note on a failed torch.compile or None).
    """
    compile_info, results, note = {}, {}, None
    for key, run in list(runners.items()):
        mark, start = log.mark(), time.perf_counter()
        if key == "torch_compile":
            try:
                results[key] = run()
            # Inductor needs a C++ compiler: report its failure, do not fail the run.
            except Exception as e:  # noqa: BLE001
                del runners[key]
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                note = f"torch.compile failed, (e) skipped: {first}"
                logging.warning("%s", note)
                continue
        else:
            results[key] = run()
        compiles, compile_s = log.since(mark)
        compile_info[key] = {
            "compiles": compiles,
            "compile_s": compile_s,
            "first_call_s": time.perf_counter() - start,
        }
    return compile_info, results, note


def measure(name: str, config: ThroughputConfig, peak_gflops: float) -> dict[str, Any]:
    """Every measurement of protocol `name` (of `workloads.SETUPS`) under `config`, as a
    JSON-able record.

    Args:
      name: the protocol.
      config: the variants, sizes, rounds and optional studies (transform and device scaling,
        op profile).
      peak_gflops: the machine's fp32 peak (`matmul_peak_gflops`), for 'fraction_of_peak'.

    Returns:
      The protocol's shape and call sizes, 'compile' counts and seconds per variant, 'seconds'
      per round, 'rates' (images x transforms / s), 'gflops', 'ratios' (evaluator/variant,
      medians of per-round time ratios), XLA's 'memory' bytes, 'agreement' cross-checks,
      'fraction_of_peak', and as configured 'scaling_transforms', 'scaling_devices', 'profile'.

    Raises:
      ValueError: as `workloads.setup_for`.
    """
    w = build_workload(name, config)
    log = compile_log()
    t = len(w.protocol.params)
    out: dict[str, Any] = {
        "model": w.setup.model,
        "fields": dict(w.setup.fields),
        "batch_size": w.batch_size,
        "num_transforms": t,
        "num_batches": len(w.batches),
        "input_shape": list(w.protocol.output_shape),
        "image_shape": list(w.image_shape),
        "fast": config.fast,
    }
    chosen = [v for v in VARIANTS if v in config.variants]
    note = torch_loops.missing(w.setup.model)
    if note and any(v in TORCH_VARIANTS for v in chosen):
        chosen = [v for v in chosen if v not in TORCH_VARIANTS]
        out["torch_note"] = note
    # The bare forward's memory per image sets the evaluator's call sizes.
    forward = jax.jit(w.logits)
    mark = log.mark()
    bare_compiled, bare_run = variants.make_bare_forward(w, forward)
    bare_memory = memory_bytes(bare_compiled)
    bare_compiles, bare_compile_s = log.since(mark)
    out["flops_per_image"] = model_flops_per_image(w)
    per_image = bare_memory["temp_bytes"] / w.batch_size
    chunk, images_per_call = evaluator.call_sizes_for_budget(
        per_image, w.batch_size, jax.device_count(), t, config.memory_budget_mb << 20
    )
    out["chunk_size"] = chunk = config.chunk_size or chunk
    out["images_per_call"] = images_per_call = config.images_per_call or images_per_call
    ev, ev_run = variants.make_evaluator(w, chunk, images_per_call)
    runners = {"evaluator": ev_run, "bare_forward": bare_run}
    if "python_loop" in chosen:
        runners["python_loop"] = variants.make_python_loop(w)
    twin = None
    for key, mode in (("torch_eager", None), ("torch_compile", config.torch_compile_mode)):
        if key in chosen:
            runners[key], twin = torch_loops.make_torch_loop(w, mode, config.torch_threads)
    runners = {k: v for k, v in runners.items() if k in chosen}
    compile_info, results, compile_note = _warm_up(runners, log)
    if compile_note:
        out["torch_compile_note"] = compile_note
    if "bare_forward" in compile_info:  # compiled above, for its memory analysis
        compile_info["bare_forward"]["compiles"] += bare_compiles
        compile_info["bare_forward"]["compile_s"] += bare_compile_s
    compile_info["evaluator"]["compile_count"] = ev.compile_count
    mark = log.mark()
    seconds = variants.timed_rounds(runners, config.repeats)
    out["compiles_during_rounds"] = log.since(mark)[0]
    if "torch_compile" in seconds:  # its first call traced and compiled the twin
        info = compile_info["torch_compile"]
        info["compiles"] = 1
        info["compile_s"] = info["first_call_s"] - float(np.median(seconds["torch_compile"]))
        info["mode"] = config.torch_compile_mode
    out["compile"] = compile_info
    out["seconds"] = seconds
    out["rates"] = {k: w.work / float(np.median(s)) for k, s in seconds.items()}
    # The JAX model's FLOPs (XLA's count of the plain model) at each variant's rate.
    out["gflops"] = {k: v * out["flops_per_image"] / 1e9 for k, v in out["rates"].items()}
    out["ratios"] = {
        f"evaluator/{k}": float(np.median(np.asarray(s) / np.asarray(seconds["evaluator"])))
        for k, s in seconds.items()
        if k != "evaluator"
    }
    out["memory"] = {
        "evaluator": memory_bytes(ev.compiled(w.image_shape)),
        "bare_forward": bare_memory,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10,
    }
    out["agreement"] = agreement(w, forward if config.fast else None, results, twin)
    if config.scaling:
        out["scaling_transforms"] = variants.scaling_transforms(
            ev, w, config.scaling_base, list(config.scaling_factors)
        )
    if config.device_counts:
        out["scaling_devices"] = devices.scaling_devices(name, config, devices.device_row(out))
    if config.profile:
        out["profile"] = op_profile.profile_ops(ev_run, ev.compiled(w.image_shape).as_text())
    out["fraction_of_peak"] = {k: v / peak_gflops for k, v in out["gflops"].items()}
    return out


def agreement(
    w: Workload, fast_forward: Callable | None, results: dict[str, Any], twin: Any
) -> dict[str, float]:
    """Cross-checks of the variants: their top-1 and accuracy per transform (`results`, the
    runners' first results by variant), the fast JAX logits (`fast_forward`, None without the
    fast path) and the torch `twin`'s (None without one) against the plain model's, on the
    first batch at the reference shift. Differences of logits are relative to the plain
    logits' largest magnitude."""
    out = {}
    labels = np.concatenate([lab for _, lab in w.batches])
    if "python_loop" in results:
        top1 = results["python_loop"]
        if "evaluator" in results:
            accuracy = np.mean(top1 == labels, axis=1)
            out["evaluator_vs_loop_accuracy_max_diff"] = float(
                np.max(np.abs(accuracy - results["evaluator"]))
            )
        if "torch_eager" in results:
            out["torch_vs_loop_top1_agreement"] = float(np.mean(results["torch_eager"] == top1))
        if "torch_compile" in results:
            out["torch_compile_vs_loop_top1_agreement"] = float(
                np.mean(results["torch_compile"] == top1)
            )
    for key in TORCH_VARIANTS:  # accuracy per transform of each torch peer vs the evaluator
        if key in results and "evaluator" in results:
            accuracy = np.mean(results[key] == labels, axis=1)
            out[f"evaluator_vs_{key}_accuracy_max_diff"] = float(
                np.max(np.abs(accuracy - results["evaluator"]))
            )
    reference = w.protocol.params[w.protocol.reference_index]
    images = jax.vmap(w.protocol.transform, (0, None))(w.batches[0][0], reference)
    plain = np.asarray(jax.jit(w.classifier.logits)(w.classifier.variables, images))
    scale = float(np.max(np.abs(plain)))
    if fast_forward is not None:
        fast = np.asarray(fast_forward(w.variables, images))
        out["fast_vs_plain_max_rel_diff"] = float(np.max(np.abs(fast - plain)) / scale)
        out["fast_vs_plain_top1_agreement"] = float(np.mean(fast.argmax(-1) == plain.argmax(-1)))
    if twin is not None:
        logits = torch_loops.twin_logits(twin, np.asarray(images))
        out["torch_vs_plain_max_rel_diff"] = float(np.max(np.abs(logits - plain)) / scale)
    return out
