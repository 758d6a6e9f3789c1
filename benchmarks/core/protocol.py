"""A protocol: a one-image transform bound to its sweep, its reference entry and its pairs.

`Protocol` is what the evaluator runs; `benchmarks.core.protocols` builds the named ones from
their options (and wraps sweeps of your own: `protocols.custom`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from benchmarks.core import sweeps


class ProtocolError(ValueError):
    """Options that do not make a valid protocol; the message names the argument."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A transformation sweep ready for the evaluator.

    Attributes:
      name: protocol name.
      transform: `transform(image [H, W, C], param [P]) -> [h, w, C]`.
      params: [T, P] float32 sweep parameters.
      reference_index: index of the untransformed / reference entry.
      x: [T] value plotted on the x axis (shift along the sweep, scale, angle or entry index).
      xlabel: label of x.
      output_shape: (h, w, C) of transformed images.
      lattice: (T,) for an ordered sweep, (R, C) for a row-major grid, None for no neighbours.
      input_shape: (H, W, C) of the images the protocol takes.
      options: every option that determines the sweep (for the run identity).
    """

    name: str
    transform: Callable[[jax.Array, jax.Array], jax.Array]
    params: np.ndarray
    reference_index: int
    x: np.ndarray
    xlabel: str
    output_shape: tuple[int, int, int]
    lattice: tuple[int, ...] | None
    input_shape: tuple[int, int, int]
    options: dict = dataclasses.field(default_factory=dict)

    def pairs(self, d: int = 1) -> np.ndarray:
        """int32 [E, 2] sweep-index pairs d steps apart (`sweeps.lattice_pairs`); [0, 2] if none."""
        return sweeps.lattice_pairs(self.lattice, d)

    def flip_pairs(self, d: int) -> np.ndarray:
        """The pairs of the flip probability at distance d (`EvalConfig.flip_distance`).

        Raises:
          ProtocolError: the sweep has neighbours but no line longer than d.
        """
        pairs = self.pairs(d)
        if self.lattice is not None and not len(pairs):
            raise ProtocolError(
                f"flip_distance={d} must be smaller than the longest line of the sweep "
                f"({max(self.lattice)} entries): allowed 1..{max(self.lattice) - 1}."
            )
        return pairs

    def with_sweep(self, params: np.ndarray, reference_index: int) -> Protocol:
        """The same transform over another ordered sweep `params` [T, P] (x: the index)."""
        params = np.asarray(params, np.float32)
        x = np.arange(len(params), dtype=np.float32)
        return dataclasses.replace(
            self,
            params=params,
            reference_index=int(reference_index),
            x=x,
            xlabel="sweep index",
            lattice=(len(params),),
            options={**self.options, "params": params.tolist()},
        )

    def distinct_entries(self, shift_period: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The sweep entries a net of circular shift period `shift_period` must evaluate.

        For the circular protocol and a net whose logits are the same for circular shifts that
        differ by multiples of `shift_period` on both axes (`SmallNet.circular_period`), shifts
        with the same (dy mod S, dx mod S) share one evaluation: a 9 x 9 grid on a stride-4
        net has 16 distinct phases among its 81 shifts.

        Returns:
          (params [U, P], sweep_index int32 [T]) with params[sweep_index] an equivalent of each
          entry (its first one of the same phase); (self.params, None) for any other protocol
          or without a period (every entry evaluated).
        """
        if self.name != "circular" or not shift_period:
            return self.params, None
        phases = np.mod(np.round(self.params).astype(np.int64), shift_period)
        _, first, inverse = np.unique(phases, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # distinct phases in sweep order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return self.params[first[order]], rank[inverse.ravel()].astype(np.int32)

    def geometry(self) -> dict:
        """What the protocol evaluates, for logs and records: the input and output image
        shapes (the crop window, the canvas) and the range of each sweep parameter."""
        return {
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "num_entries": len(self.params),
            "param_min": self.params.min(axis=0).tolist(),
            "param_max": self.params.max(axis=0).tolist(),
        }

    def describe(self) -> str:
        """One line: '<name>: 32x32x3 images -> 24x24x3, 17 entries, params -8..8'."""
        g = self.geometry()
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        low = ",".join(f"{v:g}" for v in g["param_min"])
        high = ",".join(f"{v:g}" for v in g["param_max"])
        return (
            f"{self.name}: {shape(g['input_shape'])} images -> {shape(g['output_shape'])}, "
            f"{g['num_entries']} entries, params {low}..{high}"
        )

    @property
    def has_neighbours(self) -> bool:
        """Whether the sweep declares pairs one step apart (False for random draws)."""
        return len(self.pairs(1)) > 0
