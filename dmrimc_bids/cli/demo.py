"""`dmrimc-bids-demo OUT`: write a small, valid BIDS dataset of tumour-like multi-Δ PGSE DWI.

Two subjects (sub-02 with two sessions); per series two diffusion times, each with its own b=0
volumes and echo time, b = 0, 25, 50, 100, 200, 450, 600, 1050, 1500, 1950, 2550 s/mm² along 3
directions; Rician noise (SNR 40 at b=0 and the shorter TE). The tissue is NOT made from the
default dictionary (core/phantom.py) and varies continuously: 32 substrates of another generator
(elliptical cells with log-normal sizes on a jittered hexagonal lattice, simulate.generate.ellipse_lattice)
spanning fin 0.15-0.8 and vCS 6-18 µm, laid out by smooth fields (a loose rim, dense viable tumour and a
sparse necrotic core by depth; cell size by angle), each walked at three (D0in, D0ex, κ) of its own off
the dictionary's grid, simulated directly for exactly this protocol. A vascular compartment (fV
0.02-0.15, higher at the rim) carries the signal of blood flowing in one of the project's generated
capillary networks per region (flow simulator, spins.simulate_flow), so the
IVIM and SpinFlowSim branches have something to find. Ground truth (tissue, fV, vm, vs, anb), the
tumour mask and the noise σ map are written under derivatives/groundtruth/; the tumour mask and the σ
map, as a segmentation and noise-estimation pipeline would give them, also under
derivatives/segmentation/, the folder the app is pointed at (``--derivatives``): it never reads a
derivatives folder it was not given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from . import add_version
from ..bids.derivatives import bids_label
from ..core import phantom

VOXEL_MM = 2.0
SESSIONS = {"01": [None], "02": ["1", "2"]}
#: derivatives/<SEGMENTATION>: the demo's tumour masks and noise σ maps, the --derivatives folder of a demo run
SEGMENTATION = "segmentation"


def write_series(root: Path, sub: str, ses: str | None, rng, shift=0.0) -> None:
    """One subject/session of the demo (core/phantom.demo_session) as BIDS files and its ground truth."""
    b, vec, sd, bd, te = phantom.demo_protocol()
    data, gt, mask, sigma = phantom.demo_session(rng, shift)
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
    for k in phantom.TRUTH_PARAMS + tuple(phantom.VASCULAR_TRUTH):
        v = gt[k]
        model = phantom.VASCULAR_TRUTH.get(k, "histousim")
        nib.Nifti1Image(v.astype(np.float32), affine).to_filename(
            g / f"{name}_space-dwi_model-{model}_param-{bids_label(k)}_dwimap.nii.gz")
    seg = root / "derivatives" / SEGMENTATION / rel
    seg.mkdir(parents=True, exist_ok=True)
    for folder in (g, seg):
        nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(folder / f"{name}_desc-tumour_mask.nii.gz")
        nib.Nifti1Image(np.full(phantom.SHAPE, sigma, np.float32), affine).to_filename(
            folder / f"{name}_desc-sigma_noise.nii.gz")


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
    (root / "derivatives" / SEGMENTATION / "dataset_description.json").write_text(json.dumps(
        {"Name": "dmrimc-bids demo tumour segmentation and noise maps", "BIDSVersion": "1.10.0",
         "DatasetType": "derivative", "GeneratedBy": [{"Name": "dmrimc-bids-demo", "Description": f"seed {seed}"}]},
        indent=1) + "\n")
    return root


def rebuild_tissue(out: Path) -> int:
    """Simulate the demo's tissue library (core/phantom.build_tissue_library) for this protocol into out."""
    b, _, sd, bd, _ = phantom.demo_protocol()
    from ..core.protocol import Protocol
    path = phantom.build_tissue_library(Protocol(b, sd, bd), Path(out))
    print(f"demo tissue library written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dmrimc-bids-demo", description=__doc__.replace("`", ""),   # no markup in --help
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap, "dmrimc-bids-demo")
    ap.add_argument("out", type=Path, help="folder to write the BIDS dataset into")
    ap.add_argument("--seed", type=int, default=1234, help="noise seed")
    ap.add_argument("--rebuild-tissue", action="store_true",
                    help="re-simulate the shipped tissue library (core/phantom.py; about two minutes on 2 cores) into OUT")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.rebuild_tissue:
        return rebuild_tissue(args.out)
    root = write_demo(args.out, args.seed)
    print(f"demo BIDS dataset written to {root}; run it with: dmrimc-bids {root} <out> participant "
          f"--derivatives {root / 'derivatives' / SEGMENTATION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
