"""The throughput study: the evaluator against a bare forward, a Python loop and PyTorch loops.

The entry point `benchmarks.throughput` turns flags into a `config.ThroughputConfig` and calls
`measure.measure` per protocol. Modules, one job each:

- `config`: `ThroughputConfig`, the variants and torch.compile modes.
- `workloads`: the protocols (`SETUPS`) and what the variants evaluate (`build_workload`).
- `variants`: the JAX runners (evaluator, bare forward, Python loop), timed rounds, and the
  evaluator's cost against the sweep length.
- `torch_loops`: the torch peers (eager, compiled) over the twins of `torch_twins`.
- `devices`: the evaluator against the simulated device count (child processes).
- `op_profile`: time per XLA op of one evaluator round.
- `accounting`: compile counts and XLA buffer bytes.
- `measure`: every measurement of one protocol, the machine's peak, the model's FLOPs.
- `tables`: the printed markdown tables.
"""
