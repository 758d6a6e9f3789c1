"""The README's library example runs as written (in a fresh process, as a user would)."""

import os
import re
import subprocess
import sys

from entry_point import ROOT


def _example() -> str:
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(
        r"<!-- library-example -->\s*```python\n(.*?)```\s*<!-- /library-example -->", readme, re.S
    )
    assert block, "README.md has no library example between its markers"
    return block.group(1)


def test_the_library_example_runs_as_written():
    # The example leaves the data to the reader: 64 CIFAR-sized images in [0, 1].
    data = (
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "my_images = rng.random((64, 32, 32, 3), dtype=np.float32)\n"
        "my_labels = rng.integers(0, 10, 64).astype(np.int32)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", data + _example()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    value, sep, stderr = out.stdout.strip().splitlines()[-1].partition(" +- ")
    assert sep and 0.0 <= float(value) <= 1.0 and float(stderr) >= 0.0
