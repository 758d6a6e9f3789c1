"""Running as one of several JAX processes: the cluster settings and joining the cluster.

Every entry point that can span processes (`invariance`, `stride_ablation`, `dataset_bias`,
`throughput`) takes the `ClusterConfig` options as flags and calls `initialize(config)` before
it touches a device:

    multihost                    call jax.distributed.initialize (required by the options below)
    coordinator_address=H:P      process 0's address; with num_processes and process_id
    num_processes=N              (all three or none: none auto-detects, as on Cloud TPU,
    process_id=I                 Slurm or Open MPI)
    initialization_timeout_s     how long processes wait for each other at start-up
    heartbeat_timeout_s          how soon a process that died is noticed by the others

On CPU the cross-process collectives use gloo. Every process runs the same program on one
global mesh of all processes' devices; process 0 reads shared state (`report.read_bytes_shared`)
and alone writes results (`report.write_bytes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from absl import logging

from benchmarks.core import options
from benchmarks.core.options import option

_EXPLICIT = ("coordinator_address", "num_processes", "process_id")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """How this process joins a cluster (each option declared once: `benchmarks.core.options`)."""

    multihost: bool = option(
        False,
        "Run as one of several JAX processes (jax.distributed.initialize): a Cloud TPU pod, a "
        "GPU cluster, or several CPU processes.",
    )
    coordinator_address: str | None = option(
        None, "multihost: host:port of process 0 (default: auto-detected on TPU / Slurm / MPI)."
    )
    num_processes: int | None = option(
        None, "multihost: number of processes (with coordinator_address)."
    )
    process_id: int | None = option(
        None, "multihost: this process, 0..N-1 (with coordinator_address)."
    )
    initialization_timeout_s: int = option(
        300, "multihost: seconds to wait for every process at start-up.", lower=1
    )
    heartbeat_timeout_s: int = option(
        100,
        "multihost: seconds without a heartbeat after which a process counts as dead and the "
        "others stop with an error.",
        lower=1,
    )

    def __post_init__(self):
        options.check(self)

    def initialize_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `jax.distributed.initialize`, or {} without multihost.

        Raises:
          ValueError: a cluster option without multihost, an incomplete explicit set, or a
            process_id outside 0..num_processes-1.
        """
        given = [name for name in _EXPLICIT if getattr(self, name) is not None]
        if not self.multihost:
            if given:
                value = getattr(self, given[0])
                raise ValueError(
                    f"{given[0]}={value} applies with `multihost` only; add `multihost`."
                )
            return {}
        if given and len(given) != len(_EXPLICIT):
            missing = [f"`{n}`" for n in _EXPLICIT if n not in given]
            raise ValueError(
                f"{given[0]}={getattr(self, given[0])} needs {' and '.join(missing)} as well "
                "(or none of the three, to auto-detect the cluster)."
            )
        kwargs: dict[str, Any] = {
            "initialization_timeout": self.initialization_timeout_s,
            "heartbeat_timeout_seconds": self.heartbeat_timeout_s,
        }
        if given:
            n, i = self.num_processes, self.process_id
            if n < 1:
                raise ValueError(f"num_processes={n} must be >= 1.")
            if not 0 <= i < n:
                raise ValueError(f"process_id={i} must be in 0..{n - 1} (num_processes={n}).")
            if ":" not in self.coordinator_address:
                raise ValueError(
                    f"coordinator_address={self.coordinator_address!r} must be host:port."
                )
            kwargs.update(
                coordinator_address=self.coordinator_address, num_processes=n, process_id=i
            )
        return kwargs


def initialize(config: ClusterConfig) -> None:
    """Joins the cluster `config` describes (nothing without multihost); call it before any
    device is used. On CPU, collectives across processes go through gloo.

    Raises:
      ValueError: options that do not describe a cluster, or a cluster that cannot be joined.
    """
    kwargs = config.initialize_kwargs()
    if not kwargs:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:  # no cluster detected, or it could not be joined
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"multihost=True: could not join a cluster ({detail}); on a machine that is not a "
            "TPU pod, Slurm or Open MPI job pass `coordinator_address`, `num_processes` and "
            "`process_id`."
        ) from None
    logging.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
