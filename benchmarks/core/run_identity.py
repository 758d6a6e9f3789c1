"""Run identity: one JSON-able record of everything that determines a number.

Every saved state (evaluation running sums, training checkpoints, cached ablation and
dataset-bias results) stores the identity of the run that made it; a run resumes or reuses it
only when its own identity is equal. `differences` names what differs, so that a mismatch is
refused, or recomputed, with one line that says why.

An identity is a nested dict of JSON values. Array contents enter it as sha256 digests
(`digest_arrays`): the weights, the data, the sweep.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


class IdentityMismatch(ValueError):
    """A stored state or result belongs to a run of another identity."""


def digest_arrays(tree: Any) -> str:
    """sha256 (hex) of a pytree of arrays: its structure, each leaf's dtype, shape and bytes.

    Equal for equal contents whatever the container types (numpy or jax leaves, dict order).
    """
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def package_version() -> str:
    """The installed shiftbench version ('unknown' from a source tree that is not installed)."""
    try:
        return md.version("shiftbench")
    except md.PackageNotFoundError:
        return "unknown"


def jsonable(x: Any) -> Any:
    """`x` with numpy values and tuples as JSON values (lists, floats, ints)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(record, Mapping):
        out = {}
        for k, v in record.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: record}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(stored: Mapping[str, Any] | None, given: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ, as 'key: stored X, now Y' (empty when equal)."""
    a, b = _flatten(jsonable(stored or {})), _flatten(jsonable(given))
    return [
        f"{k}: stored {_short(a.get(k))}, now {_short(b.get(k))}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def check(stored: Mapping[str, Any] | None, given: Mapping[str, Any], what: str) -> None:
    """Raises IdentityMismatch naming what differs when `stored` is not `given`.

    Args:
      stored: the identity saved with a state or result (None: none was saved).
      given: the identity of the run at hand.
      what: the state, for the message (e.g. "workdir=runs/x holds a checkpoint that").
    """
    diff = differences(stored, given)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise IdentityMismatch(f"{what} belongs to another run ({shown}).")
