"""The demo's tissue: a tumour phantom whose signals do not come from the default dictionary.

Regions from the rim to the core (DEMO_REGIONS): a loose rim of small cells, increasingly dense and
large-celled viable tumour, and a necrotic core of sparse debris. Each region is a substrate the
default dictionary does not hold: cells of the older Voronoi generator (simulate.generate.cell_packing,
seeds outside the default population) and, in one region, a tile read from an SVG. Each region is
split into three angular sectors with their own off-grid (D0in, D0ex, κ) (DEMO_CONFIGS), so every
parameter varies across the tumour. Signals are simulated directly (montecarlo.simulate, not the
default dictionary's diffusion-time scaling) for exactly the demo protocol and shipped as package
data (data/demo_tissue.npz), rebuilt by ``dmrimc-bids-demo --rebuild-tissue``.

Units: b [s/mm²], δ/Δ [ms], D [µm²/ms], κ [µm/s], sizes [µm].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .protocol import Protocol

#: Regions from the rim (index 0) to the core, each holding the same number of tumour voxels:
#: cell_packing arguments or an SVG tile.
DEMO_REGIONS = [
    {"name": "rim", "packing": {"fin": 0.35, "mean_cs_um": 7.0, "cv_cs": 0.3, "seed": 501}},
    {"name": "outer", "svg": "cells.svg"},
    {"name": "viable", "packing": {"fin": 0.7, "mean_cs_um": 12.0, "cv_cs": 0.3, "seed": 503}},
    {"name": "dense", "packing": {"fin": 0.83, "mean_cs_um": 15.0, "cv_cs": 0.25, "seed": 504}},
    {"name": "necrotic", "packing": {"fin": 0.12, "mean_cs_um": 6.0, "cv_cs": 0.5, "seed": 505}},
]
#: (D0in, D0ex [µm²/ms], κ [µm/s]) of the three angular sectors: none on the default dictionary's grid.
DEMO_CONFIGS = [(1.05, 1.45, 7.0), (1.75, 2.65, 31.0), (2.45, 2.05, 18.0)]
DEMO_WALKERS = 6000
DEMO_STEP_UM = 0.5
DEMO_SEED = 77
TRUTH_PARAMS = ("fin", "vCS_cyl", "D0in", "D0ex", "kappa")


def tissue_library_path() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "demo_tissue.npz"


def region_substrate(region: dict, svg_dir: Path):
    """The Substrate of one DEMO_REGIONS entry."""
    from .simulate.generate import cell_packing
    from .simulate.substrate import read_svg

    if "svg" in region:
        return read_svg(Path(svg_dir) / region["svg"], scale_um_per_unit=1.0)
    return cell_packing(n_cells=100, irregularity=0.2, **region["packing"])


def build_tissue_library(protocol: Protocol, out: Path, svg_dir: Path, *, n_walkers: int = DEMO_WALKERS,
                         step_um: float = DEMO_STEP_UM, seed: int = DEMO_SEED) -> Path:
    """Simulate every (region, sector) of the phantom for the unique diffusion-weighted measurements of
    ``protocol`` and write them (signals [R, C, M], truth [R, C, 5], the measurements) to ``out``."""
    import os

    from .simulate import montecarlo
    from .simulate.scaled import dt_for_step

    dw = protocol.b > 0
    meas = np.unique(np.stack([protocol.b[dw], protocol.small_delta_ms[dw], protocol.big_delta_ms[dw]], 1), axis=0)
    sim_prot = Protocol(meas[:, 0], meas[:, 1], meas[:, 2])
    cfg = np.array(DEMO_CONFIGS, float)
    dt = dt_for_step(step_um, float(cfg[:, :2].max()))
    signals = np.empty((len(DEMO_REGIONS), len(cfg), len(meas)))
    truth = np.empty((len(DEMO_REGIONS), len(cfg), len(TRUTH_PARAMS)))
    names = []
    for r, region in enumerate(DEMO_REGIONS):
        sub = region_substrate(region, svg_dir)
        res = montecarlo.simulate(sub, sim_prot, cfg[:, 0], cfg[:, 1], cfg[:, 2], n_walkers=n_walkers, dt_ms=dt,
                                  seed=seed + r, progress=True)
        signals[r] = res.signals
        m = sub.metrics("hull")
        truth[r] = np.column_stack([np.full(len(cfg), m["fin"]), np.full(len(cfg), m["vCS_cyl"]), cfg])
        names.append(f"{region['name']}: {sub.name} ({sub.n_cells} cells, fin {m['fin']:.2f}, "
                     f"vCS {m['vCS_cyl']:.1f} µm)")
    meta = {"regions": names, "configs": DEMO_CONFIGS, "n_walkers": n_walkers, "step_um": step_um, "seed": seed,
            "metrics_area": "hull", "method": "montecarlo.simulate (direct walks, not diffusion-time scaling)"}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(tmp, signals=signals.astype(np.float32), truth=truth, measurements=meas,
                        meta=json.dumps(meta))
    os.replace(tmp, out)
    return out


def phantom_labels(shape, shift: float = 0.0):
    """(tumour mask, region index, sector index) per voxel of an ellipsoidal tumour in ``shape``:
    regions by depth from the rim (DEMO_REGIONS: rim outside, necrosis at the centre; equal voxel
    counts), sectors by angle (rotated by ``shift`` turns)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = np.sqrt((x / 0.75) ** 2 + (y / 0.6) ** 2 + (z / 1.6) ** 2)
    mask = r <= 1.0
    depth = 1.0 - np.clip(r, 0, 1)  # 0 at the rim, 1 at the centre
    n = len(DEMO_REGIONS)
    ends = np.quantile(depth[mask], np.arange(1, n) / n)  # equal numbers of tumour voxels per region
    region = np.searchsorted(ends, depth, side="right")
    angle = (np.arctan2(y, x) / (2 * np.pi) + 0.5 + shift) % 1.0
    sector = np.minimum((angle * len(DEMO_CONFIGS)).astype(int), len(DEMO_CONFIGS) - 1)
    return mask, region, sector


def tissue_signals(region, sector, b, small_delta, big_delta, library: Path | None = None):
    """(signals [V, N] at the per-volume protocol (b = 0 gives 1), truth [V, 5] (TRUTH_PARAMS)) of voxels
    with the given region and sector indices, from the shipped tissue library."""
    with np.load(library or tissue_library_path()) as z:
        lib, truth, meas = z["signals"], z["truth"], z["measurements"]
    out = np.ones((len(region), len(b)))
    for k, (bb, sd, bd) in enumerate(zip(b, small_delta, big_delta)):
        if bb <= 0:
            continue
        hit = np.flatnonzero(np.all(np.isclose(meas, [bb, sd, bd]), axis=1))
        if hit.size == 0:
            raise ValueError(f"the demo tissue library has no measurement b={bb:g}, δ={sd:g}, Δ={bd:g}: rebuild it")
        out[:, k] = lib[region, sector, hit[0]]
    return out, truth[region, sector]
