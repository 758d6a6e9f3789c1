"""Test-session settings shared by every test process and the entry points they start.

XLA compilations of one test session go to a persistent cache (jax's content-addressed
compilation cache), so the end-to-end tests, which start the same entry point several times
(resume, rerun, other weights), compile each program once. Results do not change: a cached
executable is the one XLA compiled for the same program and flags.
"""

import os
import tempfile

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"shiftbench-test-xla-cache-{os.getuid()}"),
)

import benchmarks  # noqa: E402

benchmarks.configure_xla_cpu()  # the package's XLA CPU defaults, before any JAX work

# End-to-end tests (entry points in subprocesses, model ports) take 10-40 s each; the rest well
# under a second. Collected first, they spread over the xdist workers from the start instead
# of leaving one worker alone with a long test at the end. Order does not change any result.
_LONG_FIRST = (
    "test_multiprocess.py",
    "test_stride_ablation.py",
    "test_keras_models.py",
    "test_invariance_cli.py",
    "test_dataset_bias.py",
    "test_throughput.py",
    "test_interrupt.py",
    "test_readme.py",
    "test_compare.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
