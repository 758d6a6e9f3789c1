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
