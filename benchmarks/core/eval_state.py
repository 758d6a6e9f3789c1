"""The resumable state of an evaluation: running sums saved as npz with the run identity.

A run with a state path saves its running sums every few batches; a later run of the same
identity resumes after the last saved batch, a run of another identity starts afresh and
logs what differs. The file is npz (no pickles): the identity as a JSON string, the number of
evaluated batches, the curves and every running sum.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from benchmarks.core import run_identity
from benchmarks.results import report


@dataclasses.dataclass
class EvalState:
    """Running sums of an evaluation, with the identity of the run they belong to.

    Attributes:
      identity: the run identity (JSON-able), compared on resume.
      num_batches: global batches evaluated so far.
      totals: the summed outputs of the batch function (None before the first batch).
      curves: [T, n] true-class probability of the first n images.
      curve_labels: [n] their labels.
      call_sizes: (chunk_size, images_per_call) of the model calls.
    """

    identity: dict
    num_batches: int = 0
    totals: dict | None = None
    curves: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    curve_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    call_sizes: tuple[int, int] = (0, 0)


def to_bytes(state: EvalState) -> bytes:
    """The npz bytes of `state`."""
    arrays = {
        "identity": np.array(json.dumps(run_identity.jsonable(state.identity))),
        "num_batches": np.array(state.num_batches),
        "curves": state.curves,
        "curve_labels": state.curve_labels,
    }
    for key, value in (state.totals or {}).items():
        if isinstance(value, Mapping):
            arrays.update({f"totals/{key}/{k}": np.asarray(v) for k, v in value.items()})
        else:
            arrays[f"totals/{key}"] = np.asarray(value)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_bytes(data: bytes) -> EvalState:
    """The state in npz bytes written by `to_bytes` (never unpickles)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        totals: dict[str, Any] = {}
        for name in f.files:
            if name.startswith("totals/"):
                parts = name.split("/")[1:]
                if len(parts) == 2:
                    totals.setdefault(parts[0], {})[parts[1]] = f[name]
                else:
                    totals[parts[0]] = f[name]
        curves = f["curves"]
        return EvalState(
            identity=json.loads(str(f["identity"])),
            num_batches=int(f["num_batches"]),
            totals=totals or None,
            curves=curves if curves.size else np.zeros((0, 0), np.float32),
            curve_labels=f["curve_labels"].astype(np.int32),
        )


def resume(path: str | None, identity: dict) -> EvalState:
    """The saved state at `path` when it has `identity`, else a fresh one (logged).

    Process 0 reads the file and shares it with the other processes, so every process of a
    multi-host run resumes alike.
    """
    identity = run_identity.jsonable(identity)
    fresh = EvalState(identity=identity)
    data = report.read_bytes_shared(path) if path else None
    if data is None:
        return fresh
    try:
        state = from_bytes(data)
    except (ValueError, KeyError, OSError) as e:
        logging.warning("%s is not an evaluation state (%s); starting afresh.", path, e)
        return fresh
    diff = run_identity.differences(state.identity, identity)
    if diff:
        logging.warning(
            "%s belongs to another run, starting afresh; differs in: %s", path, "; ".join(diff)
        )
        return fresh
    if state.num_batches:
        logging.info("resuming after %d evaluated batches from %s", state.num_batches, path)
    return state


def save(path: str, state: EvalState) -> None:
    """Atomically writes the running sums as npz (process 0 only: `report.write_bytes`)."""
    report.write_bytes(path, to_bytes(state))
