"""Steady blood flow in a pipe network: Blinder resistance and Kirchhoff's laws as one sparse solve.

Per pipe (Poiseuille): q_e = (p_a - p_b) / R_e. Per node (mass conservation): Σ q in = Σ q out, with
Qin injected at the inlet and removed at the outlet. Together L p = s, L = Aᵀ diag(1/R) A the weighted
graph Laplacian (A the oriented incidence matrix), s = Qin (e_in - e_out). L is singular by the
constant; grounding the outlet (p_out = 0) leaves a symmetric positive-definite system solved with
scipy.sparse. A SPICE DC operating point of the equivalent resistor network (the published
simulator's route) solves the same nodal system; `backend="spice"` runs it through PySpice/ngspice
(extra ``[spice]``) as an independent check.

Units: lengths µm, flow µm³/s, pressure Pa, resistance Pa·s/µm³, velocity µm/s (mm/s in metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve

from ...errors import InputError
from .network import Network

#: Plasma viscosity [Pa·s] (1.2 mPa·s; Blinder et al. 2013, as in SpinFlowSim).
PLASMA_VISCOSITY_PA_S = 1.2e-3
#: Flows below this fraction of Qin are set to exactly zero (dead ends; the solve's round-off is ~1e-13).
ZERO_FLOW_REL = 1e-10


def relative_viscosity(radius_um):
    """Apparent relative blood viscosity μ_rel(r) = 4 [1 - 0.863 e^(-r/14.3 µm) + 27.5 e^(-r/0.351 µm)].

    The radius-dependent (Fåhræus-Lindqvist) correction of Blinder et al., Nat Neurosci 16:889 (2013),
    as applied in SpinFlowSim (Voronova et al.; r in µm). Tends to 4 (whole blood / plasma) for wide
    vessels, has its minimum 1.19 near r = 2.5 µm and grows steeply below r ≈ 1.5 µm.
    """
    r = np.asarray(radius_um, float)
    return 4.0 * (1.0 - 0.863 * np.exp(-r / 14.3) + 27.5 * np.exp(-r / 0.351))


def segment_resistance(radius_um, length_um, plasma_viscosity_pa_s=PLASMA_VISCOSITY_PA_S):
    """Modified Hagen-Poiseuille resistance R = μ_rel(r)·128·μ_p·L/(π d⁴), d = 2r [Pa·s/µm³]."""
    r, L = np.asarray(radius_um, float), np.asarray(length_um, float)
    return relative_viscosity(r) * 128.0 * plasma_viscosity_pa_s * L / (np.pi * (2.0 * r) ** 4)


@dataclass
class FlowSolution:
    """Resolved network. flow_um3_per_s [E] signed along segments (node_a -> node_b); pressure_pa [N]
    (outlet 0); resistance [E] Pa·s/µm³; kcl_residual: max |Σ flows at a node - source| / Qin."""

    network: Network
    flow_um3_per_s: np.ndarray
    pressure_pa: np.ndarray
    resistance: np.ndarray
    kcl_residual: float
    backend: str

    @property
    def live(self) -> np.ndarray:
        """Segments that carry flow (dead ends and disconnected pieces carry exactly zero)."""
        return self.flow_um3_per_s != 0

    @property
    def velocity_um_per_s(self) -> np.ndarray:
        """Cross-section mean velocity |q|/(π r²) [µm/s] (plug flow along the axis)."""
        return np.abs(self.flow_um3_per_s) / (np.pi * self.network.radius_um ** 2)

    def oriented(self) -> tuple[np.ndarray, np.ndarray]:
        """(upstream, downstream) node of every segment, oriented along its flow; |flow| [E]."""
        seg = self.network.segments.copy()
        rev = self.flow_um3_per_s < 0
        seg[rev] = seg[rev][:, ::-1]
        return seg, np.abs(self.flow_um3_per_s)


def _incidence(net: Network) -> sp.csr_matrix:
    e = len(net.segments)
    rows = np.repeat(np.arange(e), 2)
    cols = net.segments.ravel()
    vals = np.tile([1.0, -1.0], e)
    return sp.csr_matrix((vals, (rows, cols)), shape=(e, len(net.nodes)))


def _component(net: Network, source) -> np.ndarray:
    n = len(net.nodes)
    adj = sp.csr_matrix((np.ones(len(net.segments)), (net.segments[:, 0], net.segments[:, 1])), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    if labels[net.inlet] != labels[net.outlet]:
        raise InputError(f"inlet node {net.inlet} and outlet node {net.outlet} are not connected", path=source,
                         fix="check the segment list, or choose an inlet and outlet in the same vessel tree")
    return labels == labels[net.inlet]


def _solve_scipy(net, res, keep):
    A = _incidence(net)
    C = sp.diags(1.0 / res)
    lap = (A.T @ C @ A).tocsr()
    s = np.zeros(len(net.nodes))
    s[net.inlet], s[net.outlet] = net.qin_um3_per_s, -net.qin_um3_per_s
    free = np.flatnonzero(keep & (np.arange(len(net.nodes)) != net.outlet))
    p = np.zeros(len(net.nodes))
    p[free] = spsolve(lap[free][:, free].tocsc(), s[free])
    return p


def _solve_spice(net, res, keep):
    """Node pressures from an ngspice DC operating point (PySpice). Units mm/mPa·s as SpinFlowSim does,
    so the netlist values are of order 1: R [mPa·s/mm³] = 1e12 R [Pa·s/µm³], Q [mm³/s] = 1e-9 Q [µm³/s],
    node voltage [mPa] = 1e3 p [Pa]."""
    try:
        from PySpice.Spice.Netlist import Circuit
        import logging
        logging.getLogger("PySpice").setLevel(logging.ERROR)
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise InputError("the spice backend needs PySpice, which is not installed",
                         fix="pip install 'dmrimc-bids[spice]' (it also needs the ngspice library: apt-get install "
                             "libngspice0 libngspice0-dev, or set NGSPICE_LIBRARY_PATH)") from exc
    circ = Circuit("network")
    name = lambda i: circ.gnd if i == net.outlet else f"n{i:04d}"  # noqa: E731
    for k, (a, b) in enumerate(net.segments):
        if keep[a]:
            circ.R(f"{k:05d}", name(a), name(b), float(res[k] * 1e12))
    circ.I("in", circ.gnd, name(net.inlet), float(net.qin_mm3_per_s))
    try:
        sim = circ.simulator(temperature=25, nominal_temperature=25, simulator="ngspice-shared")
        op = sim.operating_point()
    except Exception as exc:  # noqa: BLE001 - PySpice/ngspice raise many kinds
        raise InputError(f"PySpice is installed but the ngspice library did not run ({type(exc).__name__}: {exc})",
                         fix="install libngspice0 and libngspice0-dev, or set NGSPICE_LIBRARY_PATH") from exc
    p = np.zeros(len(net.nodes))
    for node in op.nodes.values():
        nm = str(node.name).lower()
        if nm.startswith("n") and nm[1:].isdigit():
            p[int(nm[1:])] = float(np.asarray(node)[0]) * 1e-3
    return p


def solve_flow(net: Network, backend: str = "scipy", plasma_viscosity_pa_s=PLASMA_VISCOSITY_PA_S,
               source=None) -> FlowSolution:
    """Resolve the flows of `net` (backend 'scipy' or 'spice'); Kirchhoff's current law is checked to
    round-off (error if the residual exceeds 1e-9 Qin)."""
    res = segment_resistance(net.radius_um, net.length_um, plasma_viscosity_pa_s)
    keep = _component(net, source)
    if backend == "scipy":
        p = _solve_scipy(net, res, keep)
    elif backend == "spice":
        p = _solve_spice(net, res, keep)
    else:
        raise ValueError(f"unknown flow backend {backend!r} (scipy or spice)")
    a, b = net.segments[:, 0], net.segments[:, 1]
    q = np.where(keep[a], (p[a] - p[b]) / res, 0.0)
    q[np.abs(q) < ZERO_FLOW_REL * net.qin_um3_per_s] = 0.0
    div = np.zeros(len(net.nodes))
    np.add.at(div, a, q)
    np.add.at(div, b, -q)
    div[net.inlet] -= net.qin_um3_per_s
    div[net.outlet] += net.qin_um3_per_s
    kcl = float(np.max(np.abs(div)) / net.qin_um3_per_s)
    if kcl > 1e-9:
        raise InputError(f"flow solve is not mass-conserving (residual {kcl:.2e} Qin)", path=source,
                         fix="check for near-zero radii or lengths in the network")
    return FlowSolution(net, q, p, res, kcl, backend)
