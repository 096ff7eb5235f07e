"""The demo's tissue: a tumour phantom whose truth varies continuously and whose signals do not come
from the default dictionary.

- **Substrates**: N_DEMO_SUBSTRATES tiles of `simulate.generate.ellipse_lattice` (elliptical cells with
  log-normal sizes on a jittered hexagonal lattice), a generator that shares no step with the default
  dictionary's `tissue_packing` (Gamma sizes, random sequential addition, Voronoi-confined outlines).
  Their intra-cellular fraction and cell size follow a scrambled Halton design (demo_substrate_specs):
  fin 0.15-0.82 and a size band around a linear size-density trend, so the truth holds one fin and one
  vCS level per substrate.
- **Diffusivities and permeability**: each substrate is walked at DEMO_CONFIGS_PER_SUBSTRATE
  (D0in, D0ex, κ) of its own, drawn continuously and kept off the default dictionary's grid nodes.
- **Layout** (phantom_labels): smooth fields over an ellipsoidal tumour choose each voxel's substrate:
  the fraction rises from a loose rim to dense viable tumour and falls to a sparse necrotic core
  (depth), the cell size varies around the tumour (angle), and the configuration by angle and slice.

Signals are simulated directly (montecarlo.simulate, not the default dictionary's diffusion-time
scaling) for exactly the demo protocol and shipped as package data (data/demo_tissue.npz), rebuilt by
``dmrimc-bids-demo --rebuild-tissue``.

Units: b [s/mm²], δ/Δ [ms], D [µm²/ms], κ [µm/s], sizes [µm].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .protocol import Protocol

N_DEMO_SUBSTRATES = 32
DEMO_CONFIGS_PER_SUBSTRATE = 3
#: Ranges of the demo's substrate design and configurations: fin, D0in and D0ex [µm²/ms], κ [µm/s].
DEMO_FIN = (0.15, 0.82)
DEMO_D0IN, DEMO_D0EX, DEMO_KAPPA = (0.9, 2.6), (1.1, 2.9), (3.0, 36.0)
DEMO_WALKERS = 8000
DEMO_STEP_UM = 0.5
DEMO_SEED = 77
TRUTH_PARAMS = ("fin", "vCS_cyl", "D0in", "D0ex", "kappa")


def tissue_library_path() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "demo_tissue.npz"


def _halton(dim: int, n: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    return qmc.Halton(dim, scramble=True, seed=seed).random(n)


def demo_substrate_specs(n: int = N_DEMO_SUBSTRATES, seed: int = DEMO_SEED) -> list:
    """ellipse_lattice keyword arguments of the demo's substrates, with "size_rank" in [0, 1]: where the
    substrate sits in the size band at its fraction (phantom_labels reads it)."""
    specs = []
    for k, (u_fin, u_size, u_seed) in enumerate(_halton(3, n, seed)):
        fin = DEMO_FIN[0] + (DEMO_FIN[1] - DEMO_FIN[0]) * float(u_fin)
        mean_cs = 4.5 + 16.0 * fin + 6.0 * (float(u_size) - 0.5)  # µm: denser tumour holds larger cells
        cv = max(0.05, 0.28 - 0.3 * fin)  # dense lattices hold only cells of similar size
        specs.append({"fin": round(fin, 4), "mean_cs_um": round(mean_cs, 3), "cv_cs": round(cv, 3),
                      "max_aspect": round(1.0 + 0.6 * (1.0 - fin), 3), "n_side": 12,
                      "seed": 9000 + k + int(1000 * u_seed), "size_rank": float(u_size)})
    return specs


def demo_configs(n_substrates: int = N_DEMO_SUBSTRATES, seed: int = DEMO_SEED) -> np.ndarray:
    """(D0in, D0ex [µm²/ms], κ [µm/s]) [n_substrates, DEMO_CONFIGS_PER_SUBSTRATE, 3], drawn from a
    scrambled Halton sequence; D0in and D0ex are moved at least 0.04 µm²/ms away from the default
    dictionary's diffusivity nodes (DEFAULT_DESIGN: d0, and d0 x ratio for D0ex), so no (D0in, κ) pair
    is one of its walks either."""
    from .dictionary_default import DEFAULT_DESIGN

    u = _halton(3, n_substrates * DEMO_CONFIGS_PER_SUBSTRATE, seed + 1)
    cfg = np.column_stack([lo + (hi - lo) * u[:, j] for j, (lo, hi) in enumerate((DEMO_D0IN, DEMO_D0EX, DEMO_KAPPA))])
    d0 = np.array(DEFAULT_DESIGN["d0"])
    for j, nodes in enumerate((d0, np.unique(np.outer(d0, [1.0] + list(DEFAULT_DESIGN["ratios"]))))):
        cfg[:, j] = [_off_nodes(v, nodes, 0.04) for v in cfg[:, j]]
    return cfg.reshape(n_substrates, DEMO_CONFIGS_PER_SUBSTRATE, 3)


def _off_nodes(value: float, nodes: np.ndarray, margin: float) -> float:
    """``value``, or the nearest value at least ``margin`` from every node when it is closer to one."""
    if np.min(np.abs(nodes - value)) >= margin:
        return float(value)
    cand = np.concatenate([nodes - margin * 1.001, nodes + margin * 1.001])
    cand = cand[np.min(np.abs(cand[:, None] - nodes[None, :]), 1) >= margin]
    return float(cand[np.argmin(np.abs(cand - value))])


def demo_substrate(spec: dict):
    """The Substrate of one demo_substrate_specs entry."""
    from .simulate.generate import ellipse_lattice

    return ellipse_lattice(**{k: v for k, v in spec.items() if k != "size_rank"})


def build_tissue_library(protocol: Protocol, out: Path, *, n_walkers: int = DEMO_WALKERS,
                         step_um: float = DEMO_STEP_UM, seed: int = DEMO_SEED) -> Path:
    """Simulate every (substrate, configuration) of the phantom for the unique diffusion-weighted
    measurements of ``protocol`` and write them (signals [S, C, M], truth [S, C, 5], size_rank [S], the
    measurements) to ``out``."""

    from .simulate import montecarlo
    from .simulate.scaled import dt_for_step

    dw = protocol.b > 0
    meas = np.unique(np.stack([protocol.b[dw], protocol.small_delta_ms[dw], protocol.big_delta_ms[dw]], 1), axis=0)
    sim_prot = Protocol(meas[:, 0], meas[:, 1], meas[:, 2])
    specs, cfg = demo_substrate_specs(), demo_configs()
    dt = dt_for_step(step_um, float(cfg[..., :2].max()))
    signals = np.empty(cfg.shape[:2] + (len(meas),))
    truth = np.empty(cfg.shape[:2] + (len(TRUTH_PARAMS),))
    names = []
    for s, spec in enumerate(specs):
        sub = demo_substrate(spec)
        c = cfg[s]
        res = montecarlo.simulate(sub, sim_prot, c[:, 0], c[:, 1], c[:, 2], n_walkers=n_walkers, dt_ms=dt,
                                  seed=seed + s, progress=False)
        signals[s] = res.signals
        m = sub.metrics("hull")
        truth[s] = np.column_stack([np.full(len(c), m["fin"]), np.full(len(c), m["vCS_cyl"]), c])
        names.append(f"{sub.name} ({sub.n_cells} cells, fin {m['fin']:.3f}, vCS {m['vCS_cyl']:.2f} µm)")
        print(f"[{s + 1}/{len(specs)}] {names[-1]}", flush=True)
    meta = {"substrates": names, "specs": specs, "n_walkers": n_walkers, "step_um": step_um, "seed": seed,
            "metrics_area": "hull", "generator": "dmrimc_bids.core.simulate.generate.ellipse_lattice",
            "method": "montecarlo.simulate (direct walks, not diffusion-time scaling)"}
    out = Path(out)
    with atomic_path(out) as tmp:
        np.savez_compressed(tmp, signals=signals.astype(np.float32), truth=truth, measurements=meas,
                            size_rank=np.array([sp["size_rank"] for sp in specs]), meta=json.dumps(meta))
    return out


def _ellipsoid(shape):
    """(x, y, normalised radius) per voxel of ``shape`` for the demo's tumour, an ellipsoid of semi-axes 0.75,
    0.6 and 1.6 in coordinates running -1..1 along each axis (r <= 1 inside)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return x, y, np.sqrt((x / 0.75) ** 2 + (y / 0.6) ** 2 + (z / 1.6) ** 2)


