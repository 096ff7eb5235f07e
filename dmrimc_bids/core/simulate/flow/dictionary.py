"""SpinFlowSim-style vascular dictionaries: network realisations -> signals for one protocol + metrics.

Each entry is one realisation (geometry, inlet/outlet, Qin): its vascular signal S_V(b)/S_V(0) for every
measurement of the protocol (`spins.simulate_flow`) and its metrics (`metrics.network_metrics` + anb).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ...dictionary import Dictionary
from ...protocol import Protocol
from ...waveforms import protocol_waveforms
from .metrics import METRIC_UNITS, network_metrics
from .network import Network
from .resolve import solve_flow
from .spins import anb_published, simulate_flow

#: Parameter columns of a flow dictionary.
FLOW_PARAM_NAMES = ["vm", "vs", "anb", "qin", "qm", "qs", "rm", "lm", "lmp", "npaths", "vw", "qw", "rw"]
#: Parameters fitted by default (SpinFlowSim paper: vm, vs, ANB).
DEFAULT_FLOW_FIT_PARAMS = ["vm", "vs", "anb"]
#: Spins per network realisation of a run-time flow dictionary. 8000, not 2000: the tissue step removes the
#: vascular component the flow entries predict, and with 2000 spins their Monte Carlo noise moved the tissue
#: maps of two seeds by up to 0.15 posterior SD at the 99th-percentile voxel (benchmarks/seed_stability.py,
#: issue #38); the simulation costs about 4 s more per protocol, once (cached).
DEFAULT_SPINS = 8000


def realisation_seed(seed: int, index: int) -> int:
    """Spin streams of realisation `index`: independent of how realisations are split into jobs."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:7], "little")


def network_checksum(net: Network) -> str:
    h = hashlib.sha256()
    for a in (net.nodes, net.segments, net.radius_um, np.array([net.inlet, net.outlet, net.qin_um3_per_s])):
        h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    return h.hexdigest()[:16]


def param_names(published_anb: bool = False) -> list:
    """Columns of a flow dictionary (+ anb_published, the published ANB rule, when asked for)."""
    return FLOW_PARAM_NAMES + (["anb_published"] if published_anb else [])


def simulate_realisations(nets: list, protocol: Protocol, *, n_spins: int = DEFAULT_SPINS, seed: int = 0,
                          offset: int = 0, backend: str = "scipy", published_anb: bool = False,
                          progress=None, track: dict | None = None) -> tuple:
    """(signals [n, M], params [n, P], SpinTrack or None) of realisations nets; offset = index of nets[0]
    in the whole set. published_anb adds the column anb_published (spins.anb_published, 5000 spins: ~0.1 s
    per realisation). track {"realisation": global index, "spins": R, "times_ms": [...]}: record that
    realisation's first R spins (`spins.simulate_flow`) when it is one of nets."""
    waves = protocol_waveforms(protocol)
    names = param_names(published_anb)
    sig = np.empty((len(nets), len(protocol)))
    par = np.empty((len(nets), len(names)))
    tracked = None
    for k, net in enumerate(nets):
        sol = solve_flow(net, backend=backend)
        rec = {}
        if track and track.get("realisation") == offset + k:
            rec = {"track_spins": track["spins"], "track_times_ms": track["times_ms"]}
        sim = simulate_flow(sol, protocol.b, waves, n_spins=n_spins, seed=realisation_seed(seed, offset + k), **rec)
        tracked = sim.track if rec else tracked
        m = network_metrics(sol)
        m["anb"] = sim.anb
        if published_anb:
            m["anb_published"] = anb_published(sol, seed=realisation_seed(seed, offset + k))
        sig[k] = sim.signals
        par[k] = [m[n] for n in names]
        if progress:
            progress(1)
    return sig, par, tracked


def flow_provenance(nets: list, n_spins: int, seed: int, extra: dict | None = None) -> dict:
    prov = {"simulator": "dmrimc_bids.core.simulate.flow (event-driven, exact phase)",
            "histology_informed": False, "kind": "spinflowsim", "n_spins": n_spins, "seed": seed,
            "default_params": DEFAULT_FLOW_FIT_PARAMS,
            "signal": "vascular signal S_V(b)/S_V(0); two in-plane directions averaged (planar), x/y/z (3D)",
            "networks": sorted({n.name for n in nets}), "n_realisations": len(nets),
            "realisations_sha256": hashlib.sha256(json.dumps([network_checksum(n) for n in nets]).encode()
                                                  ).hexdigest()}
    prov.update(extra or {})
    return prov


def network_ids(nets: list) -> np.ndarray:
    """Structure id [n] of realisations: the index of their network's name among the sorted names (every
    inlet/outlet pair and Qin of one network shares it), so estimators leave whole networks out."""
    names = sorted({n.name for n in nets})
    return np.array([names.index(n.name) for n in nets], dtype=np.int64)


def assemble_flow(parts: list, protocol: Protocol, provenance: dict, structure=None) -> Dictionary:
    """A flow dictionary from (signals, params) parts; structure: network id per entry (network_ids)."""
    sig = np.concatenate([p[0] for p in parts])
    par = np.concatenate([p[1] for p in parts])
    names = param_names(par.shape[1] > len(FLOW_PARAM_NAMES))
    return Dictionary(sig, par, names, protocol, {n: METRIC_UNITS[n] for n in names}, provenance, structure)


def simulate_flow_dictionary(nets: list, protocol: Protocol, *, n_spins: int = DEFAULT_SPINS, seed: int = 0,
                             backend: str = "scipy", published_anb: bool = False, progress=None) -> Dictionary:
    """A flow dictionary for `protocol` from network realisations (one entry each)."""
    sig, par, _ = simulate_realisations(nets, protocol, n_spins=n_spins, seed=seed, backend=backend,
                                        published_anb=published_anb, progress=progress)
    return assemble_flow([(sig, par)], protocol, flow_provenance(nets, n_spins, seed, {"backend": backend}),
                         network_ids(nets))


def flow_dictionary_for_protocol(protocol: Protocol, cache_dir, network_files=(), n_spins: int = DEFAULT_SPINS,
                                 seed: int = 0, b0_threshold: float | None = None, progress=None) -> tuple:
    """(path, Dictionary, cached): the flow dictionary of ``protocol``'s distinct (b, δ, Δ) with b > b0_threshold,
    simulated from network_files (or the generated default realisations) and cached in cache_dir under the
    sha256 of the measurements, networks, spins, seed and software version. The pipeline's route (no
    protocol matching to get wrong) and `dmrimc-sim design --branch vascular`'s."""
    from ...dictionary import cached_dictionary
    from ...protocol import B0_THRESHOLD, unique_measurements
    from .generate import default_realisations
    from .network import read_network

    rows, sim_prot = unique_measurements(protocol, B0_THRESHOLD if b0_threshold is None else b0_threshold)
    nets = [read_network(f) for f in network_files] if network_files else default_realisations()

    def build():
        dic = simulate_flow_dictionary(nets, sim_prot, n_spins=n_spins, seed=seed,
                                       progress=progress(len(nets)) if progress else None)
        dic.provenance["networks_source"] = "user" if network_files else "generated (core/simulate/flow/generate.py)"
        return dic

    return cached_dictionary(cache_dir, "spinflowsim", {
        "protocol": rows.tolist(), "networks": [network_checksum(n) for n in nets], "spins": n_spins, "seed": seed,
        "network_ids": True}, build)
