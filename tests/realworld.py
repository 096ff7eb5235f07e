"""Real-world-shaped copies of the demo dataset for tests/test_real_world.py: two runs per session (one per
diffusion time, as scanners export multi-Δ protocols), and a QSIPrep-shaped derivatives folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np


def _series(dwi_dir: Path, name: str):
    img = nib.load(dwi_dir / f"{name}_dwi.nii.gz")
    meta = json.loads((dwi_dir / f"{name}_dwi.json").read_text())
    b = np.loadtxt(dwi_dir / f"{name}_dwi.bval")
    vec = np.loadtxt(dwi_dir / f"{name}_dwi.bvec")
    return img, meta, b, vec


def split_runs(demo_dir: Path, dst: Path, keep_timing: bool = True) -> Path:
    """sub-01 of the demo as two runs (run-1: δ 10/Δ 25 ms, TE 55 ms; run-2: δ 15/Δ 45 ms, TE 80 ms), each
    with a scalar-timing sidecar (none when keep_timing is False: TE only)."""
    shutil.copytree(demo_dir, dst, ignore=shutil.ignore_patterns("sub-02"))
    (dst / "participants.tsv").write_text("participant_id\nsub-01\n")
    d = dst / "sub-01" / "dwi"
    img, meta, b, vec = _series(d, "sub-01")
    data = np.asarray(img.dataobj)
    big = np.asarray(meta["BigDelta"])
    for f in d.glob("sub-01_dwi.*"):
        f.unlink()
    for run, sel in ((1, big < 0.035), (2, big >= 0.035)):
        k = np.flatnonzero(sel)
        stem = d / f"sub-01_run-{run}_dwi"
        nib.Nifti1Image(data[..., k], img.affine, img.header).to_filename(f"{stem}.nii.gz")
        np.savetxt(f"{stem}.bval", b[k][None], fmt="%g")
        np.savetxt(f"{stem}.bvec", vec[:, k], fmt="%.6f")
        side = {"EchoTime": float(np.asarray(meta["EchoTime"])[k[0]]), "RepetitionTime": 4.0}
        if keep_timing:
            side.update(SmallDelta=float(np.asarray(meta["SmallDelta"])[k[0]]), BigDelta=float(big[k[0]]))
        Path(f"{stem}.json").write_text(json.dumps(side))
    return dst


def qsiprep_shaped(demo_dir: Path, dst: Path) -> Path:
    """A raw dataset with two runs of sub-01 and derivatives/qsiprep as QSIPrep writes it: the runs
    concatenated in space-T1w (desc-preproc_dwi), a sidecar without top-level timing but with
    SourceMetadata, desc-confounds_timeseries.tsv (original_file), desc-brain_mask and a desc-tumour_mask."""
    raw = split_runs(demo_dir, dst)
    d = raw / "sub-01" / "dwi"
    q = raw / "derivatives" / "qsiprep"
    qd = q / "sub-01" / "dwi"
    qd.mkdir(parents=True)
    (q / "dataset_description.json").write_text(json.dumps(
        {"Name": "QSIPrep output", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "qsiprep", "Version": "1.0.0"}]}))
    parts, bvals, vecs, sources, original = [], [], [], {}, []
    for run in (1, 2):
        img, meta, b, vec = _series(d, f"sub-01_run-{run}")
        parts.append(np.asarray(img.dataobj))
        bvals.append(b)
        vecs.append(vec)
        name = f"sub-01_run-{run}_dwi.nii.gz"
        sources[name] = meta
        original += [f"/data/bids/sub-01/dwi/{name}"] * len(b)
    stem = qd / "sub-01_space-T1w_desc-preproc_dwi"
    nib.Nifti1Image(np.concatenate(parts, axis=3), img.affine).to_filename(f"{stem}.nii.gz")
    np.savetxt(f"{stem}.bval", np.concatenate(bvals)[None], fmt="%g")
    np.savetxt(f"{stem}.bvec", np.concatenate(vecs, axis=1), fmt="%.6f")
    Path(f"{stem}.json").write_text(json.dumps({"RepetitionTime": 4.0, "SourceMetadata": sources,
                                               "Sources": [f"bids:raw:sub-01/dwi/{n}" for n in sources]}))
    (qd / "sub-01_desc-confounds_timeseries.tsv").write_text(
        "framewise_displacement\toriginal_file\n" + "".join(f"0\t{o}\n" for o in original))
    seg = raw / "derivatives" / "segmentation" / "sub-01" / "dwi"
    shutil.copy(seg / "sub-01_desc-tumour_mask.nii.gz", qd / "sub-01_space-T1w_desc-tumour_mask.nii.gz")
    brain = np.ones(img.shape[:3], np.uint8)
    nib.Nifti1Image(brain, img.affine).to_filename(qd / "sub-01_space-T1w_desc-brain_mask.nii.gz")
    return raw
