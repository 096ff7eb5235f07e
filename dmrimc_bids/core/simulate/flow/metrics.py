"""Network metrics: the quantities SpinFlowSim tabulates, computed as they are defined.

Over the segments that carry flow ("live"; dead ends excluded, as published):
- vm, vs  [mm/s]   mean and population SD (ddof 0) of the segment mean velocity |q|/(π r²);
- qm, qs  [mm³/s]  mean and population SD of |q|;
- rm, lm  [µm]     mean radius and mean length;
- npaths  [-]      number of directed inlet -> outlet paths (dynamic programming on the flow DAG;
                   equals the published enumeration, the SpinFlowSim paper and code, citations: spinflowsim);
- lmp     [µm]     mean path length over all inlet -> outlet paths, Σ_e n_e L_e / npaths, n_e the number
                   of paths through segment e (paths from the inlet to its upstream node x paths from its
                   downstream node to the outlet);
- vw [mm/s], qw [mm³/s], rw [µm]: path-and-length weighted means Σ_e n_e X_e L_e / Σ_e n_e L_e, i.e. the
                   mean of X along all paths per unit path length (the published arrays index nodes by
                   their position in the path and differ by a median 20-80 %: the SpinFlowSim code, citations:
                   spinflowsim; these are the intended quantities);
- anb     [-]      apparent network branching: mean number of segments a spin enters in 100 ms, from
                   the event-driven simulation (`spins.simulate_flow`). The published value counts
                   changes of a time-stepped step vector with exact float comparison; `spins.anb_published`
                   emulates that rule (documented there; within +1..+14 %, median +6 %, of the published
                   arrays), for comparisons with the paper.
"""

from __future__ import annotations

import numpy as np

from ...units import METRIC_DESCRIPTIONS, METRIC_UNITS  # noqa: F401  (the one unit table; re-exported)
from .resolve import FlowSolution


def path_counts(sol: FlowSolution) -> tuple[float, np.ndarray]:
    """(npaths, paths through each segment [E]) on the flow-directed graph (0 for dead segments)."""
    net = sol.network
    seg, _ = sol.oriented()
    live = sol.live
    order = np.argsort(-sol.pressure_pa, kind="stable")  # pressure falls along every live segment
    up, dn = seg[live, 0], seg[live, 1]
    by_up = np.argsort(np.argsort(order)[up], kind="stable")
    fwd = np.zeros(len(net.nodes))
    fwd[net.inlet] = 1.0
    for k in by_up:  # upstream nodes in decreasing pressure
        if up[k] != net.outlet:
            fwd[dn[k]] += fwd[up[k]]
    bwd = np.zeros(len(net.nodes))
    bwd[net.outlet] = 1.0
    for k in by_up[::-1]:
        if up[k] != net.outlet:
            bwd[up[k]] += bwd[dn[k]]
    through = np.zeros(len(net.segments))
    through[np.flatnonzero(live)] = fwd[up] * bwd[dn]
    return float(fwd[net.outlet]), through


def network_metrics(sol: FlowSolution) -> dict:
    """The deterministic metrics (all but anb) of a resolved network, in METRIC_UNITS."""
    net = sol.network
    live = sol.live
    v = sol.velocity_um_per_s[live] * 1e-3
    q = np.abs(sol.flow_um3_per_s[live]) * 1e-9
    r, L = net.radius_um[live], net.length_um[live]
    npaths, through = path_counts(sol)
    n = through[live]
    wl = n * L
    return {"vm": float(v.mean()), "vs": float(v.std()), "qm": float(q.mean()), "qs": float(q.std()),
            "rm": float(r.mean()), "lm": float(L.mean()), "npaths": npaths,
            "lmp": float(wl.sum() / npaths) if npaths else float("nan"),
            "vw": float(np.sum(wl * v) / wl.sum()), "qw": float(np.sum(wl * q) / wl.sum()),
            "rw": float(np.sum(wl * r) / wl.sum()), "qin": net.qin_mm3_per_s}
