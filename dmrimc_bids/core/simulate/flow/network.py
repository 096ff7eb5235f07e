"""Vascular networks: straight cylindrical pipes between nodes, with an inlet, an outlet and an input flow.

Units: coordinates, radii and lengths in µm; input flow Qin in mm³/s on disk and in the CLI
(SpinFlowSim's convention), µm³/s inside (1 mm³/s = 1e9 µm³/s).

Formats read by `read_network`:
- ``.json``: {"nodes": [[id, x, y, z], ...], "segments": [[node_a, node_b, radius_um], ...],
  "inlet": id, "outlet": id, "qin_mm3_per_s": Q} (docs/formats.md);
- ``.csv``: one row per segment, columns ``node_a, node_b, radius_um, x_a, y_a, z_a, x_b, y_b, z_b``
  (µm; the layout of a histology tracing table), inlet/outlet/Qin given by the caller;
- ``.npz``: the converted public SpinFlowSim networks (../shared/reference/spinflowsim, keys nodes,
  edges, radius, inlet, outlet, qin in µm and µm³/s).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import EX_NOINPUT, InputError

UM3_PER_MM3 = 1e9


@dataclass
class Network:
    """A pipe network. nodes [N, 3] µm; segments [E, 2] node indices; radius_um [E]; inlet/outlet node
    indices; qin_um3_per_s input flow [µm³/s]; name for provenance."""

    nodes: np.ndarray
    segments: np.ndarray
    radius_um: np.ndarray
    inlet: int
    outlet: int
    qin_um3_per_s: float
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.nodes = np.asarray(self.nodes, float).reshape(-1, 3)
        self.segments = np.asarray(self.segments, np.int64).reshape(-1, 2)
        self.radius_um = np.asarray(self.radius_um, float).ravel()
        self.inlet, self.outlet = int(self.inlet), int(self.outlet)
        n = len(self.nodes)
        if self.radius_um.size != len(self.segments):
            raise ValueError(f"{self.radius_um.size} radii for {len(self.segments)} segments")
        if len(self.segments) == 0 or self.segments.min() < 0 or self.segments.max() >= n:
            raise ValueError(f"segment node indices must lie in 0..{n - 1}")
        if np.any(self.segments[:, 0] == self.segments[:, 1]):
            raise ValueError("a segment joins a node to itself")
        if not (0 <= self.inlet < n and 0 <= self.outlet < n) or self.inlet == self.outlet:
            raise ValueError(f"inlet ({self.inlet}) and outlet ({self.outlet}) must be two distinct nodes")
        if not np.all(self.radius_um > 0) or not np.all(np.isfinite(self.nodes)):
            raise ValueError("radii must be positive and coordinates finite")
        if not self.qin_um3_per_s > 0:
            raise ValueError("the input flow Qin must be positive")
        if np.any(self.length_um <= 0):
            raise ValueError("two nodes of a segment coincide (zero length)")

    @property
    def length_um(self) -> np.ndarray:
        """Segment lengths [µm] (distance of the end nodes)."""
        return np.linalg.norm(self.nodes[self.segments[:, 1]] - self.nodes[self.segments[:, 0]], axis=1)

    @property
    def is_planar(self) -> bool:
        """True when every node has the same z (a 2D network)."""
        return bool(np.ptp(self.nodes[:, 2]) == 0)

    @property
    def qin_mm3_per_s(self) -> float:
        return self.qin_um3_per_s / UM3_PER_MM3

    def with_flow(self, qin_mm3_per_s: float) -> "Network":
        """The same geometry at another input flow [mm³/s]."""
        return Network(self.nodes, self.segments, self.radius_um, self.inlet, self.outlet,
                       qin_mm3_per_s * UM3_PER_MM3, self.name, dict(self.extra))

    def with_ports(self, inlet: int, outlet: int) -> "Network":
        return Network(self.nodes, self.segments, self.radius_um, inlet, outlet, self.qin_um3_per_s,
                       self.name, dict(self.extra))

    def to_json(self) -> dict:
        return {"nodes": [[i, *map(float, p)] for i, p in enumerate(self.nodes)],
                "segments": [[int(a), int(b), float(r)] for (a, b), r in zip(self.segments, self.radius_um)],
                "inlet": self.inlet, "outlet": self.outlet, "qin_mm3_per_s": self.qin_mm3_per_s,
                "name": self.name}


def _fail(path, msg, fix):
    raise InputError(msg, path=path, fix=fix)


def from_json(d: dict, path=None) -> Network:
    try:
        ids = [int(r[0]) for r in d["nodes"]]
        index = {i: k for k, i in enumerate(ids)}
        nodes = np.array([[float(v) for v in r[1:4]] for r in d["nodes"]])
        seg = np.array([[index[int(r[0])], index[int(r[1])]] for r in d["segments"]])
        rad = np.array([float(r[2]) for r in d["segments"]])
        return Network(nodes, seg, rad, index[int(d["inlet"])], index[int(d["outlet"])],
                       float(d["qin_mm3_per_s"]) * UM3_PER_MM3, str(d.get("name", Path(path or "").stem)))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        _fail(path, f"bad network description ({type(exc).__name__}: {exc})",
              'write {"nodes": [[id,x,y,z],...], "segments": [[a,b,radius_um],...], "inlet": id, '
              '"outlet": id, "qin_mm3_per_s": Q} (µm)')


def read_network(path, inlet=None, outlet=None, qin_mm3_per_s=None) -> Network:
    """Read a network file (.json, .csv or the converted SpinFlowSim .npz); inlet/outlet (node ids) and
    Qin [mm³/s] given here override the file's."""
    path = Path(path)
    if not path.is_file():
        raise InputError("network file not found", path=path, exit_code=EX_NOINPUT,
                         fix="give a .json, .csv or .npz network (docs/formats.md in the project)")
    try:
        if path.suffix == ".json":
            d = json.loads(path.read_text())
            if inlet is not None:
                d["inlet"] = inlet
            if outlet is not None:
                d["outlet"] = outlet
            if qin_mm3_per_s is not None:
                d["qin_mm3_per_s"] = qin_mm3_per_s
            return from_json(d, path)
        if path.suffix == ".npz":
            z = np.load(path, allow_pickle=False)
            # a SpinFlowSim realisation knows its network ("net", "dim"): realisations of one network share the name
            name = (f"Net{int(z['net'])}" + ("_3d" if "dim" in z.files and int(z["dim"]) == 3 else "")
                    if "net" in z.files else path.stem)
            net = Network(z["nodes"], z["edges"], z["radius"], int(z["inlet"]), int(z["outlet"]), float(z["qin"]),
                          name, {"source": "SpinFlowSim npz", "file": path.name})
            if inlet is not None or outlet is not None:
                net = net.with_ports(net.inlet if inlet is None else int(inlet),
                                     net.outlet if outlet is None else int(outlet))
            return net if qin_mm3_per_s is None else net.with_flow(qin_mm3_per_s)
        if path.suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            need = ["node_a", "node_b", "radius_um", "x_a", "y_a", "z_a", "x_b", "y_b", "z_b"]
            if not rows or not set(need) <= set(rows[0]):
                _fail(path, "a network CSV needs columns " + ", ".join(need), "add a header row with those names (µm)")
            if inlet is None or outlet is None or qin_mm3_per_s is None:
                _fail(path, "a network CSV needs the inlet and outlet node ids and Qin",
                      "pass --inlet ID --outlet ID --qin MM3_PER_S")
            pos = {}
            for r in rows:
                for end in "ab":
                    nid = int(r[f"node_{end}"])
                    p = (float(r[f"x_{end}"]), float(r[f"y_{end}"]), float(r[f"z_{end}"]))
                    if nid in pos and np.max(np.abs(np.subtract(pos[nid], p))) > 1e-6 * (1 + np.max(np.abs(p))):
                        _fail(path, f"node {nid} has two different positions", "make shared endpoints identical")
                    pos[nid] = p
            d = {"nodes": [[i, *p] for i, p in sorted(pos.items())],
                 "segments": [[int(r["node_a"]), int(r["node_b"]), float(r["radius_um"])] for r in rows],
                 "inlet": inlet, "outlet": outlet, "qin_mm3_per_s": qin_mm3_per_s, "name": path.stem}
            return from_json(d, path)
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read the network ({exc})", path=path,
                         fix="check the file against the format in docs/formats.md of the project") from exc
    raise InputError(f"unknown network format '{path.suffix}'", path=path, fix="use .json, .csv or .npz")
