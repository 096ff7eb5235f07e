"""Real-world inputs (issue #19): multi-run sessions with their own timing, reruns into one output folder,
damaged files, input provenance, QSIPrep-shaped derivatives, simulators a first try survives, quiet runs.
Each test failed on the code before issue #19 (exit 0 with wrong or mixed results, or a missing feature)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dmrimc_bids.cli.run import main

from .realworld import qsiprep_shaped, split_runs

CLI = [sys.executable, "-m", "dmrimc_bids.cli.run"]
SIM = [sys.executable, "-m", "dmrimc_bids.cli.sim"]
ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


def seg(bids: Path) -> Path:
    return bids / "derivatives" / "segmentation"


def sidecar(out: Path, sub="01", model="histousim", param="fin", space="dwi", ses=None) -> dict:
    rel = f"sub-{sub}/" + (f"ses-{ses}/" if ses else "") + "dwi/"
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    return json.loads((out / rel / f"{stem}_space-{space}_model-{model}_param-{param}_dwimap.json").read_text())


def fitted_protocol(work: Path) -> np.ndarray:
    """The per-volume protocol table the graph read (b, δ, Δ columns)."""
    table = next(work.rglob("dwi_preproc_wf/read_protocol/protocol.tsv"))
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:]]
    return np.array([[float(r[0]), float(r[1]), float(r[2])] for r in rows])


# ---- 1. per-run timing ------------------------------------------------------------------------------------
def test_one_timing_for_runs_that_differ_is_refused(demo_dir, tmp_path, capsys):
    bids = split_runs(demo_dir, tmp_path / "bids")
    code, err = run(capsys, bids, tmp_path / "out", "participant", "--small-delta", "10", "--big-delta", "25",
                    "--derivatives", seg(bids))
    assert code == 64, err
    assert len(errors(err)) == 1 and "--timing" in errors(err)[0] and "run-2" in errors(err)[0], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.nii.gz"))


@pytest.mark.slow
def test_per_run_timing_on_the_command_line(demo_dir, tmp_path, capsys):
    bids = split_runs(demo_dir, tmp_path / "bids", keep_timing=False)  # sidecars: TE only
    work = tmp_path / "work"
    code, err = run(capsys, bids, tmp_path / "out", "participant", "--timing", "run-1:10,25", "run-2:15,45",
                    "--derivatives", seg(bids), "-w", work, "--vascular", "off")
    assert code == 0, err
    prot = fitted_protocol(work)
    dw = prot[:, 0] > 0
    assert set(map(tuple, prot[dw][:, 1:])) == {(10.0, 25.0), (15.0, 45.0)}
    # each run got its own: the volumes of run-1 (first in the table) all have Δ 25 ms
    n1 = len(np.loadtxt(bids / "sub-01/dwi/sub-01_run-1_dwi.bval"))
    assert np.all(prot[:n1, 2] == 25.0) and np.all(prot[n1:, 2] == 45.0)
    # a key that matches no run is a typo, not a silent no-op
    code, err = run(capsys, bids, tmp_path / "out2", "participant", "--timing", "run-3:10,25", "--derivatives", seg(bids))
    assert code == 64 and "run-3" in errors(err)[0], err
    # the same from a TSV keyed by run
    (tmp_path / "timing.tsv").write_text("run\tsmall_delta\tbig_delta\nrun-1\t10\t25\nrun-2\t15\t45\n")
    from dmrimc_bids.bids.protocol import parse_run_timing
    assert parse_run_timing([tmp_path / "timing.tsv"]) == {"run-1": (10.0, 25.0), "run-2": (15.0, 45.0)}


def test_timing_fields_of_converters_and_qsiprep_source_metadata():
    from dmrimc_bids.core.errors import InputError
    from dmrimc_bids.bids.protocol import timing_from_sidecar
    for meta, small, big in (({"DiffusionGradientDuration": 0.012, "DiffusionGradientSeparation": 0.03}, 12, 30),
                             ({"PVM_DwGradDur": 5.5, "PVM_DwGradSep": 12.0}, 5.5, 12),
                             ({"DiffGradientDuration": 9, "DiffGradientSeparation": 21}, 9, 21),
                             ({"SmallDelta": 0.01, "LargeDelta": 0.025}, 10, 25)):
        sd, bd, _ = timing_from_sidecar(meta, 3)
        assert np.allclose(sd, small) and np.allclose(bd, big), meta
    runs = {"a_run-1_dwi.nii.gz": {"SmallDelta": 0.01, "BigDelta": 0.025, "EchoTime": 0.055},
            "a_run-2_dwi.nii.gz": {"SmallDelta": 0.015, "BigDelta": 0.045, "EchoTime": 0.08}}
    files = ["/x/a_run-1_dwi.nii.gz"] * 2 + ["/x/a_run-2_dwi.nii.gz"] * 3
    sd, bd, te = timing_from_sidecar({"SourceMetadata": runs}, 5, original_files=files)
    assert list(bd) == [25, 25, 45, 45, 45] and list(sd) == [10, 10, 15, 15, 15] and list(te) == [55, 55, 80, 80, 80]
    with pytest.raises(InputError, match="differ"):  # runs that differ and nothing mapping volumes to runs
        timing_from_sidecar({"SourceMetadata": runs}, 5)
    same = {k: {**v, "BigDelta": 0.03, "SmallDelta": 0.01} for k, v in runs.items()}
    assert list(timing_from_sidecar({"SourceMetadata": same}, 2)[1]) == [30, 30]


# ---- 2. each run owns its outputs; the group level refuses mixed runs --------------------------------------
@pytest.mark.slow
def test_rerun_with_other_options_leaves_no_stale_maps(single_demo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, single_demo, out, "participant", "--derivatives", seg(single_demo))[0] == 0
    assert (out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-kappa_dwimap.nii.gz").is_file()
    code, err = run(capsys, single_demo, out, "participant", "--derivatives", seg(single_demo), "--vascular", "off",
                    "--fix", "kappa=0")
    assert code == 0, err
    names = sorted(p.name for p in (out / "sub-01/dwi").iterdir())
    assert not [n for n in names if "param-kappa" in n or "model-ivim" in n or "model-spinflowsim" in n], names
    previous = list((out / "logs" / "previous").rglob("*param-kappa_dwimap.nii.gz"))
    assert len(previous) == 1  # the earlier run's maps are kept aside, not deleted
    html = (out / "sub-01.html").read_text()
    assert "model-spinflowsim" not in html and 'id="sub-01-spinflowsim"' not in html


@pytest.mark.slow
def test_group_refuses_maps_of_different_runs(demo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, demo_dir, out, "participant", "--participant-label", "01", "--vascular", "off",
               "--derivatives", seg(demo_dir))[0] == 0
    assert run(capsys, demo_dir, out, "participant", "--participant-label", "02", "--vascular", "off",
               "--derivatives", seg(demo_dir), "--fix", "kappa=0")[0] == 0
    code, err = run(capsys, demo_dir, out, "group")
    assert code == 65 and len(errors(err)) == 1 and "different runs" in err and "--allow-mixed-runs" in err, err
    assert 'fix: {} | {"kappa": 0.0}' in err, err   # the option that differs, with both values
    assert not (out / "group.html").exists()
    code, err = run(capsys, demo_dir, out, "group", "--allow-mixed-runs")
    assert code == 0 and (out / "group.html").is_file(), err
    assert "pooling runs that differ in fix" in err
    assert "Mixed runs:" in (out / "group.html").read_text() and "fix: {}" in (out / "group.html").read_text()
    # each run is on record: the pooled table names each row's run, dataset_description.json lists both runs
    # and each run keeps its own methods text
    rows = [dict(zip(*(line.split("\t") for line in (head, row))))
            for head, *body in [(out / "group_histousim.tsv").read_text().splitlines()] for row in body]
    by_subject = {r["participant_id"]: r["run_options"] for r in rows}
    assert len(set(by_subject.values())) == 2 and all(":" in v for v in by_subject.values()), by_subject
    ours = [g for g in json.loads((out / "dataset_description.json").read_text())["GeneratedBy"]
            if g["Name"] == "dmrimc-bids"]
    assert len(ours) == 2 and "sub-02" in ours[0]["Description"] and "sub-01" in ours[1]["Description"], ours
    fingerprints = {re.search(r"; options (\w+)", g["Description"])[1] for g in ours}
    assert fingerprints == {v.split(":")[1] for v in by_subject.values()}
    assert len(list((out / "logs").glob("*_CITATION.md"))) == 2


# ---- 3. damaged images, failed fits ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damaged_dwi_is_refused(single_demo, tmp_path, capsys, damage):
    f = single_demo / "sub-01/dwi/sub-01_dwi.nii.gz"
    raw = bytearray(f.read_bytes())
    if damage == "flipped":  # a few bytes in the middle of the compressed stream: the gzip CRC fails
        mid = len(raw) // 2
        raw[mid:mid + 8] = bytes(b ^ 0xFF for b in raw[mid:mid + 8])
    else:
        raw = raw[: len(raw) * 2 // 3]
    f.write_bytes(bytes(raw))
    nib.load(f).header.get_data_shape()  # the header still reads: nibabel alone would go on
    code, err = run(capsys, single_demo, tmp_path / "out", "participant", "--derivatives", seg(single_demo))
    assert code == 65, err
    assert len(errors(err)) == 1 and "sub-01_dwi.nii.gz" in errors(err)[0] and "Fix:" in errors(err)[0]
    assert not list((tmp_path / "out").rglob("*.nii.gz")) if (tmp_path / "out").exists() else True


@pytest.mark.slow
def test_mostly_failed_fit_marks_the_subject_failed(single_demo, tmp_path, capsys):
    f = single_demo / "sub-01/dwi/sub-01_dwi.nii.gz"
    img = nib.load(f)
    data = np.asarray(img.dataobj, dtype=np.float32)
    b = np.loadtxt(single_demo / "sub-01/dwi/sub-01_dwi.bval")
    mask = nib.load(seg(single_demo) / "sub-01/dwi/sub-01_desc-tumour_mask.nii.gz").get_fdata() > 0
    bad = mask.copy()
    bad[: mask.shape[0] // 2] = False  # about half of the tumour: b=0 zeroed (as unscaled or corrupt data)
    block = data[bad]
    block[:, b == 0] = 0
    data[bad] = block
    nib.Nifti1Image(data, img.affine, img.header).to_filename(f)
    out = tmp_path / "out"
    code, err = run(capsys, single_demo, out, "participant", "--derivatives", seg(single_demo), "--vascular", "off")
    assert code == 1, err
    rows = next((out / "logs").glob("*_status.tsv")).read_text().splitlines()
    status = dict(zip(rows[0].split("\t"), rows[1].split("\t")))
    assert status["status"] == "failed" and "% of the histousim voxels" in status["message"], status
    frac = bad.sum() / mask.sum()
    assert f"{100 * frac:.0f} %" in status["message"]


# ---- 4. input provenance ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_masks_are_never_taken_unasked(single_demo, tmp_path, capsys):
    f = single_demo / "sub-01/dwi/sub-01_dwi.nii.gz"
    img = nib.load(f)
    data = np.asarray(img.dataobj, dtype=np.float32)
    air = np.zeros(data.shape[:3], bool)
    air[:2], air[-2:] = True, True  # a border of air: noise only
    data[air] = np.abs(np.random.default_rng(0).normal(0, 10, (air.sum(), data.shape[3])))
    nib.Nifti1Image(data, img.affine, img.header).to_filename(f)
    out = tmp_path / "out"
    code, err = run(capsys, single_demo, out, "participant", "--vascular", "off")
    assert code == 0, err
    side = sidecar(out)
    assert "URI" not in side["InputFiles"]["Mask"] and "b=0" in side["InputFiles"]["Mask"]["Origin"]
    assert "URI" not in side["InputFiles"]["NoiseMap"]  # the ground truth's σ map was not used either
    assert not [s for s in side["Sources"] if "derivatives" in s]
    ec = nib.load(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-exitcode_dwimap.nii.gz").get_fdata()
    fitted = np.isfinite(ec)
    assert not (fitted & air).any() and (fitted | air).all()  # the built mask: all the tissue, none of the air
    assert "Inputs used" in (out / "sub-01.html").read_text()


# ---- 5. QSIPrep-shaped derivatives; BIDS-Derivatives correctness -------------------------------------------
@pytest.mark.slow
def test_qsiprep_shaped_dataset_keeps_its_space(demo_dir, tmp_path, capsys):
    bids = qsiprep_shaped(demo_dir, tmp_path / "bids")
    q = bids / "derivatives" / "qsiprep"
    out, work = tmp_path / "out", tmp_path / "work"
    code, err = run(capsys, bids, out, "participant", "--derivatives", q, "-w", work)
    assert code == 0, err
    maps = sorted((out / "sub-01/dwi").glob("*_dwimap.nii.gz"))
    assert maps and all("_space-T1w_" in m.name for m in maps)
    # the timing came from SourceMetadata through the confounds' original_file: both diffusion times
    prot = fitted_protocol(work)
    assert set(np.unique(prot[prot[:, 0] > 0, 2])) == {25.0, 45.0}
    side = sidecar(out, space="T1w")
    dwi = q / "sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz"
    mask = q / "sub-01/dwi/sub-01_space-T1w_desc-tumour_mask.nii.gz"
    assert side["Sources"][:2] == ["bids:qsiprep:sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz",
                                   "bids:qsiprep:sub-01/dwi/sub-01_space-T1w_desc-tumour_mask.nii.gz"]
    assert side["InputFiles"]["DWI"][0]["SHA256"] == hashlib.sha256(dwi.read_bytes()).hexdigest()
    assert side["InputFiles"]["Mask"]["SHA256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
    assert "tumour" in side["InputFiles"]["Mask"]["Origin"] and "brain" in side["InputFiles"]["Mask"]["Origin"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["qsiprep"] == q.resolve().as_uri()
    assert desc["DatasetLinks"]["raw"] == bids.resolve().as_uri()
    assert run(capsys, bids, out, "group")[0] == 0  # the group level finds maps in any space


@pytest.mark.slow
def test_qsiprep_series_timing_per_source_run(demo_dir, tmp_path, capsys):
    """A preprocessed series concatenating runs: one --small-delta/--big-delta is refused when its
    SourceMetadata differ; --timing keyed by the source runs is applied per volume (confounds original_file)."""
    bids = qsiprep_shaped(demo_dir, tmp_path / "bids")
    q = bids / "derivatives" / "qsiprep"
    code, err = run(capsys, bids, tmp_path / "out", "participant", "--derivatives", q, "--small-delta", "10",
                    "--big-delta", "25")
    assert code == 64 and len(errors(err)) == 1 and "run-2" in errors(err)[0], err
    side = q / "sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.json"
    meta = json.loads(side.read_text())
    for source in meta["SourceMetadata"].values():  # a scanner export without timing
        source.pop("SmallDelta"), source.pop("BigDelta")
    side.write_text(json.dumps(meta))
    work = tmp_path / "work"
    code, err = run(capsys, bids, tmp_path / "out", "participant", "--derivatives", q, "-w", work, "--vascular",
                    "off", "--timing", "run-1:10,25", "run-2:15,45")
    assert code == 0, err
    prot = fitted_protocol(work)
    n1 = len(np.loadtxt(bids / "sub-01/dwi/sub-01_run-1_dwi.bval"))
    assert np.all(prot[:n1, 1:] == [10, 25]) and np.all(prot[n1:, 1:] == [15, 45])


def test_one_background_convention(demo_run, demo_dir):
    """NaN outside the fit in every map, the exit code included (docs/outputs.md)."""
    _, out, _ = demo_run
    tumour = nib.load(seg(demo_dir) / "sub-01/dwi/sub-01_desc-tumour_mask.nii.gz").get_fdata() > 0
    maps = sorted((out / "sub-01/dwi").glob("*_dwimap.nii.gz"))
    assert len(maps) > 20
    for f in maps:
        data = nib.load(f).get_fdata()
        assert np.all(np.isnan(data[~tumour])), f.name
    ec = nib.load(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-exitcode_dwimap.nii.gz").get_fdata()
    assert set(np.unique(ec[np.isfinite(ec)])) <= {1.0, -1.0}


#: BEP016 map names: entities in the order sub, ses, acq, run, space, model, param, desc; suffix dwimap
BEP016 = re.compile(r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?(_acq-[A-Za-z0-9]+)?(_run-[0-9]+)?_space-[A-Za-z0-9]+"
                    r"_model-[A-Za-z0-9]+_param-[A-Za-z0-9]+(_desc-[A-Za-z0-9]+)?_dwimap\.(nii\.gz|json)$")


def test_derivatives_validate_with_the_maps_visible(demo_run, tmp_path):
    """The validator sees the maps (no .bidsignore for them): its only errors are that it does not know the
    BEP016 dwimap suffix yet, on files whose names follow BEP016; everything else passes."""
    from .test_robustness import _validate
    _, out, _ = demo_run
    copy = tmp_path / "deriv"
    shutil.copytree(out, copy)
    ignore = copy / ".bidsignore"
    ignore.write_text("\n".join(line for line in ignore.read_text().splitlines() if "dwimap" not in line) + "\n")
    found = _validate(copy)
    assert found, "the validator found no map at all"
    assert {e["code"] for e in found} == {"NOT_INCLUDED"}, {e["code"] for e in found}
    for e in found:
        assert BEP016.match(Path(e["location"]).name), e["location"]
    assert len(found) == len([p for p in copy.rglob("*_dwimap.*") if "logs" not in p.relative_to(copy).parts])


# ---- 6. simulators a first try survives -----------------------------------------------------------------
def test_histo_defaults_are_sized_for_a_first_try():
    from dmrimc_bids.cli.sim import apply_preset, build_parser
    from dmrimc_bids.core.simulate.histo import config_grid
    base = ["histo", "--svg", "c.svg", "--width-um", "100", "--protocol", "p.tsv", "--out", "d.npz"]
    quick = build_parser().parse_args(base)
    apply_preset(quick)
    full = build_parser().parse_args(base + ["--preset", "histousim"])
    apply_preset(full)
    n = lambda a: len(config_grid(a.d0in, a.d0ex, a.kappa)) * a.walkers  # noqa: E731
    assert n(full) == 225 * 20000 and n(quick) <= n(full) / 30
    own = build_parser().parse_args(base + ["--kappa", "0", "--walkers", "100"])
    apply_preset(own)
    assert own.kappa == [0.0] and own.walkers == 100 and len(own.d0in) == 3


def _interrupt(cmd, ready: bytes, tmp_path, timeout=240):
    """Start cmd in its own process group, wait for `ready` on stderr, send Ctrl-C to the group:
    (exit code, seconds to stop, stderr, processes of the group still running)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                            cwd=tmp_path)
    chunks: list = []
    threading.Thread(target=lambda: [chunks.append(c) for c in iter(lambda: proc.stderr.read(64), b"")],
                     daemon=True).start()
    t0 = time.time()
    while ready not in b"".join(chunks) and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.2)
    assert proc.poll() is None, b"".join(chunks).decode(errors="replace")[-2000:]
    t1 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    finally:
        stopped = time.time() - t1
        for _ in range(50):  # the workers' own exit after the signal: within a few seconds
            ps = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True,
                                text=True).stdout.split()
            running = [s for s in ps if not s.startswith("Z")]
            detail = subprocess.run(["ps", "-o", "pid,ppid,stat,cmd", "-g", str(proc.pid)], capture_output=True, text=True).stdout
            if not running:
                break
            time.sleep(0.1)
        if running:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stopped, b"".join(chunks).decode(errors="replace"), running and detail


