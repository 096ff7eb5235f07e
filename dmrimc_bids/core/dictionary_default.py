"""The embedded default dictionary: Monte Carlo signals of a population of generated tumour substrates.

Built by ``dmrimc-sim default-dictionary`` (workflows/simulation.init_default_dictionary_wf):

- **substrates**: DEFAULT_N_SUBSTRATES tiles of simulate.generate.tissue_packing, their knobs drawn
  from a scrambled Sobol sequence (default_substrate_specs): intra-cellular fraction 0.02-0.95 asked, cell
  size spread (cv 0.15-0.5), irregular, elongated and clustered cells. Cell size follows the tumour
  trend that denser tissue holds larger cells, with a wide band around it (see `target_vcs_um`);
- **configurations**: without permeability every (D0in, D0ex) pair of DEFAULT_DESIGN["d0"] (7 x 7); with
  permeability, walks at D0ex/D0in in DEFAULT_DESIGN["ratios"] and κ/D0in in
  DEFAULT_DESIGN["kappa_per_d0"], each giving every D0in of the grid (simulate/scaled.py: one walk serves
  every diffusivity by diffusion-time scaling); the κ/D0in values are spaced so that every D0in has κ
  values spread over 0-40 µm/s (κ above 40 dropped); DICTIONARY_WALKERS walkers per walk;
- **protocol**: DEFAULT_TIMING_GRID, every b of 8 values for every (δ, Δ - δ) of a 9 x 10 grid (δ 2.5-40
  ms, Δ up to 100 ms); Dictionary.match interpolates between the nodes, so any PGSE protocol inside the
  grid is matched without a tolerance;
- a walker step of 0.75 µm at every diffusivity (simulate/scaled.DEFAULT_STEP_UM: 0.3 x the radius of a
  5 µm cell; Histo-μSim's 0.0464 ms steps are 0.91 µm long at D = 3 µm²/ms).

Shipped as float16 signals in a compressed .npz (float16's 5e-4 resolution is below the Monte Carlo
error of ~2e-3 at the default walkers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .dictionary import Dictionary, TimingGrid
from .errors import EX_NOINPUT, InputError

#: The protocol grid of the default dictionary: δ [ms], gap Δ - δ [ms], b [s/mm²].
DEFAULT_TIMING_GRID = TimingGrid(small_delta=[2.5, 5.0, 8.0, 11.0, 15.0, 20.0, 26.0, 33.0, 40.0],
                                 gap=[0.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0, 36.0, 46.0, 60.0],
                                 b=[150.0, 350.0, 600.0, 900.0, 1300.0, 1800.0, 2400.0, 3000.0])
#: Configurations (simulate.scaled.substrate_entries): diffusivities [µm²/ms], D0ex/D0in ratios and
#: κ/D0in [µm/s per µm²/ms] of the permeable walks, largest κ [µm/s].
DEFAULT_DESIGN = {"d0": [0.8, 1.1667, 1.5333, 1.9, 2.2667, 2.6333, 3.0],
                  "ratios": [0.5, 0.75, 1.0, 1.4, 2.1],
                  "kappa_per_d0": [3.0, 6.0, 9.0, 12.0, 16.0, 21.0, 27.0, 35.0, 45.0], "kappa_max": 40.0}
#: Diffusivities [µm²/ms] and permeabilities [µm/s] of ``--dictionary-source simulate`` (a dictionary
#: simulated for the subject's exact protocol from the first 12 default substrates).
SIMULATE_D0 = [0.8, 1.5, 2.25, 3.0]
SIMULATE_KAPPA = [0.0, 20.0, 40.0]
DEFAULT_N_SUBSTRATES = 128
#: Walkers per walk of the embedded default dictionary.
DICTIONARY_WALKERS = 8000
DEFAULT_SEED = 2026


@dataclass(frozen=True)
class Recipe:
    """What a default dictionary is built from: the population size (default_substrate_specs, Sobol: the
    first 2^k substrates of a larger population are the smaller one), the protocol grid, the configuration
    design, the walkers per walk and the storage (None: float16 signals; a rank: that many principal
    components, benchmarks/dictionary_storage.py)."""
    name: str
    n_substrates: int
    timing_grid: TimingGrid
    design: dict
    walkers: int = DICTIONARY_WALKERS
    seed: int = DEFAULT_SEED
    storage_rank: int | None = None

    def describe(self) -> dict:
        return {"recipe": self.name, "n_substrates": self.n_substrates, "timing_grid": self.timing_grid.describe(),
                "design": self.design, "walkers": self.walkers, "seed": self.seed, "storage_rank": self.storage_rank}


#: v1: the shipped dictionary. v2 (issue #32): twice the substrates between v1's (fewer estimates pinned to a
#: substrate's values), b nodes from 25 s/mm² (IVIM protocols' low b; a tissue model at low b, #22) and
#: permeable walks up to κ = 70 µm/s (the published substrates reach 40 µm/s, where v1's range ended and
#: pulled those estimates low). Built on a GPU (benchmarks/default_dictionary_gpu.py --recipe v2, resumable
#: across device leases) or on the CPU at fewer walkers (dmrimc-sim default-dictionary --recipe v2).
RECIPES = {
    "v1": Recipe("v1", DEFAULT_N_SUBSTRATES, DEFAULT_TIMING_GRID, DEFAULT_DESIGN),
    "v2": Recipe("v2", 256, TimingGrid(small_delta=DEFAULT_TIMING_GRID.small_delta.tolist(),
                                       gap=DEFAULT_TIMING_GRID.gap.tolist(),
                                       b=[25.0, 50.0, 100.0, 150.0, 250.0, 350.0, 600.0, 900.0, 1300.0, 1800.0,
                                          2400.0, 3000.0]),
                 {**DEFAULT_DESIGN, "kappa_per_d0": [3.0, 6.0, 9.0, 12.0, 16.0, 21.0, 27.0, 35.0, 45.0, 60.0, 80.0],
                  "kappa_max": 70.0}, storage_rank=64),
}
#: The recipe of the dictionary in the package (data/default_histousim.npz).
SHIPPED_RECIPE = "v1"
#: Cell areas of the tissue metrics: convex hulls, as the published Histo-μSim geometry scripts.
DEFAULT_METRICS_AREA = "hull"
_NAME = "default_histousim"


def target_vcs_um(fin: float, u: float) -> float:
    """Volume-weighted cell size [µm] asked of a substrate with intra-cellular fraction fin, for a
    uniform draw u in [0, 1]: a band of ±5 µm around 7 + 26·fin² µm, within 5-34 µm. Dense tumour
    tissue holds larger cells (the 18 traced substrates of the Histo-μSim paper span vCS 8 µm at fin
    0.02-0.13 to 15-19 µm at fin 0.75-0.87); the band is wide enough to hold small-cell dense tissue
    (the traced mouse substrate: fin 0.67, vCS 8.4 µm). The tiles realise somewhat smaller sizes than
    asked at high fin, where cells are cut to their neighbourhoods."""
    return float(np.clip(7.0 + 26.0 * fin ** 2 + 10.0 * (u - 0.5), 5.0, 34.0))


def _vcs_over_mean(cv: float) -> float:
    """vCS_cyl / mean cell size of Gamma-distributed sizes with coefficient of variation cv."""
    from scipy.special import gammaln

    a = 1.0 / cv ** 2
    return math.exp((gammaln(a + 6) - gammaln(a + 2)) / 4) / a


def default_substrate_specs(n: int = DEFAULT_N_SUBSTRATES, seed: int = DEFAULT_SEED) -> list:
    """Specs {"tissue": tissue_packing keyword arguments} of the default substrate population."""
    from scipy.stats import qmc

    u = qmc.Sobol(6, seed=seed).random_base2(max(0, math.ceil(math.log2(max(n, 1)))))[:n]
    specs = []
    for i, x in enumerate(u):
        fin = 0.02 + 0.93 * float(x[0])
        cv = 0.15 + 0.35 * float(x[2])
        specs.append({"tissue": {"fin": round(fin, 4),
                                 "mean_cs_um": round(target_vcs_um(fin, float(x[1])) / _vcs_over_mean(cv), 3),
                                 "cv_cs": round(cv, 4), "irregularity": round(0.05 + 0.25 * float(x[3]), 4),
                                 "elongation": round(1.0 + 0.6 * float(x[4]), 4),
                                 "clustering": round(float(x[5]), 4), "n_cells": 120, "seed": seed + i}})
    return specs


def default_dictionary_path() -> Path:
    """Where the embedded default dictionary lives (package data)."""
    return Path(__file__).resolve().parents[1] / "data" / f"{_NAME}.npz"


def finalise_default(dic: Dictionary, out, rank: int | None = None) -> Path:
    """Store a freshly simulated default dictionary compactly with its checksum: float16 signals, compressed, or
    (rank) their first principal components (Dictionary.save; a recipe's storage_rank)."""
    import json

    if rank:
        npz = dic.save(out, rank=rank)
        assert json.loads(npz.with_suffix(".json").read_text())["checksum"] == dic.checksum()
        return npz
    dic.signals = dic.signals.astype(np.float16).astype(np.float32)
    dic.provenance["storage"] = "float16 signals, compressed npz"
    npz = dic.save(out)  # writes the .json with the checksum of the rounded signals
    with atomic_path(npz) as tmp:
        np.savez_compressed(tmp, signals=dic.signals.astype(np.float16), params=dic.params)
    meta = json.loads(npz.with_suffix(".json").read_text())
    assert meta["checksum"] == dic.checksum()
    return npz


def default_dictionary() -> Dictionary:
    """Load the embedded default dictionary (simulated; see the module docstring)."""
    path = default_dictionary_path()
    if not path.is_file():
        raise InputError("the embedded default dictionary is missing from the installation", path=path,
                         fix="rebuild it with `dmrimc-sim default-dictionary` or pass --dictionary",
                         exit_code=EX_NOINPUT)
    return Dictionary.load(path)


def load_selected(dictionary_file: str | None, params=None, fix=None) -> Dictionary:
    """The dictionary at ``dictionary_file`` (the embedded default when empty), with its parameters
    selected (Dictionary.select: params estimated, fix {name: value} fixed)."""
    d = Dictionary.load(dictionary_file) if dictionary_file else default_dictionary()
    if dictionary_file:
        d.provenance.setdefault("file", str(dictionary_file))
    else:
        d.provenance.setdefault("origin", "the embedded default dictionary")
    return d.select(params or None, fix or None)
