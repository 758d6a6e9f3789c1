"""benchmarks/cli/flags.py helpers that need no subprocess: the library log filter."""

import logging
import os

import pytest

from benchmarks.cli import flags as sb_flags


def _record(level, path):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


ORBAX = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")


@pytest.mark.parametrize(
    "level, path, kept",
    [
        (logging.INFO, ORBAX, False),  # orbax's per-save chatter
        (logging.DEBUG, ORBAX, False),
        (logging.WARNING, ORBAX, True),  # its warnings and errors stay
        (logging.ERROR, ORBAX, True),
        (logging.INFO, os.path.join("benchmarks", "train.py"), True),  # our progress
        (logging.INFO, os.path.join("site-packages", "orbaxlike", "x.py"), True),
    ],
)
def test_library_chatter_filter(level, path, kept):
    assert sb_flags._not_library_chatter(_record(level, path)) is kept
