"""shiftbench: how much do image classifiers change under small shifts, rescales, rotations?

Importing the package changes nothing (no environment variable, no JAX state). Before the
first JAX computation of a process, call `benchmarks.configure_xla_cpu()` once to start XLA's
CPU backend with the settings every figure in WORKSPACE_NOTES.md was measured with; the entry
points (`python -m benchmarks.<name>`) do so themselves.

The library, by job: `benchmarks.core` (transforms, metrics, protocols, the evaluator),
`benchmarks.data`, `benchmarks.training`, `benchmarks.inference` (classifiers and the fast
path), `benchmarks.kernels` (the CPU convolution kernel), `benchmarks.runtime` (XLA settings,
clusters), `benchmarks.results` (records and plots), `benchmarks.cli` (flags and the one-line
error policy) and `benchmarks.studies` (throughput, dataset bias, ablation summaries).
"""

from benchmarks.runtime.xla_defaults import configure_xla_cpu

__all__ = ["configure_xla_cpu"]
