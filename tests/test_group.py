"""Group level: ROI statistics (against numpy/scipy), cohort tables, failures, label images and atlases."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import spearmanr

from dmrimc_bids.cli.run import main
from dmrimc_bids.core.roistats import label_rois, robust_z, roi_statistics, spearman_matrix


def test_roi_statistics_against_numpy():
    rng = np.random.default_rng(1)
    vals = rng.normal(2.0, 0.5, (6, 5, 4))
    vals[0, 0, 0] = np.nan
    roi = rng.random((6, 5, 4)) > 0.4
    got = roi_statistics(vals, roi)
    v = vals[roi & np.isfinite(vals)]
    q1, q3 = np.percentile(v, [25, 75])
    assert got["n"] == v.size and got["mean"] == pytest.approx(v.mean()) and got["sd"] == pytest.approx(v.std(ddof=1))
    assert got["median"] == pytest.approx(np.median(v)) and got["iqr"] == pytest.approx(q3 - q1)
    empty = roi_statistics(vals, np.zeros_like(roi))
    assert empty["n"] == 0 and np.isnan(empty["mean"])


def test_spearman_matrix_against_scipy_pairwise_complete():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    x[:, 1] = x[:, 0] ** 3 + 0.1 * x[:, 1]
    x[:20, 2] = np.nan
    rho = spearman_matrix(x)
    assert rho[0, 1] == pytest.approx(spearmanr(x[:, 0], x[:, 1])[0])
    ok = np.isfinite(x[:, 2])
    assert rho[0, 2] == pytest.approx(spearmanr(x[ok, 0], x[ok, 2])[0]) and rho[2, 2] == pytest.approx(1.0)
    assert np.isnan(spearman_matrix(np.ones((10, 2)))[0, 1])  # constant column


def test_robust_z_flags_one_outlier_only():
    v = np.array([0.50, 0.52, 0.49, 0.51, 0.48, 0.53, 0.95])
    z = robust_z(v)
    assert np.abs(z[:-1]).max() < 3.5 < z[-1]
    assert np.all(robust_z(v[:4]) == 0)  # too few values to call anything an outlier


def test_label_rois():
    lab = np.array([[0, 1], [2, 2]])
    rois = label_rois(lab, {0: "", 1: "a", 2: "b", 3: "absent"})
    assert set(rois) == {"a", "b"} and rois["b"].sum() == 2


@pytest.fixture
def derivs(demo_run, tmp_path):
    """A private copy of the demo participant outputs."""
    _, out, _ = demo_run
    dst = tmp_path / "deriv"
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("group*"))
    return dst


def _rows(tsv):
    with open(tsv, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _load(out, sub, model, param):
    return nib.load(out / f"sub-{sub}/dwi/sub-{sub}_space-dwi_model-{model}_param-{param}_dwimap.nii.gz").get_fdata()


def test_group_tables_and_report(demo_dir, derivs, tmp_path, capsys, monkeypatch):
    from dmrimc_bids.reports import figures
    labels = []
    real = figures.correlation_matrix
    monkeypatch.setattr(figures, "correlation_matrix", lambda rho, names, title: labels.extend(names) or real(rho, names, title))
    code = main([str(demo_dir), str(derivs), "group", "-w", str(tmp_path / "w"),
                 "--derivatives", str(demo_dir / "derivatives" / "segmentation")])
    assert code == 0, capsys.readouterr().err
    rows = _rows(derivs / "group_histousim.tsv")
    keys = [(r["participant_id"], r["session_id"], r["roi"]) for r in rows]
    assert keys == [("sub-01", "n/a", "fit"), ("sub-01", "n/a", "tumour"), ("sub-02", "ses-1", "fit"),
                    ("sub-02", "ses-1", "tumour"), ("sub-02", "ses-2", "fit"), ("sub-02", "ses-2", "tumour")]
    fin, ec = _load(derivs, "01", "histousim", "fin"), _load(derivs, "01", "histousim", "exitcode")
    tumour = nib.load(demo_dir / "derivatives/groundtruth/sub-01/dwi/sub-01_desc-tumour_mask.nii.gz").get_fdata() > 0
    for r, roi in zip(rows[:2], (ec == 1, (ec == 1) & tumour)):
        v = fin[roi]
        assert int(r["fin_n"]) == v.size and float(r["fin_mean"]) == pytest.approx(v.mean(), rel=1e-5)
        assert float(r["fin_median"]) == pytest.approx(np.median(v), rel=1e-5)
        assert float(r["fin_sd"]) == pytest.approx(v.std(ddof=1), rel=1e-5)
    vm = _load(derivs, "01", "spinflowsim", "vm")
    ecv = _load(derivs, "01", "spinflowsim", "exitcode")
    flow = _rows(derivs / "group_spinflowsim.tsv")[0]
    assert float(flow["vm_mean"]) == pytest.approx(vm[ecv == 1].mean(), rel=1e-5)
    dd = json.loads((derivs / "group_histousim.json").read_text())
    assert set(dd) == set(rows[0]) and dd["D0in_mean"]["Units"] == "um^2/ms" and "Units" not in dd["fin_n"]
    # identifiability: the median contraction over the fitted voxels, per subject/session and parameter
    ident = _rows(derivs / "group_identifiability.tsv")
    sub1 = {(r["model"], r["parameter"]): r for r in ident if r["participant_id"] == "sub-01"}
    con = nib.load(derivs / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_desc-contraction_dwimap.nii.gz"
                   ).get_fdata()
    assert float(sub1[("histousim", "fin")]["contraction_median"]) == pytest.approx(np.median(con[ec == 1]), rel=1e-4)
    assert {r["verdict"] for r in ident} <= {"not informed by the data", "weakly informed", "informed"}
    assert ("spinflowsim", "vm") in sub1 and len({r["session_id"] for r in ident}) == 3
    assert set(json.loads((derivs / "group_identifiability.json").read_text())) == set(ident[0])
    html = (derivs / "group.html").read_text()
    assert 'id="identifiability"' in html and "median contraction" in html
    for sect in ("cohort", "failures", "outliers", "distributions", "correlation"):
        assert f'id="{sect}"' in html
    assert "Spearman" in html and "None: every subject/session" in html
    # the correlation matrix names each parameter with its model (main: two rows called "fV", one "D")
    assert len(labels) == len(set(labels)) and {"fV (ivim)", "fV (spinflowsim)", "D (ivim)"} <= set(labels), labels


def test_group_lists_failures_and_keeps_going(demo_dir, derivs, tmp_path, capsys):
    logs = derivs / "logs"
    (logs / "29990101-000000_1_status.tsv").write_text(
        "participant_id\tsession_id\tstatus\texit_code\tstage\tmessage\n"
        "sub-03\tn/a\tfailed\t65\tpreflight\tthe .bval has 2 values for 68 volumes\n")
    bad = tmp_path / "rois" / "sub-01" / "dwi"
    bad.mkdir(parents=True)
    (tmp_path / "rois/dataset_description.json").write_text(json.dumps(
        {"Name": "rois", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)).to_filename(bad / "sub-01_desc-lesion_mask.nii.gz")
    code = main([str(demo_dir), str(derivs), "group", "--derivatives", str(tmp_path / "rois"),
                 "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 1 and "sub-03" in err and "sub-01" in err and "ROI geometry" in err
    html = (derivs / "group.html").read_text()
    assert "sub-03" in html and "the .bval has 2 values" in html and "sub-01_desc-lesion_mask.nii.gz" in html
    ids = {r["participant_id"] for r in _rows(derivs / "group_histousim.tsv")}
    assert ids == {"sub-02"}  # the failing subject is listed, the others aggregated


def _dseg(path, shape, affine, split):
    lab = np.ones(shape, np.int16)
    lab[split:] = 2
    nib.Nifti1Image(lab, affine).to_filename(path)
    Path(str(path).replace(".nii.gz", ".tsv")).write_text("index\tname\n1\tleft\n2\tright\n")
    return lab


def test_group_label_image_rois(demo_dir, derivs, tmp_path, capsys):
    root = tmp_path / "parc"
    (root / "sub-01/dwi").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "parc", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    ec = _load(derivs, "01", "histousim", "exitcode")
    img = nib.load(derivs / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.nii.gz")
    lab = _dseg(root / "sub-01/dwi/sub-01_desc-halves_dseg.nii.gz", img.shape, img.affine, 10)
    code = main([str(demo_dir), str(derivs), "group", "--participant-label", "01", "--derivatives", str(root),
                 str(demo_dir / "derivatives" / "segmentation"), "-w", str(tmp_path / "w")])
    assert code == 0, capsys.readouterr().err
    rows = {r["roi"]: r for r in _rows(derivs / "group_histousim.tsv")}
    assert set(rows) == {"fit", "tumour", "halves-left", "halves-right"}  # + the demo's own mask
    assert int(rows["halves-left"]["fin_n"]) == int(((lab == 1) & (ec == 1)).sum()) > 0


@pytest.mark.slow
def test_group_templateflow_atlas_offline(demo_dir, derivs, tmp_path):
    home = tmp_path / "templateflow"
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    pytest.importorskip("templateflow")
    subprocess.run([sys.executable, "-c", "import templateflow.api"], env=env, check=True, capture_output=True)
    tpl = home / "tpl-MNI152NLin2009cAsym"
    stem = "tpl-MNI152NLin2009cAsym_res-01_atlas-Schaefer2018_desc-100Parcels7Networks_dseg"
    if not (tpl / f"{stem}.nii.gz").exists():
        pytest.skip("this templateflow skeleton has no Schaefer2018 entry")
    (tpl / f"{stem}.nii.gz").unlink()
    # a 1 mm 'template-space' atlas covering the maps' field of view (2 mm voxels): resampled by nearest neighbour
    img = nib.load(derivs / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.nii.gz")
    aff = img.affine.copy()
    aff[:3, :3] /= 2
    aff[:3, 3] -= 0.5
    _dseg(tpl / f"{stem}.nii.gz", tuple(2 * s for s in img.shape), aff, 20)
    (tpl / f"{stem}.tsv").unlink(missing_ok=True)
    (tpl / "tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-100Parcels7Networks_dseg.tsv").write_text(
        "index\tname\n1\tleft\n2\tright\n")
    cmd = [sys.executable, "-m", "dmrimc_bids.cli.run", str(demo_dir), str(derivs), "group", "--participant-label",
           "01", "-w", str(tmp_path / "w"), "--atlas", "MNI152NLin2009cAsym:Schaefer2018:100Parcels7Networks:1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["roi"]: r for r in _rows(derivs / "group_histousim.tsv")}
    ec = _load(derivs, "01", "histousim", "exitcode")
    assert int(rows["Schaefer2018-left"]["fin_n"]) == int((ec[:10] == 1).sum()) > 0
    # an atlas without a label table (Harvard-Oxford subcortical): ROIs named by label number
    hospa = tpl / "tpl-MNI152NLin2009cAsym_res-02_atlas-HOSPA_desc-th25_dseg.nii.gz"
    hospa.unlink(missing_ok=True)
    _dseg(hospa, img.shape[:3], img.affine, 10)
    Path(str(hospa).replace(".nii.gz", ".tsv")).unlink()
    res = subprocess.run(cmd[:-1] + ["MNI152NLin2009cAsym:HOSPA:th25:2"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["roi"]: r for r in _rows(derivs / "group_histousim.tsv")}
    assert int(rows["HOSPA-label1"]["fin_n"]) == int((ec[:10] == 1).sum()) > 0 and "HOSPA-label2" in rows
    res = subprocess.run(cmd[:-1] + ["MNI152NLin2009cAsym:NoSuchAtlas"], env=env, capture_output=True, text=True,
                         timeout=300)
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert res.returncode == 66 and len(errors) == 1 and "TEMPLATEFLOW_HOME" in errors[0], res.stderr[-2000:]


def test_group_without_participant_outputs(demo_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(demo_dir), str(tmp_path / "empty"), "group"]) == 66
    assert "run the participant level first" in capsys.readouterr().err


def test_group_lists_interrupted_and_incomplete_sessions(demo_dir, derivs, tmp_path, capsys):
    """After a Ctrl-C (status 'interrupted') and a session left with IVIM maps only, the group level lists
    both (terminal and group.html), leaves them out of the tables and exits 1, unless --allow-incomplete."""
    logs = derivs / "logs"
    (logs / "29990101-000000_1_status.tsv").write_text(
        "participant_id\tsession_id\tstatus\texit_code\tstage\tfailed_voxels\tmessage\n"
        "sub-01\tn/a\tinterrupted\t130\tinterrupted\tn/a\tinterrupted (Ctrl-C)\n")
    for f in (derivs / "sub-02/ses-2/dwi").glob("*model-histousim*"):
        f.unlink()
    code = main([str(demo_dir), str(derivs), "group", "-w", str(tmp_path / "w"),
                 "--derivatives", str(demo_dir / "derivatives" / "segmentation")])
    err = capsys.readouterr().err
    assert code == 1 and "sub-01: interrupted" in err and "sub-02_ses-2: incomplete" in err, err
    html = (derivs / "group.html").read_text()
    assert "interrupted" in html and "incomplete participant run" in html
    ids = {(r["participant_id"], r["session_id"]) for r in _rows(derivs / "group_ivim.tsv")}
    assert ids == {("sub-02", "ses-1")}
    code = main([str(demo_dir), str(derivs), "group", "-w", str(tmp_path / "w2"), "--allow-incomplete",
                 "--derivatives", str(demo_dir / "derivatives" / "segmentation")])
    assert code == 0 and "--allow-incomplete" in capsys.readouterr().err
