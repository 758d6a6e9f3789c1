"""Runs one entry point's `main` in this process for many argument lists (each expected to be
refused), and prints one JSON line per list: its exit code and what it wrote to stderr.

    python tests/bad_inputs.py benchmarks.invariance '[["--max_shift=-1"], ...]'

One process per entry point keeps the bad-input tests fast (jax is imported once).
"""

import contextlib
import importlib
import io
import json
import sys
import traceback

from absl import flags

from benchmarks.cli import flags as sb_flags


def main() -> None:
    module = importlib.import_module(sys.argv[1])
    for args in json.loads(sys.argv[2]):
        flags.FLAGS.unparse_flags()
        sys.argv = [module.__name__, *args]
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err):
            try:
                sb_flags.run_main(module.main)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # what a user would see: a traceback
                code = 1
                err.write("Traceback (most recent call last):\n" + traceback.format_exc())
        print(json.dumps({"args": args, "code": code, "stderr": err.getvalue()}), flush=True)


if __name__ == "__main__":
    main()
