"""Runs an entry point as users do, in a subprocess, for the end-to-end tests."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_TFDS = os.path.join(ROOT, "..", "shared", "data", "tfds")


def run_module(
    module: str, *args: str, timeout: float = 600, devices: int | None = None
) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root on the CPU (with `devices`
    simulated CPU devices when given); returns the process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )


def fails_with_one_line(result: subprocess.CompletedProcess, expected: str) -> bool:
    """Whether the run failed with a line naming `expected` and no traceback."""
    return (
        result.returncode != 0
        and any(expected in line for line in result.stderr.splitlines())
        and "Traceback" not in result.stderr
    )
