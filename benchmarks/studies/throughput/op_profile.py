"""Where one run spends its time per XLA op: a profiler trace, attributed with the optimised HLO."""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax


def profile_ops(run: Callable[[], Any], hlo: str, top: int = 15) -> dict[str, Any]:
    """Milliseconds per XLA op of one `run()` (summed over threads), by op and by category.

    Categories from the optimised HLO `hlo`: 'library (YNNPACK) <op>' for library fusions,
    'convolution' / 'dot' for XLA's own (Eigen) kernels, 'loop fusion <op>' for elementwise
    fusions (<op> is the last op named in the fusion's metadata). Eigen convolutions finish on
    Eigen's thread pool after their op event ends, so they are undercounted: compare the op
    total with `wall_ms` x threads.

    Returns:
      {'wall_ms', 'total_op_ms', 'by_category': [{'category', 'ms', 'share'}] (most first),
      'top_ops': the `top` ops as [{'op', 'category', 'ms', 'share'}]}.
    """
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        start = time.perf_counter()
        run()
        wall_ms = (time.perf_counter() - start) * 1e3
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(
            glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)[0]
        )
    per_op: collections.Counter = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                if re.fullmatch(r"[a-z_\-]+(\.\d+)?", event.name):  # an HLO instruction
                    per_op[event.name] += event.duration_ns / 1e6
    per_category: collections.Counter = collections.Counter()
    for op, ms in per_op.items():
        per_category[_category(op, hlo)] += ms
    total = sum(per_op.values())
    return {
        "wall_ms": wall_ms,
        "total_op_ms": total,
        "by_category": [
            {"category": c, "ms": ms, "share": ms / total} for c, ms in per_category.most_common()
        ],
        "top_ops": [
            {"op": op, "category": _category(op, hlo), "ms": ms, "share": ms / total}
            for op, ms in per_op.most_common(top)
        ],
    }


def _category(op: str, hlo: str) -> str:
    """The category of HLO instruction `op` in the module text `hlo` (see `profile_ops`)."""
    line = re.search(rf"%{re.escape(op)} = .*", hlo)
    if not line:
        return "other"
    line = line.group(0)
    name = re.search(r'op_name="([^"]+)"', line)
    last = name.group(1).split("/")[-1] if name else "?"
    if "__ynn_fusion" in line or "__xnn_fusion" in line:
        return f"library (YNNPACK) {last}"
    if "shiftbench_conv2d" in line:
        return "convolution (cpu_conv kernel)"
    if " convolution(" in line:
        return "convolution"
    if " dot(" in line:
        return "dot"
    if "kind=kLoop" in line or "kind=kInput" in line:
        return f"loop fusion {last}"
    opcode = re.search(r"= \S+ ([\w-]+)\(", line)
    return opcode.group(1) if opcode else "other"
