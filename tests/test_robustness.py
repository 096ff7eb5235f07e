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
        hits = list(work.rglob("fit_joint/result_fit_joint.pklz"))
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


def test_mem_bounds_scheduling_and_batches(single_demo, tmp_path):
    from dmrimc_bids.bids.layout import collect_inputs
    from dmrimc_bids.cli.argtypes import memory_gb
    from dmrimc_bids.cli.parser import build_parser, config_from_args
    from dmrimc_bids.workflows import execution
    from dmrimc_bids.workflows.config import Config
    from dmrimc_bids.workflows.participant import init_participant_wf
    from dmrimc_bids.workflows.plan import BYTES_PER_BATCH_VOXEL, chunk_for_memory, plan_session
    assert [memory_gb(t) for t in ("8G", "8000M", "8", "8gb", "1T")] == [8.0, 8.0, 8.0, 8.0, 1000.0]
    args = build_parser().parse_args([str(single_demo), str(tmp_path / "o"), "participant", "--mem", "3G",
                                      "--nprocs", "2"])
    cfg = config_from_args(args)
    run_with = execution.choose(cfg.execution.plugin or None, cfg.execution.plugin_args, cfg.execution.nprocs, cfg.execution.mem_gb, None)
    assert run_with.plugin == "MultiProc" and run_with.plugin_args["memory_gb"] == 3.0
    assert run_with.plugin_args["n_procs"] == 2
    # half of a process's share of the memory goes to the batch work arrays
    assert chunk_for_memory(1.5, 10**6) == int(0.5 * 1.5e9 / BYTES_PER_BATCH_VOXEL)
    assert chunk_for_memory(1e-6, 10**6) == 100 and chunk_for_memory(100, 5000) == 5000
    item = collect_inputs(single_demo)[0]
    configs = [Config.from_dict(out_dir=str(tmp_path / "o"), chunk_size=c) for c in (100, 10**5)]
    small, big = (init_participant_wf([plan_session(item, c)], c, tmp_path / "w") for c in configs)
    mem = [next(n for n in wf._get_all_nodes() if n.name in ("fit_histousim", "fit_joint")).mem_gb for wf in (small, big)]
    n_vox, n_shells = 20 * 20 * 4, 22
    expected = 0.4 + (4 * n_vox * n_shells * 8 + 40 * n_vox * 4) / 1e9
    assert mem[0] == pytest.approx(expected + 100 * BYTES_PER_BATCH_VOXEL / 1e9, abs=0.01)
    assert mem[1] == pytest.approx(expected + n_vox * BYTES_PER_BATCH_VOXEL / 1e9, abs=0.01)


@pytest.mark.slow
def test_failed_session_keeps_the_subject_report(demo_dir, tmp_path, monkeypatch):
    """A session that fails inside the graph (its spherical-mean node raises; damaged files are refused
    before the graph, tests/test_real_world.py) is reported; its sibling session's maps and the subject
    report are still written."""
    from dmrimc_bids.cli.run import main
    from dmrimc_bids.interfaces.preprocess import SphericalMean
    bids = tmp_path / "bids"
    shutil.copytree(demo_dir, bids, ignore=shutil.ignore_patterns("sub-01"))
    original = SphericalMean._run_interface

    def failing(self, runtime):  # the Linear plugin runs nodes in this process
        if "ses-2" in str(self.inputs.dwi_file):
            raise RuntimeError("simulated failure inside the graph")
        return original(self, runtime)
    monkeypatch.setattr(SphericalMean, "_run_interface", failing)
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "-w", str(tmp_path / "w")]) == 1
    html = (out / "sub-02.html").read_text()
    assert 'id="ses-1-histousim"' in html and 'id="ses-2"' in html and "processing failed" in html
    rows = [line.split("\t") for line in next((out / "logs").glob("*_status.tsv")).read_text().splitlines()[1:]]
    assert [r[1:5] for r in rows] == [["ses-1", "finished", "0", "report"], ["ses-2", "failed", "1", "workflow"]]
    assert not (out / "sub-02/ses-2").exists()


def test_temporary_files_of_stopped_writers_are_removed(tmp_path):
    """Ctrl-C stops the workers (killed, maybe not yet reaped) and the run exits next: a worker killed inside
    a copy leaves its temporary file, and the interruption's clean-up removes it and this process's own
    (named in ended_pids), while a plain sweep keeps this live process's; a failed staging leaves none."""
    from dmrimc_bids.bids.derivatives import stage_copy, stage_json
    from dmrimc_bids.core.atomic import remove_stale_temps
    from dmrimc_bids.core.atomic import temp_beside as _temp_beside
    out = tmp_path / "out" / "sub-01" / "dwi"
    out.mkdir(parents=True)
    code = ("import sys, os; sys.path.insert(0, sys.argv[2]); from dmrimc_bids.core.atomic import temp_beside as _temp_beside;"
            "from pathlib import Path; fd, t = _temp_beside(Path(sys.argv[1])); print(t, flush=True); "
            "import time; time.sleep(60)")
    worker = subprocess.Popen([sys.executable, "-c", code, str(out / "w.nii.gz"), str(Path(__file__).parents[1])],
                              stdout=subprocess.PIPE, text=True)
    left = Path(worker.stdout.readline().strip())
    assert left.exists()
    assert remove_stale_temps(tmp_path / "out") == []  # its writer still runs
    worker.kill()  # killed, not reaped: a zombie
    time.sleep(0.5)
    fd, own = _temp_beside(out / "own.json")
    os.close(fd)
    assert remove_stale_temps(tmp_path / "out") == [left]
    assert Path(own).exists()
    assert remove_stale_temps(tmp_path / "out", ended_pids=[os.getpid()]) == [Path(own)]
    worker.wait()
    with pytest.raises(FileNotFoundError):
        stage_copy(tmp_path / "missing.nii.gz", out / "x.nii.gz")
    with pytest.raises(TypeError):
        stage_json({"a": object.__new__(type("Bad", (), {"__str__": None}))}, out / "x.json")
    assert sorted(p.name for p in out.iterdir()) == []


