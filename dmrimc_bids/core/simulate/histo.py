"""Histo-μSim dictionaries from Monte Carlo: substrates x (D0in, D0ex, κ) -> signals for one protocol.

Parameters of each entry, in the published column order (HISTOUSIM_PARAM_NAMES) plus cellularity:
the substrate's metrics (Substrate.metrics: fin, mCS, varCS, skewCS, vCS_sph, vCS_cyl) and the
simulated D0in, D0ex [µm²/ms] and κ [µm/s].
"""

from __future__ import annotations

import itertools

import numpy as np

from ..dictionary import HISTOUSIM_PARAM_NAMES, Dictionary
from ..protocol import Protocol
from ..waveforms import protocol_waveforms
from . import montecarlo

#: Parameter columns of a simulated Histo-μSim dictionary.
PARAM_NAMES = list(HISTOUSIM_PARAM_NAMES) + ["cellularity"]
#: Parameters a fit estimates by default (as in the Histo-μSim paper: fin and vCS_cyl, + D0in, D0ex, κ).
DEFAULT_FIT_PARAMS = ["fin", "vCS_cyl"]
#: Histo-μSim's simulation grid: D0in, D0ex = linspace(0.8, 3, 5) µm²/ms, κ = 0..40 µm/s in 9 steps.
HISTOUSIM_D0 = np.linspace(0.8, 3.0, 5)
HISTOUSIM_KAPPA = np.linspace(0.0, 40.0, 9)


def config_grid(d0in, d0ex, kappa) -> np.ndarray:
    """Every combination [n, 3] of the given D0in, D0ex [µm²/ms] and κ [µm/s] values."""
    return np.array(list(itertools.product(np.atleast_1d(d0in), np.atleast_1d(d0ex), np.atleast_1d(kappa))),
                    dtype=float).reshape(-1, 3)


def entry_params(metrics: dict, configs: np.ndarray) -> np.ndarray:
    """Parameter rows [n, 10] (PARAM_NAMES order) of one substrate's configurations."""
    rows = np.empty((len(configs), len(PARAM_NAMES)))
    for j, name in enumerate(PARAM_NAMES):
        if name == "D0in":
            rows[:, j] = configs[:, 0]
        elif name == "D0ex":
            rows[:, j] = configs[:, 1]
        elif name == "kappa":
            rows[:, j] = configs[:, 2]
        else:
            rows[:, j] = metrics[name]
    return rows


def substrate_seed(seed: int, index: int) -> int:
    """Independent, reproducible walker streams per substrate."""
    return (int(seed) * 1_000_003 + int(index) * 7919) % (2 ** 63)


def simulate_substrate(substrate, protocol: Protocol, configs: np.ndarray, *, seed: int = 0, index: int = 0,
                       area: str = "polygon", config_offset: int = 0, **mc_kwargs):
    """(signals [n, M], params [n, 10], MCResult) for one substrate's configurations; config_offset is
    the position of configs[0] in the substrate's full grid (keeps results independent of job splits)."""
    n_walkers = mc_kwargs.get("n_walkers", montecarlo.HISTOUSIM_WALKERS)
    res = montecarlo.simulate(substrate, protocol, configs[:, 0], configs[:, 1], configs[:, 2],
                              seed=substrate_seed(seed, index), walker_offset=config_offset * n_walkers,
                              **mc_kwargs)
    return res.signals, entry_params(substrate.metrics(area), configs), res


def assemble(parts: list, protocol: Protocol, provenance: dict) -> Dictionary:
    """One Dictionary from per-job (signals, params) parts, in the order given."""
    signals = np.concatenate([p[0] for p in parts])
    params = np.concatenate([p[1] for p in parts])
    prov = dict(provenance)
    prov.setdefault("default_params", DEFAULT_FIT_PARAMS)
    waves = protocol_waveforms(protocol)
    if any(w is not None and w.kind != "PGSE" for w in waves):
        prov["waveforms"] = [None if w is None else w.describe() for w in waves]
    return Dictionary(signals, params, PARAM_NAMES, protocol, {}, prov)


