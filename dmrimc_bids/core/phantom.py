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


#: ---- the demo dataset's acquisition and vascular component (cli/demo.py writes the files) ----
SHAPE = (20, 20, 4)
#: b > 20 s/mm² (the default b=0 threshold) and > 20 apart (the shell tolerance); 25 is below the tissue dictionary's grid (tissue signal
#: extrapolated mono-exponentially from b = 50), the rest on it; 450 and 600 give segmented IVIM its ADC.
B_SHELLS = [25, 50, 100, 200, 450, 600, 1050, 1500, 1950, 2550]
N_B0 = 2
DIRECTIONS = np.array([[1, 0, 0], [0, 0.8, 0.6], [0.6, -0.48, 0.64]])
#: (δ ms, Δ ms, TE ms) of the two diffusion times (between the default dictionary's timing nodes).
TIMINGS = [(10.0, 25.0, 55.0), (15.0, 45.0, 80.0)]
T2_MS = 80.0
S0 = 1000.0
SNR_B0 = 40.0


def demo_protocol():
    """Per-volume b [s/mm²], bvecs [N, 3], δ, Δ, TE [ms]."""
    b, vec, sd, bd, te = [], [], [], [], []
    for small, big, echo in TIMINGS:
        for _ in range(N_B0):
            b.append(0.0), vec.append([0, 0, 0]), sd.append(small), bd.append(big), te.append(echo)
        for bv in B_SHELLS:
            for d in DIRECTIONS:
                b.append(float(bv)), vec.append(list(d / np.linalg.norm(d))), sd.append(small), bd.append(big)
                te.append(echo)
    return tuple(np.array(x, float) for x in (b, vec, sd, bd, te))


#: Vascular truth maps: model-ivim fV and model-spinflowsim vm, vs, anb.
VASCULAR_TRUTH = {"fV": "ivim", "vm": "spinflowsim", "vs": "spinflowsim", "anb": "spinflowsim"}
#: Flow realisations of the demo: generated networks (core/simulate/flow/generate.py) with vm 2-10 mm/s
#: (faster flow leaves no vascular signal above b = 25 s/mm²; slower flow leaves so much above b = 250 that
#: it biases the tissue fit, as it would in a patient); one per vascular region. Their generator seed is
#: not the default flow dictionary's (0), so the demo's networks are not in the dictionary it is fitted with.
N_FLOW_REGIONS = 6
DEMO_FLOW_SEED = 77
#: The demo's networks: the generator's plain networks at SpinFlowSim's Qin range (the default flow
#: dictionary's vary in shape and reach faster flows), so the demo is not made from the dictionary's design.
DEMO_FLOW_NETWORKS = {"varied_shapes": False, "qin_range": (1.5e-4, 5.5e-3)}


def vascular_component(mask, b, sd, bd, shift, seed=0):
    """(fV map, realisation index per voxel, vascular signals [n_real, M], metrics [n_real, 3] vm, vs, anb)."""
    from .simulate.flow.generate import default_realisations
    from .simulate.flow.metrics import network_metrics
    from .simulate.flow.resolve import solve_flow
    from .simulate.flow.spins import simulate_flow
    from .waveforms import pgse

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    r = np.sqrt((x / 0.75) ** 2 + (y / 0.6) ** 2 + (z / 1.6) ** 2)
    # fV 0.02-0.15 (the range of benchmarks/joint_model.py), higher at the rim
    fv = np.where(mask, 0.02 + 0.13 * np.clip(r, 0, 1) ** 2, 0.02)
    nets = default_realisations(seed=DEMO_FLOW_SEED, **DEMO_FLOW_NETWORKS)
    sols = [solve_flow(n) for n in nets]
    vm = np.array([network_metrics(s)["vm"] for s in sols])
    pick = np.flatnonzero((vm > 2.0) & (vm < 10.0))
    pick = pick[np.argsort(vm[pick])][np.linspace(0, pick.size - 1, N_FLOW_REGIONS).astype(int)]
    angle = (np.arctan2(y, x) / (2 * np.pi) + 0.5 + 0.1 * shift) % 1.0
    region = np.minimum((angle * N_FLOW_REGIONS).astype(int), N_FLOW_REGIONS - 1)
    waves = [None if bb <= 20 else pgse(s, d) for bb, s, d in zip(b, sd, bd)]
    sig, met = [], []
    for k, i in enumerate(pick):
        sim = simulate_flow(sols[i], b, waves, n_spins=4000, seed=seed + k)
        m = network_metrics(sols[i])
        sig.append(sim.signals)
        met.append([m["vm"], m["vs"], sim.anb])
    return fv, region, np.array(sig), np.array(met)


def demo_session(rng, shift: float = 0.0):
    """(noisy DWI [SHAPE + (M,)] float32, ground truth {name: map}, tumour mask, noise σ) of one demo
    subject/session: tissue signals of the regions (tissue_signals) plus the vascular component, scaled by
    T2 decay at each TE, with Rician noise of σ = S0 e^{-TE1/T2} / SNR_B0 drawn from rng."""
    b, vec, sd, bd, te = demo_protocol()
    mask, region, sector = phantom_labels(SHAPE, 0.1 * shift)
    sig, truth = tissue_signals(region.ravel(), sector.ravel(), b, sd, bd)
    fv, vregion, vsig, vmet = vascular_component(mask, b, sd, bd, shift)
    f = fv.ravel()[:, None]
    sig = (1 - f) * sig + f * vsig[vregion.ravel()]
    gt = {k: truth[:, j].reshape(SHAPE) for j, k in enumerate(TRUTH_PARAMS)}
    gt["fV"] = fv
    for j, name in enumerate(("vm", "vs", "anb")):
        gt[name] = np.where(mask, vmet[vregion, j], np.nan)
    s0 = S0 * np.exp(-te / T2_MS)
    sigma = S0 * np.exp(-TIMINGS[0][2] / T2_MS) / SNR_B0
    clean = sig * s0[None, :]
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    return noisy.reshape(SHAPE + (len(b),)).astype(np.float32), gt, mask, sigma
