"""Recorded positions of simulated spins and walkers (`spins.SpinTrack`, `montecarlo.WalkerTrack`) as
arrays and .npz files, so a simulation job can hand them to whatever draws them.

Arrays are named ``track_<field>``, with ``track_kind`` 'flow' or 'histo', so they can sit beside other
arrays in a job's output file.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np

_PREFIX = "track_"


def _classes():
    from .flow.spins import SpinTrack
    from .montecarlo import WalkerTrack
    return {"flow": SpinTrack, "histo": WalkerTrack}


def to_arrays(track) -> dict:
    """{'track_kind': kind, 'track_<field>': array, ...} of a SpinTrack or WalkerTrack."""
    kind = next(k for k, cls in _classes().items() if isinstance(track, cls))
    out = {_PREFIX + "kind": np.asarray(kind)}
    for f in fields(track):
        out[_PREFIX + f.name] = np.asarray(getattr(track, f.name))
    return out


def from_arrays(arrays):
    """The track stored in a mapping of arrays (an open .npz), or None when it holds none."""
    if _PREFIX + "kind" not in arrays:
        return None
    cls = _classes()[str(arrays[_PREFIX + "kind"])]
    values = {}
    for f in fields(cls):
        a = np.asarray(arrays[_PREFIX + f.name])
        values[f.name] = (float(a) if a.ndim == 0 else tuple(a.tolist())) if f.type in ("float", "tuple") else a
    return cls(**values)


def save_track(track, path) -> Path:
    """Write a track to path (.npz) atomically."""
    from ..atomic import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        np.savez(tmp, **to_arrays(track))
    return path


def load_track(path):
    """The SpinTrack or WalkerTrack saved in path."""
    with np.load(path) as z:
        return from_arrays(z)
