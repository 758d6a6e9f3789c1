"""shiftbench: transforms, metrics, evaluator and entry points."""
