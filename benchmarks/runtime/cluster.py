"""Running an entry point as several JAX processes: the cluster flags and their start-up.

Every entry point that can span processes (`invariance`, `stride_ablation`, `dataset_bias`,
`throughput`) defines these flags and calls `initialize_from_flags()` before it touches a
device:

    --multihost                    call jax.distributed.initialize (required by the flags below)
    --coordinator_address=H:P      process 0's address; with --num_processes and --process_id
    --num_processes=N              (all three or none: none auto-detects, as on Cloud TPU,
    --process_id=I                 Slurm or Open MPI)
    --initialization_timeout_s     how long processes wait for each other at start-up
    --heartbeat_timeout_s          how soon a process that died is noticed by the others

On CPU the cross-process collectives use gloo. Every process runs the same program on one
global mesh of all processes' devices; process 0 reads shared state (`report.read_bytes_shared`)
and alone writes results (`report.write_bytes`).
"""

from __future__ import annotations

from absl import flags, logging

FLAGS = flags.FLAGS

_EXPLICIT = ("coordinator_address", "num_processes", "process_id")


def define_flags() -> None:
    """--multihost, --coordinator_address, --num_processes, --process_id and the timeouts."""
    flags.DEFINE_bool(
        "multihost",
        False,
        "Run as one of several JAX processes (jax.distributed.initialize): a Cloud TPU pod, a "
        "GPU cluster, or several CPU processes.",
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "--multihost: host:port of process 0 (default: auto-detected on TPU / Slurm / MPI).",
    )
    flags.DEFINE_integer(
        "num_processes", None, "--multihost: number of processes (with --coordinator_address)."
    )
    flags.DEFINE_integer(
        "process_id", None, "--multihost: this process, 0..N-1 (with --coordinator_address)."
    )
    flags.DEFINE_integer(
        "initialization_timeout_s",
        300,
        "--multihost: seconds to wait for every process at start-up.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "heartbeat_timeout_s",
        100,
        "--multihost: seconds without a heartbeat after which a process counts as dead and "
        "the others stop with an error.",
        lower_bound=1,
    )


def check_flags() -> dict:
    """The keyword arguments of `jax.distributed.initialize` the flags ask for, or {} without
    --multihost.

    Raises:
      FlagError: a cluster flag without --multihost, an incomplete explicit set, or a
        --process_id outside 0..--num_processes-1.
    """
    from benchmarks.cli.flags import FlagError

    given = [name for name in _EXPLICIT if FLAGS[name].value is not None]
    if not FLAGS.multihost:
        if given:
            raise FlagError(f"--{given[0]} applies with --multihost only; add --multihost.")
        return {}
    if given and len(given) != len(_EXPLICIT):
        missing = [f"--{n}" for n in _EXPLICIT if n not in given]
        raise FlagError(
            f"--{given[0]} needs {' and '.join(missing)} as well (or none of the three, to "
            "auto-detect the cluster)."
        )
    kwargs = {
        "initialization_timeout": FLAGS.initialization_timeout_s,
        "heartbeat_timeout_seconds": FLAGS.heartbeat_timeout_s,
    }
    if given:
        n, i = FLAGS.num_processes, FLAGS.process_id
        if n < 1:
            raise FlagError(f"--num_processes={n} must be >= 1.")
        if not 0 <= i < n:
            raise FlagError(f"--process_id={i} must be in 0..{n - 1} (--num_processes={n}).")
        if ":" not in FLAGS.coordinator_address:
            raise FlagError(
                f"--coordinator_address={FLAGS.coordinator_address!r} must be host:port."
            )
        kwargs.update(coordinator_address=FLAGS.coordinator_address, num_processes=n, process_id=i)
    return kwargs


def initialize_from_flags() -> None:
    """Joins the cluster the flags describe (nothing without --multihost); call it before any
    device is used. On CPU, collectives across processes go through gloo."""
    kwargs = check_flags()
    if not kwargs:
        return
    import jax

    from benchmarks.cli.flags import FlagError

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:  # no cluster detected, or it could not be joined
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlagError(
            f"--multihost: could not join a cluster ({detail}); on a machine that is not a "
            "TPU pod, Slurm or Open MPI job pass --coordinator_address, --num_processes and "
            "--process_id."
        ) from None
    logging.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