@pytest.mark.slow
@pytest.mark.parametrize("nprocs", ["1", "2"])
def test_ctrl_c_stops_the_simulation_and_every_worker(tmp_path, nprocs):
    (tmp_path / "p.tsv").write_text("b\tsmall_delta\tbig_delta\n0\t10\t25\n1000\t10\t25\n2000\t15\t45\n")
    cmd = SIM + ["histo", "--svg", str(ROOT / "docs/examples/cells.svg"), "--width-um", "100", "--protocol",
                 "p.tsv", "--out", "d.npz", "--preset", "histousim", "--nprocs", nprocs]
    # progress moves per walker batch, with an ETA: wait for a batch beyond the first
    code, stopped, err, running = _interrupt(cmd, b"walker/s]", tmp_path)
    assert code == 130 and stopped < 10 and not running, (code, stopped, running, err[-2000:])
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "MC " not in line]
    assert lines == ["dmrimc-sim: interrupted (Ctrl-C): no dictionary written"], lines
    assert not list(tmp_path.glob("d.*"))
    assert re.search(r"<\d\d:\d\d", err)  # tqdm's ETA


def test_flow_simulation_shows_progress(tmp_path):
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    (tmp_path / "net.json").write_text(json.dumps(capillary_network(3).to_json()))
    (tmp_path / "p.tsv").write_text("b\tsmall_delta\tbig_delta\n0\t10\t30\n50\t10\t30\n100\t10\t30\n")
    res = subprocess.run(SIM + ["flow", "--network", "net.json", "--qin", "1e-3", "2e-3", "--protocol", "p.tsv",
                                "--out", "f.npz", "--spins", "200"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    # tqdm writes the rate as network/s, or s/network when one network takes over a second
    assert re.search(r"2/2 \[.*(network/s|s/network)\]", res.stderr), res.stderr[-1000:]


def test_messages_point_to_docs_that_ship():
    pkg = ROOT / "dmrimc_bids"
    text = "\n".join(p.read_text() for p in pkg.rglob("*.py"))
    assert "DESIGN.md" not in text
    for doc in set(re.findall(r"docs/[a-z_]+\.md", text)):
        assert (ROOT / doc).is_file(), doc


# ---- 7. quieter, clearer runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_quiet_run_logs_nipype_to_a_file(single_demo, tmp_path):
    out = tmp_path / "out"
    # --model separate: the tissue branch drops the b below --vasc-threshold and says so once
    res = subprocess.run(CLI + [str(single_demo), str(out), "participant", "--nprocs", "2", "--derivatives",
                                str(seg(single_demo)), "-w", str(tmp_path / "w"), "--model", "separate"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(out.rglob("*model-spinflowsim_param-vm_dwimap.nii.gz")) and "--model separate" in res.stderr
    both = res.stdout + res.stderr
    # the parallel workers' fits share one progress display instead of each drawing its own bar
    assert "fits (" in both and "vox/s]" in both
    assert not re.search(r"(Histo-uSim fit|SpinFlowSim fit|Bayesian IVIM): +\d+%", both), both[-3000:]
    assert not (tmp_path / "w" / ".dmrimc_progress").exists()
    assert "[Node]" not in both and "[MultiProc]" not in both and "No schema path" not in both, both[-3000:]
    log = next((out / "logs").glob("*_nipype.log")).read_text()
    assert "[Node] Finished" in log
    dropped = [line for line in both.splitlines() if "dropped b =" in line]
    assert len(dropped) == 1
    listed = re.findall(r"(\d+)(?: \(x\d+\))?[,\s]", dropped[0].split("=", 1)[1].split("s/mm²")[0] + ",")
    assert len(listed) == len(set(listed)) == 4  # 25, 50, 100, 200, each once


def test_compile_notice_only_when_kernels_are_not_cached(tmp_path):
    from dmrimc_bids.core import jitcache
    module = tmp_path / "kernels.py"
    module.write_text("")
    assert "compiling" in jitcache.compile_notice(module, "fitting")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "kernels.fit-12.py311.nbi").write_bytes(b"")
    assert jitcache.compile_notice(module, "fitting") == ""


def test_compile_notice_sees_the_user_wide_cache(tmp_path, monkeypatch):
    """A read-only package (an installed image) makes numba cache its kernels in ~/.cache/numba/<folder>_<sha1>:
    found there, so the notice is not repeated on every run."""
    from dmrimc_bids.core import jitcache
    module = tmp_path / "pkg" / "kernels.py"
    module.parent.mkdir()
    module.write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    assert "compiling" in jitcache.compile_notice(module, "fitting")
    folder = jitcache.user_cache_folder(module)
    assert str(folder).startswith(str(tmp_path / "home"))
    folder.mkdir(parents=True)
    (folder / "kernels.fit-12.py311.nbi").write_bytes(b"")
    assert jitcache.compile_notice(module, "fitting") == ""


@pytest.mark.parametrize("case", ["posterior", "posterior design prior", "ml", "ivim", "joint"])
def test_every_listed_kernel_is_compiled_by_a_fit(case):
    """Each model's jit_kernels() are the kernels its fit() compiles (each in a fresh process, so that no other
    fit compiled them): a listed kernel that a fit never compiles (main: entry_costs_common_scale; IVIM's
    callees, compiled into their caller; the joint fit's tissue step, which scans with bounds on products,
    listed the entry tree's kernel) was announced as compiling on every run."""
    import subprocess
    code = (
        "import sys, numpy as np; sys.path.insert(0, 'tests')\n"
        "from test_posterior import grid_dictionary\n"
        "import test_joint as tj\n"
        "from dmrimc_bids.core.fitting.joint import JointModel\n"
        "from dmrimc_bids.core.fitting.posterior import PosteriorModel\n"
        "from dmrimc_bids.core.fitting.dictfit import DictionaryModel\n"
        "from dmrimc_bids.core.fitting.ivim import IvimModel\n"
        "from dmrimc_bids.core.protocol import Protocol\n"
        "case = sys.argv[1]\n"
        "if case.startswith('posterior') or case == 'ml':\n"
        "    dic = grid_dictionary(); data = dic.signals[:20].astype(float); sig = np.full(20, 0.02)\n"
        "    model = {'posterior': PosteriorModel(dic), 'posterior design prior': PosteriorModel(dic, prior='design'),\n"
        "             'ml': DictionaryModel(dic)}[case]\n"
        "elif case == 'ivim':\n"
        "    prot = Protocol([0, 25, 50, 100, 200, 400, 800, 1000.0], 10.0, 30.0)\n"
        "    e = lambda d: np.exp(-np.outer(np.ones(30), prot.b) * d)\n"
        "    model, data, sig = IvimModel(prot), e(1e-3) * 0.9 + 0.1 * e(2e-2), np.full((30, 8), 0.01)\n"
        "else:\n"
        "    ti, fl = tj.tissue_dictionary(), tj.flow_dictionary()\n"
        "    data = tj.mixed(ti, fl, np.arange(30) % len(ti), np.arange(30) % len(fl), np.linspace(0, 0.1, 30))\n"
        "    model, sig = JointModel(ti, fl, tissue_b_min=200), np.full(30, 0.01)\n"
        "model.fit(data, sigma=sig)\n"
        "print('LEFT', [getattr(d, 'py_func', d).__name__ for d in model.jit_kernels() if not d.signatures])\n")
    out = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert "LEFT []" in out.stdout, out.stdout + out.stderr


def test_uncached_names_each_kernel_until_its_first_call(tmp_path, monkeypatch):
    import importlib.util
    from dmrimc_bids.core import jitcache
    (tmp_path / "fresh_kernels.py").write_text("from numba import njit\n\n\n@njit(cache=True)\ndef twice(x):\n"
                                               "    return 2 * x\n\n\n@njit(cache=True)\ndef thrice(x):\n"
                                               "    return 3 * x\n")
    spec = importlib.util.spec_from_file_location("fresh_kernels", tmp_path / "fresh_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert jitcache.uncached([mod.twice, mod.thrice]) == ["twice", "thrice"]
    assert mod.twice(2) == 4
    assert jitcache.uncached([mod.twice, mod.thrice]) == ["thrice"]   # one compiled kernel does not hide another
    assert "compiling" in jitcache.compile_notice(None, "fitting", [mod.twice, mod.thrice])


@pytest.mark.parametrize("estimator", ["ml", "posterior"])
def test_first_compile_of_any_estimator_is_announced(estimator, monkeypatch, capsys):
    """Each estimator names the kernels it calls: the published method's grid search and Levenberg-Marquardt
    (its first run compiled for a minute with no notice while the posterior's kernels were cached)."""
    from dmrimc_bids.core import jitcache
    from dmrimc_bids.core.analytic import analytic_dictionary
    from dmrimc_bids.core.fitting.registry import build_model
    from dmrimc_bids.interfaces.fitting import run_fit
    full = analytic_dictionary()
    dic = full.measurements(np.flatnonzero(full.protocol.b > 0)[::400])   # a few measurements: a small model
    model = build_model(estimator, dic)
    names = {getattr(k, "__name__", "") for k in model.jit_kernels()}
    assert ({"grid_search", "refine"} if estimator == "ml" else {"entry_costs"}) <= names, names
    missing = "refine" if estimator == "ml" else "entry_costs"
    monkeypatch.setattr(jitcache, "_index_files", lambda f, name: [] if name.startswith(missing) else ["x"])
    y = np.tile(dic.signals[:1].astype(float), (2, 1))
    run_fit(model, y, np.ones(2, bool), np.full(2, 0.02), 1, "tissue fit")
    assert "tissue fit: compiling the fitting kernels" in capsys.readouterr().err


def test_output_inside_the_raw_dataset_is_refused(single_demo, capsys):
    code, err = run(capsys, single_demo, single_demo / "out", "participant")
    assert code == 64 and len(errors(err)) == 1 and "inside the raw BIDS dataset" in err, err
    assert not (single_demo / "out").exists()


def test_group_level_leaves_no_temporary_folder(demo_run, demo_dir, tmp_path, capsys, monkeypatch):
    import tempfile
    _, out, _ = demo_run
    copy = tmp_path / "deriv"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("group*"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, err = run(capsys, demo_dir, copy, "group")
    assert code == 0, err
    assert list(scratch.iterdir()) == []


def test_git_ignores_the_demo_folders():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/demo_bids/" in ignored and "/demo_out/" in ignored


# ---- 8. group report --------------------------------------------------------------------------------------
def test_group_report_links_subjects_and_points_out_redundant_maps(demo_run, demo_dir, tmp_path, capsys):
    from dmrimc_bids.reports.group import strong_correlations
    _, out, _ = demo_run
    copy = tmp_path / "deriv"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("group*"))
    code, err = run(capsys, demo_dir, copy, "group")
    assert code == 0, err
    html = (copy / "group.html").read_text()
    assert 'href="sub-01.html"' in html and 'href="sub-02.html"' in html
    assert 'id="strong-correlations"' in html
    pair = re.search(r'id="strong-correlations">.*?<b>([^<]+)</b> and <b>([^<]+)</b> \(ρ = ([-0-9.]+)\)', html)
    assert pair and abs(float(pair.group(3))) > 0.95
    rho = np.array([[1, 0.97, 0.2], [0.97, 1, -0.96], [0.2, -0.96, 1]])
    found = strong_correlations(rho, ["a", "b", "c"])
    assert [(f["a"], f["b"]) for f in found] == [("a", "b"), ("b", "c")]


@pytest.mark.parametrize("work_dir", [False, True])
def test_ctrl_c_leaves_a_valid_derivatives_folder(single_demo, tmp_path, work_dir):
    """Ctrl-C during the fits: dataset_description.json is there (written before any map), the status table
    marks the session "interrupted", no temporary file is left, and the one line says what is true for this
    run: a rerun with the same -w resumes only when -w was given."""
    out = tmp_path / "out"
    cmd = CLI + [str(single_demo), str(out), "participant", "--derivatives", str(seg(single_demo))]
    if work_dir:
        cmd += ["-w", str(tmp_path / "work")]
    code, stopped, err, running = _interrupt(cmd, b"vox/s]", tmp_path)   # a fit's progress bar
    assert code == 130 and not running, (code, err[-2000:])
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    status = next((out / "logs").glob("*_status.tsv")).read_text().splitlines()
    row = dict(zip(status[0].split("\t"), status[1].split("\t")))
    assert row["status"] == "interrupted" and row["exit_code"] == "130", row
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".bidsignore"]
    lines = [line for line in err.splitlines() if "interrupted (Ctrl-C)" in line]
    assert len(lines) == 1 and "_status.tsv" in lines[0], err[-2000:]
    assert ("same -w" in lines[0]) == work_dir and ("starts again" in lines[0]) != work_dir, lines[0]