def _fin_field(depth):
    """Asked intra-cellular fraction at a depth (0 at the rim, 1 at the centre): a loose rim (about 0.25),
    dense viable tumour (0.85 at 40 % depth) and a sparse necrotic core (0.15)."""
    return DEMO_FIN[0] + (DEMO_FIN[1] - DEMO_FIN[0]) * np.exp(-((depth - 0.4) / 0.28) ** 2)


def phantom_labels(shape, shift: float = 0.0, library: Path | None = None):
    """(tumour mask, substrate index, configuration index) per voxel of an ellipsoidal tumour in ``shape``.

    The substrate of a voxel is the library's nearest in (fin, size rank) to two smooth fields: the
    fraction by depth (_fin_field) and the size rank by angle around the tumour (rotated by ``shift``
    turns); its configuration follows angle and slice."""
    with np.load(library or tissue_library_path()) as z:
        fin, rank, n_cfg = z["truth"][:, 0, 0], z["size_rank"], z["truth"].shape[1]
    x, y, r = _ellipsoid(shape)
    mask = r <= 1.0
    depth = 1.0 - np.clip(r, 0, 1)
    angle = (np.arctan2(y, x) / (2 * np.pi) + 0.5 + shift) % 1.0
    want_fin = _fin_field(depth)
    want_rank = 0.5 + 0.5 * np.cos(2 * np.pi * angle)
    cost = ((fin[None, :] - want_fin.reshape(-1, 1)) / (DEMO_FIN[1] - DEMO_FIN[0])) ** 2 + \
        (rank[None, :] - want_rank.reshape(-1, 1)) ** 2
    substrate = cost.argmin(1).reshape(shape)
    slice_turn = np.broadcast_to(np.arange(shape[2]) / max(shape[2], 1), shape)
    config = (np.floor((angle * 2 + slice_turn) * n_cfg) % n_cfg).astype(int)
    return mask, substrate, config


