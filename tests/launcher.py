"""Starts an entry point as several JAX processes on this machine (CPU, gloo collectives), as
a cluster of hosts would run it, and collects every process's output."""

import dataclasses
import os
import socket
import subprocess
import sys
import time

from entry_point import ROOT


def free_port() -> int:
    """A TCP port nobody listens on now (for the coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Cluster:
    """The processes of one multi-process run: Popen handles and their log files."""

    procs: list[subprocess.Popen]
    logs: list[str]

    def wait(self, timeout: float) -> list[tuple[int, str, str]]:
        """Waits for every process; kills all of them past `timeout` seconds (a hang).

        Returns:
          [(returncode, stdout, stderr)] per process id; returncode None for a process that
          had to be killed.
        """
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                codes.append(None)
        for p in self.procs:
            p.kill()
            p.wait()
        out = []
        for code, log in zip(codes, self.logs):
            with open(log + ".out") as f, open(log + ".err") as g:
                out.append((code, f.read(), g.read()))
        return out


def start(
    module: str, *args: str, processes: int = 2, devices_per_process: int = 1, logdir: str
) -> Cluster:
    """`python -m module --multihost --coordinator_address=... args` as `processes` processes.

    Args:
      module: the entry point.
      args: its flags (the same for every process; --process_id is added).
      processes: number of JAX processes.
      devices_per_process: simulated CPU devices in each.
      logdir: where each process's stdout / stderr go (proc<i>.out / .err).
    """
    address = f"localhost:{free_port()}"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
    )
    procs, logs = [], []
    for i in range(processes):
        log = os.path.join(logdir, f"proc{i}")
        cmd = [
            sys.executable,
            "-m",
            module,
            "--multihost",
            f"--coordinator_address={address}",
            f"--num_processes={processes}",
            f"--process_id={i}",
            *args,
        ]
        with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err))
        logs.append(log)
    return Cluster(procs, logs)
