"""`dmrimc-bids-demo OUT`: write a small, valid BIDS dataset of tumour-like multi-Δ PGSE DWI.

Two subjects (sub-02 with two sessions); per series two diffusion times, each with its own b=0
volumes and echo time, b = 0, 25, 50, 100, 200, 450, 600, 1050, 1500, 1950, 2550 s/mm² along 3
directions; Rician noise (SNR 40 at b=0 and the shorter TE). Tissue signals come from the embedded default dictionary
(Monte Carlo in generated cell packings): each tissue region is one of its substrates (dense
small cells in the core, looser and larger towards the rim), and D0in, D0ex and κ vary smoothly
between the dictionary's grid values (trilinear interpolation of the simulated signals), so the fit
has to interpolate. A vascular compartment (fV 0.03-0.10, higher at the rim) carries the signal of
blood flowing in one of the project's generated capillary networks per region (flow simulator,
spins.simulate_flow), so the IVIM and SpinFlowSim branches have something to find. Ground truth
(tissue, fV, vm, vs, anb), the tumour mask and the noise σ map are written under derivatives/groundtruth/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.derivatives import bids_label
from ..core.dictionary_default import default_dictionary

SHAPE = (20, 20, 4)
VOXEL_MM = 2.0
#: b > 20 s/mm² (the default b=0 threshold) and > 20 apart (the shell tolerance); 25 is below the tissue dictionary's grid (tissue signal
#: extrapolated mono-exponentially from b = 50), the rest on it; 450 and 600 give segmented IVIM its ADC.
B_SHELLS = [25, 50, 100, 200, 450, 600, 1050, 1500, 1950, 2550]
N_B0 = 2
DIRECTIONS = np.array([[1, 0, 0], [0, 0.8, 0.6], [0.6, -0.48, 0.64]])
#: (δ ms, Δ ms, TE ms) of the two diffusion times, on the default dictionary's grid.
TIMINGS = [(10.0, 25.0, 55.0), (15.0, 45.0, 80.0)]
T2_MS = 80.0
S0 = 1000.0
SNR_B0 = 40.0
SESSIONS = {"01": [None], "02": ["1", "2"]}


def protocol():
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


#: Truth maps written per voxel (the dictionary's fitted-by-default parameters).
TRUTH = ("fin", "vCS_cyl", "D0in", "D0ex", "kappa")


def phantom(rng, shift=0.0):
    """Tumour mask, substrate index per voxel and smooth D0in, D0ex [µm²/ms], κ [µm/s] maps."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    r = np.sqrt((x / 0.75) ** 2 + (y / 0.6) ** 2 + (z / 1.6) ** 2)
    mask = r <= 1.0
    t = np.clip(r, 0, 1)
    # substrates of the default dictionary: index = 3·(packing level) + (size level)
    packing = np.where(t < 0.45, 3, np.where(t < 0.75, 2, 1))  # dense core, looser rim
    packing[~mask] = 0
    size = np.clip(((x + 1) / 2 * 3 + shift).astype(int), 0, 2)  # left-right gradient of cell size
    cont = {"D0in": 1.0 + 1.6 * (y + 1) / 2, "D0ex": 2.8 - 1.2 * t,
            "kappa": np.clip(5.0 + 30.0 * (z + 1) / 2 + 5 * shift, 0, 40)}
    cont["D0in"][~mask], cont["D0ex"][~mask], cont["kappa"][~mask] = 2.0, 2.9, 20.0
    return mask, 3 * packing + size, cont


def forward(dic, substrate, d0in, d0ex, kappa, b, sd, bd):
    """Signals [n_vox, n_meas]: the dictionary's entries of each voxel's substrate, trilinearly
    interpolated in (D0in, D0ex, κ), at the measurements (b, δ, Δ) (b = 0 gives 1)."""
    from scipy.interpolate import RegularGridInterpolator

    prot = dic.protocol
    def column(bv, s, d):
        hit = np.flatnonzero((np.abs(prot.b - bv) < 1e-6) & (prot.small_delta_ms == s) & (prot.big_delta_ms == d))
        return int(hit[0]) if bv > 20 and hit.size else -1

    cols = np.array([column(bv, s, d) for bv, s, d in zip(b, sd, bd)])
    names = dic.names
    keys = dic.params[:, [names.index("fin"), names.index("vCS_cyl")]]
    block = np.concatenate([[0], np.cumsum(np.any(np.diff(keys, axis=0) != 0, axis=1))])  # simulated order
    grid = [np.unique(dic.params[:, names.index(n)]) for n in ("D0in", "D0ex", "kappa")]
    low = (b > 20) & (cols < 0)  # below the grid: extrapolated from b = 50 (mono-exponential)
    if low.any():
        ref = np.flatnonzero((np.abs(prot.b - 50) < 1e-6))
        cols[low] = [ref[(prot.small_delta_ms[ref] == s) & (prot.big_delta_ms[ref] == d)][0]
                     for s, d in zip(sd[low], bd[low])]
    out = np.ones((len(substrate), len(b)))
    pts = np.stack([d0in, d0ex, kappa], 1)
    for k in range(int(block.max()) + 1):
        vox = np.flatnonzero(substrate == k)
        if vox.size == 0:
            continue
        rows = np.flatnonzero(block == k)
        p = dic.params[rows][:, [names.index(n) for n in ("D0in", "D0ex", "kappa")]]
        idx = [np.searchsorted(g, p[:, j]) for j, g in enumerate(grid)]
        cube = np.empty(tuple(len(g) for g in grid) + (int((cols >= 0).sum()),))
        cube[idx[0], idx[1], idx[2]] = dic.signals[rows][:, cols[cols >= 0]]
        out[np.ix_(vox, np.flatnonzero(cols >= 0))] = RegularGridInterpolator(grid, cube)(pts[vox])
    if low.any():
        out[:, low] = out[:, low] ** (b[low] / 50.0)
    return out, [dic.params[int(np.flatnonzero(block == k)[0])] for k in range(int(block.max()) + 1)]


