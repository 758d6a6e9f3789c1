"""The settings of one throughput run: `ThroughputConfig`, the variants it may time."""

from __future__ import annotations

import dataclasses

from benchmarks.core import evaluator, options
from benchmarks.core.options import option

VARIANTS = ("evaluator", "bare_forward", "python_loop", "torch_eager", "torch_compile")
TORCH_VARIANTS = ("torch_eager", "torch_compile")
TORCH_COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")


@dataclasses.dataclass(frozen=True)
class ThroughputConfig:
    """How one protocol is measured (each option declared once: `benchmarks.core.options`).

    Attributes:
      variants: the variants timed, of `VARIANTS`; 'evaluator' (the ratios' numerator) always.
      scaling_factors: sweep lengths of the transform-scaling points, in multiples of
        `scaling_base`.
      device_counts: simulated CPU device counts of the device-scaling rows (a child process
        for each count other than this process's); () for none.
      The `option` fields: see their help text.
    """

    variants: tuple[str, ...] = VARIANTS
    scaling_factors: tuple[int, ...] = (1, 4, 16)
    device_counts: tuple[int, ...] = (1, 8)
    repeats: int = option(5, "Alternating timed rounds of every variant.", lower=1)
    num_batches: int = option(1, "Batches per timed round.", lower=1)
    batch_size: int | None = option(None, "Images per batch (default: the protocol's).", lower=1)
    crop_size: int | None = option(None, "Crop side in px (default: the protocol's).", lower=8)
    max_shift: int | None = option(None, "Largest shift (default: the protocol's).", lower=1)
    chunk_size: int | None = option(
        None, "Evaluator chunk size (default: from memory_budget_mb).", lower=1
    )
    images_per_call: int | None = option(
        None, "Images per evaluator model call (default: from memory_budget_mb).", lower=1
    )
    memory_budget_mb: int = option(
        evaluator.DEFAULT_MEMORY_BUDGET_MB,
        "Activation bytes one evaluator call may use per device; sets the chunk size and the "
        "images per call.",
        lower=1,
    )
    fast: bool = option(True, "Apply benchmarks.inference.fastpath rewrites to the JAX classifier.")
    scaling: bool = option(True, "Measure cost against the number of transforms.")
    scaling_base: int = option(2, "Sweep length of the x1 scaling point.", lower=2)
    torch_threads: int | None = option(None, "torch.set_num_threads (default: torch's).")
    torch_compile_mode: str = option(
        "default", "torch.compile mode of (e).", choices=TORCH_COMPILE_MODES
    )
    profile: bool = option(False, "Profile one evaluator round per XLA op.")
    seed: int = option(0, "Seed of images, labels and weights.")

    def __post_init__(self):
        """Raises ValueError naming the argument that cannot be used."""
        options.check(self)
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(f"variants={','.join(self.variants)}: choose from {list(VARIANTS)}.")
        if "evaluator" not in self.variants:
            raise ValueError("`variants` must include 'evaluator' (the ratios' numerator).")
        for name in ("scaling_factors", "device_counts"):
            values = getattr(self, name)
            if not all(v > 0 for v in values):
                raise ValueError(
                    f"{name}={','.join(map(str, values))}: positive integers expected."
                )
