"""Accumulator machinery shared by the meters: state that adds up across batches, processes and ranks.

A meter's whole state is a dict of named numpy arrays (int64 counts and float64 sums of per-image
scores), so merging two meters is elementwise addition, and a DDP all-reduce is a SUM of the same
arrays. Counts merge exactly; float64 sums merge exactly up to the rounding of float addition (the
order of the additions differs from a single pass, ~1e-16 relative).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np


class Meter:
    """Base of the metric accumulators. Subclasses name their constructor arguments in ``ARGUMENTS`` and
    define ``_fields``."""

    ARGUMENTS: tuple[str, ...] = ()

    def _config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable; ``type(self)(**config)`` rebuilds an empty meter."""
        return {name: getattr(self, name) for name in self.ARGUMENTS}

    def _fields(self) -> dict[str, tuple[tuple[int, ...], type]]:
        """Name -> (shape, dtype) of every state array."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._state = {name: np.zeros(shape, dtype) for name, (shape, dtype) in self._fields().items()}

    def _add(self, name: str, value: np.ndarray | float | int) -> None:
        self._state[name] += value

    def merge(self, other: Self) -> Self:
        """Add ``other``'s accumulated state into this meter (same class and configuration); returns self."""
        if type(other) is not type(self) or other._config() != self._config():
            raise ValueError(
                f"cannot merge {type(other).__name__}({other._config()}) into {type(self).__name__}({self._config()})"
            )
        for name, value in other._state.items():
            self._state[name] += value
        return self

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: ``{"type": class name, "config": {...}, "state": {name: nested lists}}``."""
        return {
            "type": type(self).__name__,
            "config": self._config(),
            "state": {name: value.tolist() for name, value in self._state.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a meter from ``state_dict()`` output, checking class, names and shapes."""
        if state.get("type") != cls.__name__:
            raise ValueError(f"state is of a {state.get('type')!r} meter, expected {cls.__name__!r}")
        meter = cls(**state["config"])
        fields = meter._fields()
        if set(state["state"]) != set(fields):
            raise ValueError(f"{cls.__name__} state holds {sorted(state['state'])}, expected {sorted(fields)}")
        for name, (shape, dtype) in fields.items():
            value = np.asarray(state["state"][name], dtype)
            if value.shape != shape:
                raise ValueError(f"{cls.__name__} state {name!r} has shape {value.shape}, expected {shape}")
            meter._state[name] = value
        return meter

    def all_reduce(self, group: Any = None) -> Self:
        """Sum the state over all ranks of ``torch.distributed`` (in place, every rank gets the total).

        A no-op when torch.distributed is not initialised. Works with gloo (CPU) and NCCL (the current CUDA
        device); int64 and float64 arrays are packed into one tensor each, so this is two collectives.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        for kind in (np.int64, np.float64):
            names = [name for name, value in self._state.items() if value.dtype == kind]
            if not names:
                continue
            flat = np.concatenate([self._state[name].reshape(-1) for name in names])
            tensor = torch.from_numpy(flat).to(device)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
            flat = tensor.cpu().numpy()
            start = 0
            for name in names:
                size = self._state[name].size
                self._state[name] = flat[start : start + size].reshape(self._state[name].shape).copy()
                start += size
        return self


def to_json(values: np.ndarray) -> list:
    """Float array -> nested list with NaN as None (JSON has no NaN)."""
    values = np.asarray(values, np.float64)
    return np.where(np.isnan(values), None, values).tolist()


def nan_mean(values: np.ndarray) -> float | None:
    """Mean over the non-NaN entries, None when there are none."""
    values = np.asarray(values, np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else None
