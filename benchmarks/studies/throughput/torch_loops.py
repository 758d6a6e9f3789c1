"""The torch peers: the same crops and model in PyTorch, a loop over the sweep, as the published
reference codes evaluate.

  (d) torch_eager   the torch twin (`torch_twins`, weights copied, channels_last, inference
                    mode) in eager mode;
  (e) torch_compile (d) with the twin under `torch.compile(mode=...)`.

torch (and, for EfficientNet-Lite, the reference code efficientnet-lite-pytorch) is optional:
`missing` says why the peers cannot run. It is imported at first use, after the entry point has
set OMP_WAIT_POLICY (libgomp reads it when torch loads it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.studies.throughput.workloads import Workload


def _torch() -> Any:
    """The torch module, imported here: optional, and loaded only after OMP_WAIT_POLICY is set."""
    import torch

    return torch


def available() -> bool:
    """Whether torch is installed (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def missing(model: str) -> str | None:
    """Why the torch peers of the `models.registry` model `model` cannot run (a one-line
    note), or None."""
    if not available():
        return "torch is not installed: (d) and (e) skipped"
    if model.startswith("efficientnet") and not importlib.util.find_spec(
        "efficientnet_lite_pytorch"
    ):
        return (
            "efficientnet-lite-pytorch (the reference code) is not installed: (d) and (e) skipped"
        )
    return None


def runtime() -> tuple[str, int] | None:
    """(torch's version, its intra-op threads), or None without torch."""
    if not available():
        return None
    torch = _torch()
    return torch.__version__, torch.get_num_threads()


def _channels_last(images: np.ndarray) -> Any:
    """images [N, H, W, C] -> a channels_last torch tensor [N, C, H, W] (of a copy)."""
    torch = _torch()
    tensor = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
    return tensor.contiguous(memory_format=torch.channels_last)


def make_torch_loop(
    w: Workload, compile_mode: str | None, threads: int | None = None
) -> tuple[Callable[[], np.ndarray], Any]:
    """(d), or (e) with `compile_mode`: the torch twin of `w`'s plain classifier (under
    `torch.compile(mode=compile_mode)` for (e)) in a loop over `w.corners`.

    Args:
      w: the workload.
      compile_mode: a `config.TORCH_COMPILE_MODES` entry, or None for eager mode.
      threads: `torch.set_num_threads` (None: torch's).

    Returns:
      (runner -> top-1 [T, N] (batches concatenated), the eager twin).
    """
    torch = _torch()
    from benchmarks.studies.throughput import torch_twins  # imports torch: lazy, as `_torch`

    if threads:
        torch.set_num_threads(threads)
    h = w.protocol.output_shape[0]
    twin = torch_twins.from_flax(w.classifier.model, w.classifier.variables, h)
    twin = twin.to(memory_format=torch.channels_last)
    forward = twin if compile_mode is None else torch.compile(twin, mode=compile_mode)
    images = [_channels_last(x) for x, _ in w.batches]

    def run():
        with torch.inference_mode():
            out = [
                [
                    forward(
                        x[:, :, y : y + h, c : c + h].contiguous(memory_format=torch.channels_last)
                    )
                    for x in images
                ]
                for y, c in w.corners
            ]
            return np.stack([np.concatenate([l.argmax(-1).numpy() for l in row]) for row in out])

    return run, twin


def twin_logits(twin: Any, images: np.ndarray) -> np.ndarray:
    """Logits [N, K] of the torch `twin` on images [N, H, W, C] in [0, 1]."""
    torch = _torch()
    with torch.inference_mode():
        return twin(_channels_last(images)).numpy()