def tissue_signals(substrate, config, b, small_delta, big_delta, library: Path | None = None):
    """(signals [V, N] at the per-volume protocol (b = 0 gives 1), truth [V, 5] (TRUTH_PARAMS)) of voxels
    with the given substrate and configuration indices, from the shipped tissue library."""
    with np.load(library or tissue_library_path()) as z:
        lib, truth, meas = z["signals"], z["truth"], z["measurements"]
    out = np.ones((len(substrate), len(b)))
    for k, (bb, sd, bd) in enumerate(zip(b, small_delta, big_delta)):
        if bb <= 0:
            continue
        hit = np.flatnonzero(np.all(np.isclose(meas, [bb, sd, bd]), axis=1))
        if hit.size == 0:
            raise ValueError(f"the demo tissue library has no measurement b={bb:g}, δ={sd:g}, Δ={bd:g}: rebuild it")
        out[:, k] = lib[substrate, config, hit[0]]
    return out, truth[substrate, config]


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


def demo_shells() -> Protocol:
    """The distinct (b, δ, Δ, TE) of demo_protocol, in acquisition order (b = 0 first at each diffusion time)."""
    b, _, sd, bd, te = demo_protocol()
    rows = np.stack([b, sd, bd, te], 1)
    first = np.sort(np.unique(rows, axis=0, return_index=True)[1])
    return Protocol(b[first], sd[first], bd[first], echo_time_ms=te[first])


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

    x, y, r = _ellipsoid(SHAPE)
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
    mask, substrate, config = phantom_labels(SHAPE, 0.1 * shift)
    sig, truth = tissue_signals(substrate.ravel(), config.ravel(), b, sd, bd)
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
