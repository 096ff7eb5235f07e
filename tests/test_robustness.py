"""Cohort-scale behaviour: a killed run resumes without recomputing, parallel runs share an output folder,
and the inputs and outputs pass the BIDS validator."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

CLI = [sys.executable, "-m", "dmrimc_bids.cli.run"]


def _outputs(out: Path) -> dict:
    """Every map (data array) and sidecar/report (text) of a derivatives folder, by relative path."""
    got = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if p.is_dir() or rel.startswith("logs/") or rel == "dataset_description.json":
            continue  # logs and the command line legitimately differ between runs
        got[rel] = np.asarray(nib.load(p).dataobj) if p.name.endswith(".nii.gz") else p.read_text()
    return got


def _same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.mark.slow
def test_killed_run_resumes_with_identical_outputs(single_demo, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = [str(single_demo), str(out), "participant", "-w", str(work), "--seed", "3"]
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    result = None
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
        hits = list(work.rglob("fit_histousim/result_fit_histousim.pklz"))
        if hits:
            result = hits[0]
            break
        time.sleep(0.2)
    assert result is not None and proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "sub-01.html").exists()  # killed before the end
    before = result.stat().st_mtime_ns
    res = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert result.stat().st_mtime_ns == before  # the finished fit node was not recomputed
    fresh = tmp_path / "fresh"
    res = subprocess.run(CLI + [str(single_demo), str(fresh), "participant", "-w", str(tmp_path / "w2"),
                                "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _same(_outputs(out), _outputs(fresh))
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".bidsignore"]  # no temp files left


@pytest.mark.slow
def test_parallel_runs_into_one_output_folder(demo_dir, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(CLI + [str(demo_dir), str(out), "participant", "--participant-label", s],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in ("01", "02")]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert (out / "sub-01.html").is_file() and (out / "sub-02.html").is_file()
    for ses in ("sub-01/dwi/sub-01", "sub-02/ses-1/dwi/sub-02_ses-1", "sub-02/ses-2/dwi/sub-02_ses-2"):
        assert Path(f"{out}/{ses}_space-dwi_model-histousim_param-fin_dwimap.nii.gz").is_file()
    json.loads((out / "dataset_description.json").read_text())
    assert len(list((out / "logs").glob("*_status.tsv"))) == 2  # one per run, never overwritten


def _validator():
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent / "bids-validator-deno")
    if not Path(exe).exists():
        pytest.skip("bids-validator-deno not installed (extra [dev])")
    return exe


def _validate(path) -> list[dict]:
    res = subprocess.run([_validator(), str(path), "--format", "json"], capture_output=True, text=True, timeout=300)
    issues = json.loads(res.stdout)["issues"]["issues"]
    return [i for i in issues if i["severity"] == "error"]


def test_demo_input_passes_the_bids_validator(demo_dir):
    assert _validate(demo_dir) == []


def test_derivatives_pass_the_bids_validator(demo_run, tmp_path):
    _, out, _ = demo_run
    errors = _validate(out)
    assert errors == [], [(e["code"], e.get("location")) for e in errors]
    assert "group_*" in (out / ".bidsignore").read_text()
