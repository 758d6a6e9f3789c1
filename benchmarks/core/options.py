"""Options declared once: a dataclass field with its help text, bounds and allowed values.

A config of the library (`EvalConfig`, `ProtocolConfig`, `DataConfig`, `ModelConfig`,
`TrainConfig`) declares each option as `option(default, help, ...)`. From that one declaration
`check` validates an instance (a ValueError naming the argument and what it allows) and
`benchmarks.cli.flags` defines the absl flag of the same name, with the same default, help and
bounds. The library never names a flag; the CLI turns `name=value` in an error into
`--name=value`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def option(
    default: Any,
    help: str,  # noqa: A002  (the absl name)
    *,
    choices: Sequence[str] | None = None,
    lower: float | None = None,
    upper: float | None = None,
) -> Any:
    """A dataclass field carrying its help text, allowed values and bounds.

    Args:
      default: the default value (None: unset, chosen by the code that uses it).
      help: one sentence for `--help` and the docstring.
      choices: the allowed strings, for a str option.
      lower, upper: inclusive bounds, for a numeric option.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None}
    meta.update(lower=lower, upper=upper)
    return dataclasses.field(default=default, metadata=meta)


def declared(config_type: type) -> list[dataclasses.Field]:
    """The fields of `config_type` declared with `option`."""
    return [f for f in dataclasses.fields(config_type) if "help" in f.metadata]


def check(config: Any) -> None:
    """Validates every `option` field of a config instance.

    Raises:
      ValueError: a value outside its choices or bounds, e.g. "max_shift=-1 must be >= 0".
    """
    for f in declared(type(config)):
        value, meta = getattr(config, f.name), f.metadata
        if value is None:
            continue
        if meta["choices"] and value not in meta["choices"]:
            allowed = ", ".join(meta["choices"])
            raise ValueError(f"{f.name}={value!r} is not one of: {allowed}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if meta["lower"] is not None and value < meta["lower"]:
            raise ValueError(f"{f.name}={value} must be >= {meta['lower']}.")
        if meta["upper"] is not None and value > meta["upper"]:
            raise ValueError(f"{f.name}={value} must be <= {meta['upper']}.")
