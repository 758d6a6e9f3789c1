"""What a measurement costs besides time: JAX compiles (`compile_log`) and XLA's buffer bytes
(`memory_bytes`)."""

from __future__ import annotations

import functools
from typing import Any

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = (
    COMPILE_EVENT,
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)


class CompileLog:
    """JAX's tracing, lowering and compiling events (name, seconds), in the order they came."""

    def __init__(self):
        self.events: list[tuple[str, float]] = []

    def record(self, event: str, duration: float, **_: Any) -> None:
        """A `jax.monitoring` duration listener: keeps the `TRACE_EVENTS`."""
        if event in TRACE_EVENTS:
            self.events.append((event, duration))

    def mark(self) -> int:
        """A position to count from (`since`)."""
        return len(self.events)

    def since(self, mark: int) -> tuple[int, float]:
        """(backend compiles, seconds of tracing + lowering + compiling) since `mark`."""
        events = self.events[mark:]
        return sum(e == COMPILE_EVENT for e, _ in events), sum(d for _, d in events)


@functools.cache
def compile_log() -> CompileLog:
    """This process's compile log, listening from the first call on (one listener per
    process: `jax.monitoring` listeners cannot be removed)."""
    log = CompileLog()
    jax.monitoring.register_event_duration_secs_listener(log.record)
    return log


def memory_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
    """XLA's buffer bytes of one call of `compiled`: 'argument_bytes', 'output_bytes',
    'temp_bytes' and 'peak_bytes' (their sum less the aliased bytes)."""
    m = compiled.memory_analysis()
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
    }
    out["peak_bytes"] = sum(out.values()) - int(m.alias_size_in_bytes)
    return out
