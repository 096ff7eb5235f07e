"""`dmrimc-bids-demo OUT`: write a small, valid BIDS dataset of tumour-like multi-Δ PGSE DWI.

Two subjects (sub-02 with two sessions); per series two diffusion times, each with its own b=0
volumes and echo time, b = 0, 25, 50, 100, 200, 450, 600, 1050, 1500, 1950, 2550 s/mm² along 3
directions; Rician noise (SNR 40 at b=0 and the shorter TE). The tissue is NOT made from the
default dictionary (core/phantom.py): five regions from a loose small-celled rim through dense,
large-celled viable tumour to a necrotic core, each a substrate the default dictionary does not
hold (another generator and seeds, one tile read from an SVG), each split into three angular
sectors with off-grid D0in, D0ex and κ, simulated directly for exactly this protocol. A vascular
compartment (fV 0.03-0.10, higher at the rim) carries the signal of blood flowing in one of the
project's generated capillary networks per region (flow simulator, spins.simulate_flow), so the
IVIM and SpinFlowSim branches have something to find. Ground truth (tissue, fV, vm, vs, anb), the
tumour mask and the noise σ map are written under derivatives/groundtruth/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.derivatives import bids_label
from ..core import phantom

SHAPE = (20, 20, 4)
VOXEL_MM = 2.0
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


#: Truth maps written per voxel (the tissue parameters fitted by default).
TRUTH = phantom.TRUTH_PARAMS


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
    mask, region, sector = phantom.phantom_labels(SHAPE, 0.1 * shift)
    sig, truth = phantom.tissue_signals(region.ravel(), sector.ravel(), b, sd, bd)
    fv, vregion, vsig, vmet = vascular(mask, b, sd, bd, shift)
    f = fv.ravel()[:, None]
    sig = (1 - f) * sig + f * vsig[vregion.ravel()]
    gt = {k: truth[:, j].reshape(SHAPE) for j, k in enumerate(TRUTH)}
    gt["fV"] = fv
    for j, name in enumerate(("vm", "vs", "anb")):
        gt[name] = np.where(mask, vmet[vregion, j], np.nan)
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


def rebuild_tissue(out: Path) -> int:
    """Simulate the demo's tissue library (core/phantom.build_tissue_library) for this protocol into out."""
    b, _, sd, bd, _ = protocol()
    from ..core.protocol import Protocol
    svg_dir = Path(__file__).resolve().parents[2] / "docs" / "examples"
    path = phantom.build_tissue_library(Protocol(b, sd, bd), Path(out), svg_dir)
    print(f"demo tissue library written to {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dmrimc-bids-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write the BIDS dataset into")
    ap.add_argument("--seed", type=int, default=1234, help="noise seed")
    ap.add_argument("--rebuild-tissue", action="store_true",
                    help="re-simulate the shipped tissue library (core/phantom.py; about a minute) into OUT")
    args = ap.parse_args(argv)
    if args.rebuild_tissue:
        return rebuild_tissue(args.out)
    root = write_demo(args.out, args.seed)
    print(f"demo BIDS dataset written to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