#: Vascular truth maps: model-ivim fV and model-spinflowsim vm, vs, anb.
VASCULAR_TRUTH = {"fV": "ivim", "vm": "spinflowsim", "vs": "spinflowsim", "anb": "spinflowsim"}
#: Flow realisations of the demo: generated networks (core/simulate/flow/generate.py) with vm 2-10 mm/s
#: (faster flow leaves no vascular signal above b = 25 s/mm²; slower flow leaves so much above b = 250 that
#: it biases the tissue fit, as it would in a patient); one per vascular region.
N_FLOW_REGIONS = 6


def vascular(mask, b, sd, bd, shift, seed=0):
    """(fV map, realisation index per voxel, vascular signals [n_real, M], metrics [n_real, 3] vm, vs, anb)."""
    from ..core.simulate.flow.generate import default_realisations
    from ..core.simulate.flow.metrics import network_metrics
    from ..core.simulate.flow.resolve import solve_flow
    from ..core.simulate.flow.spins import simulate_flow
    from ..core.waveforms import pgse

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    r = np.sqrt((x / 0.75) ** 2 + (y / 0.6) ** 2 + (z / 1.6) ** 2)
    fv = np.where(mask, 0.03 + 0.07 * np.clip(r, 0, 1) ** 2, 0.03)
    nets = default_realisations()
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


def write_series(root: Path, sub: str, ses: str | None, rng, shift=0.0) -> None:
    b, vec, sd, bd, te = protocol()
    mask, substrate, cont = phantom(rng, shift)
    dic = default_dictionary()
    sig, sub_params = forward(dic, substrate.ravel(), cont["D0in"].ravel(), cont["D0ex"].ravel(),
                              cont["kappa"].ravel(), b, sd, bd)
    fv, region, vsig, vmet = vascular(mask, b, sd, bd, shift)
    f = fv.ravel()[:, None]
    sig = (1 - f) * sig + f * vsig[region.ravel()]
    gt = dict(cont)
    gt["fV"] = fv
    for j, name in enumerate(("vm", "vs", "anb")):
        gt[name] = np.where(mask, vmet[region, j], np.nan)
    for name in ("fin", "vCS_cyl"):
        col = np.array([p[dic.names.index(name)] for p in sub_params])
        gt[name] = col[substrate]
    s0 = S0 * np.exp(-te / T2_MS)
    sigma = S0 * np.exp(-TIMINGS[0][2] / T2_MS) / SNR_B0
    clean = sig * s0[None, :]
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    data = noisy.reshape(SHAPE + (len(b),)).astype(np.float32)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "dwi"
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, affine).to_filename(d / f"{name}_dwi.nii.gz")
    (d / f"{name}_dwi.bval").write_text(" ".join(f"{v:g}" for v in b) + "\n")
    (d / f"{name}_dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in vec.T) + "\n")
    side = {"SmallDelta": [round(v / 1000, 6) for v in sd], "BigDelta": [round(v / 1000, 6) for v in bd],
            "EchoTime": [round(v / 1000, 6) for v in te], "RepetitionTime": 4.0, "MagneticFieldStrength": 3,
            "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}
    (d / f"{name}_dwi.json").write_text(json.dumps(side, indent=1) + "\n")
    g = root / "derivatives" / "groundtruth" / rel
    g.mkdir(parents=True, exist_ok=True)
    for k in TRUTH + tuple(VASCULAR_TRUTH):
        v = gt[k]
        model = VASCULAR_TRUTH.get(k, "histousim")
        nib.Nifti1Image(v.astype(np.float32), affine).to_filename(
            g / f"{name}_space-dwi_model-{model}_param-{bids_label(k)}_dwimap.nii.gz")
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(g / f"{name}_desc-tumour_mask.nii.gz")
    nib.Nifti1Image(np.full(SHAPE, sigma, np.float32), affine).to_filename(g / f"{name}_desc-sigma_noise.nii.gz")


def write_demo(out, seed: int = 1234) -> Path:
    """Write the demo dataset into ``out``; returns its path."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "dmrimc-bids demo: tumour-like multi-diffusion-time PGSE", "BIDSVersion": "1.10.0",
         "DatasetType": "raw", "License": "CC0", "Authors": ["dmrimc-bids developers"]}, indent=1) + "\n")
    (root / "README").write_text(__doc__)
    (root / "participants.tsv").write_text("participant_id\tage\n" + "".join(f"sub-{s}\tn/a\n" for s in SESSIONS))
    (root / ".bidsignore").write_text("derivatives/\n")
    for i, (sub, sessions) in enumerate(SESSIONS.items()):
        for j, ses in enumerate(sessions):
            write_series(root, sub, ses, rng, shift=0.5 * i + 0.5 * j)
    gdir = root / "derivatives" / "groundtruth"
    (gdir / "dataset_description.json").write_text(json.dumps(
        {"Name": "dmrimc-bids demo ground truth", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "dmrimc-bids-demo", "Description": f"seed {seed}"}]}, indent=1) + "\n")
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dmrimc-bids-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write the BIDS dataset into")
    ap.add_argument("--seed", type=int, default=1234, help="noise seed")
    args = ap.parse_args(argv)
    root = write_demo(args.out, args.seed)
    print(f"demo BIDS dataset written to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