def simulate_dictionary(substrates: list, protocol: Protocol, d0in, d0ex, kappa, *, seed: int = 0,
                        area: str = "polygon", progress: bool = False, **mc_kwargs) -> Dictionary:
    """Serial in-process version of workflows/simulation.py (tests, small jobs)."""
    configs = config_grid(d0in, d0ex, kappa)
    parts, facts = [], []
    for i, sub in enumerate(substrates):
        s, p, res = simulate_substrate(sub, protocol, configs, seed=seed, index=i, area=area,
                                       progress=progress, **mc_kwargs)
        parts.append((s, p))
        facts.append(run_facts(sub, res))
    return assemble(parts, protocol, provenance(facts, seed, area))


def run_facts(substrate, res) -> dict:
    return {"substrate": substrate.describe(), "metrics": substrate.metrics(), "n_walkers": res.n_walkers,
            "n_steps": res.n_steps, "dt_ms": res.dt_ms, "walker_steps": res.walker_steps,
            "seconds": round(res.seconds, 3), "cut_steps": res.cut_steps, "device": res.device}


def provenance(facts, seed, area) -> dict:
    """Dictionary provenance from the per-job run facts (run_facts)."""
    from ... import __version__
    first = facts[0] if facts else {}
    return {"source": "Monte Carlo simulation (dmrimc_bids.core.simulate): 2D random walk in traced cell "
                      "substrates with permeable membranes (Histo-μSim design; see montecarlo.py)",
            "simulator": "dmrimc-bids", "version": __version__, "seed": int(seed),
            "n_walkers": first.get("n_walkers"), "dt_ms": first.get("dt_ms"), "n_steps": first.get("n_steps"),
            "metrics_area": area, "substrates": facts}


def load_substrate(spec: dict):
    """A Substrate from a JSON-able spec: {"svg": path, "scale_um_per_unit" | "width_um", ["tolerance_um"]},
    {"packing": {cell_packing keyword arguments}} or {"tissue": {tissue_packing keyword arguments}}."""
    from .generate import cell_packing, tissue_packing
    from .substrate import FLATTEN_TOLERANCE_UM, read_svg

    if "packing" in spec:
        return cell_packing(**spec["packing"])
    if "tissue" in spec:
        return tissue_packing(**spec["tissue"])
    return read_svg(spec["svg"], spec.get("scale_um_per_unit"), spec.get("width_um"),
                    tolerance_um=spec.get("tolerance_um", FLATTEN_TOLERANCE_UM))


def simulate_scaled_substrate(substrate, protocol: Protocol, design: dict, *, n_walkers: int, step_um: float,
                              seed: int = 0, index: int = 0, area: str = "hull", device: str = "cpu"):
    """(signals [n, M], params [n, 10], facts) of one substrate by diffusion-time scaling
    (scaled.substrate_entries; design as there)."""
    import time

    from . import scaled

    t0 = time.perf_counter()
    signals, configs = scaled.substrate_entries(substrate, protocol, design, n_walkers=n_walkers, step_um=step_um,
                                                seed=substrate_seed(seed, index), device=device)
    facts = {"substrate": substrate.describe(), "metrics": substrate.metrics(area), "n_walkers": int(n_walkers),
             "step_um": float(step_um), "dt_ms": scaled.dt_for_step(step_um, 1.0), "n_steps": None,
             "method": "diffusion-time scaling (core/simulate/scaled.py)",
             "seconds": round(time.perf_counter() - t0, 3), "device": device}
    return signals, entry_params(substrate.metrics(area), configs), facts


#: Substrates of ``--dictionary-source simulate`` (simulated for the subject's exact protocol): the
#: first 12 of the default dictionary's population (dictionary_default.default_substrate_specs).
def default_simulation_substrates() -> list:
    from ..dictionary_default import default_substrate_specs
    return default_substrate_specs()[:12]
