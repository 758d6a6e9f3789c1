"""shiftbench: transforms, metrics, evaluator and entry points."""

from benchmarks import xla_defaults

xla_defaults.configure_xla_cpu()  # before any JAX computation: see benchmarks/xla_defaults.py