def test_temporary_files_of_dead_writers_are_removed(tmp_path):
    """A run killed mid-write leaves its temporary file; the next run removes it, but never one that a
    live run (this process, another host's recent one) is still writing."""
    from dmrimc_bids.core.atomic import STALE_TEMP_S, remove_stale_temps
    from dmrimc_bids.core.atomic import temp_beside as _temp_beside
    from dmrimc_bids.core.atomic import write_bytes as atomic_write_bytes
    from dmrimc_bids.core.atomic import writer_tag as _writer_tag
    out = tmp_path / "out" / "sub-01" / "dwi"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    host = _writer_tag().rsplit("-", 1)[0]
    fd, live = _temp_beside(out / "a.nii.gz")  # this (live) process's
    os.close(fd)
    stale = out / f".b.nii.gz.{host}-{dead}.abcd1234"
    recent_other = out / ".c.json.otherhost-12.abcd1234"
    old_other = out / ".d.json.otherhost-12.abcd1234"
    unrelated = out / ".hidden_notes"
    for p in (stale, recent_other, old_other, unrelated):
        p.write_bytes(b"\x1f\x8b partial")
    os.utime(old_other, (time.time() - STALE_TEMP_S - 60,) * 2)
    assert sorted(remove_stale_temps(tmp_path / "out")) == sorted([stale, old_other])
    assert not stale.exists() and not old_other.exists()
    assert Path(live).exists() and recent_other.exists() and unrelated.exists()
    atomic_write_bytes(out / "e.json", b"{}")  # an atomic write leaves no temporary file behind
    assert sorted(p.name for p in out.iterdir()) == sorted([Path(live).name, recent_other.name, unrelated.name,
                                                            "e.json"])


@pytest.mark.slow
def test_missing_bvec_fails_only_its_subject(demo_dir, tmp_path):
    """A subject without its .bvec is refused with one line naming the file; the other subject runs (on main the
    pybids look-up raised IndexError for the whole cohort, exit 66, no subject run)."""
    import contextlib
    import io

    from dmrimc_bids.cli.run import main
    bids = tmp_path / "bids"
    shutil.copytree(demo_dir, bids, ignore=shutil.ignore_patterns("ses-2"))
    (bids / "sub-01/dwi/sub-01_dwi.bvec").unlink()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")])
    assert code == 1, err.getvalue()
    lines = [ln for ln in err.getvalue().splitlines() if "sub-01_dwi.bvec" in ln]
    assert len(lines) == 1 and "no .bvec file" in lines[0], err.getvalue()
    rows = [line.split("\t") for line in next((tmp_path / "out" / "logs").glob("*_status.tsv")).read_text().splitlines()[1:]]
    status = {r[0] + ("" if r[1] == "n/a" else "_" + r[1]): r[2] for r in rows}
    assert status["sub-01"] == "failed" and status["sub-02_ses-1"] == "finished", rows
    assert list((tmp_path / "out" / "sub-02").rglob("*_model-histousim_param-fin_dwimap.nii.gz"))


def test_a_failed_run_without_work_dir_names_the_folder_it_keeps(demo_dir, tmp_path, monkeypatch, capsys):
    """Without -w a failed run keeps its temporary work folder for the crash files and says where it is (main
    left dmrimc_work_* folders in /tmp unannounced); a finished run leaves none."""
    import tempfile

    from dmrimc_bids.cli.run import main
    from dmrimc_bids.interfaces.preprocess import SphericalMean
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    bids = tmp_path / "bids"
    shutil.copytree(demo_dir, bids, ignore=shutil.ignore_patterns("sub-02"))

    def failing(self, runtime):
        raise RuntimeError("simulated failure inside the graph")
    monkeypatch.setattr(SphericalMean, "_run_interface", failing)
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == 1
    kept = list((tmp_path / "tmp").glob("dmrimc_work_*"))
    err = capsys.readouterr().err
    assert len(kept) == 1 and f"temporary work folder is kept for its crash files: {kept[0]}" in err, err



def test_workers_ignore_ctrl_c(tmp_path):
    """The console entry points start the forkserver with SIGINT ignored, so a MultiProc worker never prints
    its own KeyboardInterrupt traceback on Ctrl-C (main: about 40 lines of them in 2 of 9 tries); checked in a
    fresh process: a forkserver worker's SIGINT disposition before and after."""
    import subprocess
    import sys
    code = ("import multiprocessing as mp, signal, sys\n"
            "def disposition(_):\n"
            "    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN\n"
            "if __name__ == '__main__':\n"
            "    if sys.argv[1] == 'ours':\n"
            "        from dmrimc_bids.workflows.execution import workers_ignore_interrupt\n"
            "        workers_ignore_interrupt()\n"
            "    with mp.get_context('forkserver').Pool(1) as pool:\n"
            "        print('IGNORED', pool.map(disposition, [0])[0])\n"
            "    print('PARENT', signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    script = tmp_path / "sigint_probe.py"
    script.write_text(code)
    outs = {mode: subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                                 timeout=120).stdout for mode in ("plain", "ours")}
    assert "IGNORED False" in outs["plain"], outs   # the default: a worker takes Ctrl-C
    assert "IGNORED True" in outs["ours"] and "PARENT True" in outs["ours"], outs
