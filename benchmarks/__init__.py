"""shiftbench: transforms, metrics, evaluator and entry points."""

from benchmarks.runtime import xla_defaults

xla_defaults.configure_xla_cpu()  # before any JAX computation: see benchmarks/runtime/xla_defaults.py
