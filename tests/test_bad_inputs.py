"""Bad input across the whole CLI: every case gives one clear error line naming the file or flag and the fix,
its documented exit code, and no output files. The same table is rendered into docs/errors.md:

    python tests/test_bad_inputs.py --write-docs docs/errors.md
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from dmrimc_bids.core.dictionary_default import default_dictionary_path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass
class Case:
    id: str
    what: str                 # the situation, for the docs
    code: int                 # exit code
    named: str                # what the error line must name (file or flag)
    make: Callable            # make(bids, tmp) -> (program, argv)


def _bids_dwi(bids: Path) -> Path:
    return bids / "sub-01/dwi"


def _participant(*extra):
    return lambda bids, tmp: ("dmrimc-bids", [bids, tmp / "out", "participant", *extra])


def _edit_sidecar(fn):
    def make(bids, tmp):
        side = _bids_dwi(bids) / "sub-01_dwi.json"
        meta = json.loads(side.read_text())
        fn(meta)
        side.write_text(json.dumps(meta))
        return "dmrimc-bids", [bids, tmp / "out", "participant"]
    return make


def _drop_timing(meta):
    del meta["SmallDelta"], meta["BigDelta"]


def _far_delta(meta):
    meta["BigDelta"] = [0.3 if v > 0.04 else v for v in meta["BigDelta"]]


def _bval(fn):
    def make(bids, tmp):
        f = _bids_dwi(bids) / "sub-01_dwi.bval"
        f.write_text(fn(f.read_text().split()))
        return "dmrimc-bids", [bids, tmp / "out", "participant"]
    return make


def _image(fn, name="mask.nii.gz", flag="--mask"):
    def make(bids, tmp):
        data, affine = fn()
        nib.Nifti1Image(data, affine).to_filename(tmp / name)
        return "dmrimc-bids", [bids, tmp / "out", "participant", flag, tmp / name]
    return make


def _three_d(bids, tmp):
    f = _bids_dwi(bids) / "sub-01_dwi.nii.gz"
    img = nib.load(f)
    nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine).to_filename(f)
    return "dmrimc-bids", [bids, tmp / "out", "participant"]


def _garbage(rel, *extra):
    def make(bids, tmp):
        target = (bids / rel) if not rel.startswith("/") else tmp / rel[1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not what you think")
        args = [a if a != "TARGET" else target for a in extra]
        return "dmrimc-bids", [bids, tmp / "out", "participant", *args]
    return make


def _damage(kind):
    def make(bids, tmp):
        f = _bids_dwi(bids) / "sub-01_dwi.nii.gz"
        raw = bytearray(f.read_bytes())
        if kind == "flipped":
            raw[len(raw) // 2:len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:len(raw) // 2 + 8])
        else:
            raw = raw[: len(raw) * 2 // 3]
        f.write_bytes(bytes(raw))
        return "dmrimc-bids", [bids, tmp / "out", "participant"]
    return make


def _runs_with_one_timing(bids, tmp):
    sys.path.insert(0, str(Path(__file__).parent))  # also when run as a script (--write-docs)
    from realworld import split_runs
    runs = split_runs(bids, tmp / "runs")
    return "dmrimc-bids", [runs, tmp / "out", "participant", "--small-delta", "10", "--big-delta", "25"]


def _no_bvec(bids, tmp):
    (_bids_dwi(bids) / "sub-01_dwi.bvec").unlink()
    return "dmrimc-bids", [bids, tmp / "out", "participant"]


def _no_description(bids, tmp):
    (bids / "dataset_description.json").unlink()
    return "dmrimc-bids", [bids, tmp / "out", "participant"]


def _filter_file(text):
    def make(bids, tmp):
        (tmp / "filter.json").write_text(text)
        return "dmrimc-bids", [bids, tmp / "out", "participant", "--bids-filter-file", tmp / "filter.json"]
    return make


def _same_dir(bids, tmp):
    return "dmrimc-bids", [bids, bids, "participant"]


def _under_a_file(which):
    def make(bids, tmp):
        (tmp / "afile").write_text("")
        if which == "out":
            return "dmrimc-bids", [bids, tmp / "afile" / "out", "participant"]
        return "dmrimc-bids", [bids, tmp / "out", "participant", "-w", tmp / "afile" / "work"]
    return make


def _group(*extra):
    def make(bids, tmp):
        (tmp / "out").mkdir(exist_ok=True)
        return "dmrimc-bids", [bids, tmp / "out", "group", *extra]
    return make


def _sim(*extra):
    def make(bids, tmp):
        args = [tmp / a[1:] if isinstance(a, str) and a.startswith("/") else a for a in extra]
        for a in args:
            if isinstance(a, Path) and a.name == "prot_ok.tsv":
                a.write_text("b\tsmall_delta\tbig_delta\n0\t10\t25\n1000\t10\t25\n")
            elif isinstance(a, Path) and a.suffix in (".tsv", ".json", ".csv") and not a.exists():
                a.write_text("nonsense\n")
        return "dmrimc-sim", [*args, "--out", tmp / "out" / "dict.npz"]
    return make


CASES = [
    Case("missing-timing", "DWI sidecar without SmallDelta/BigDelta and no --small-delta/--big-delta", 66,
         "sub-01_dwi.json", _edit_sidecar(_drop_timing)),
    Case("missing-bvec", "a DWI series with diffusion-weighted volumes and no .bvec", 66, "sub-01_dwi.bvec", _no_bvec),
    Case("bval-count", ".bval with fewer values than DWI volumes", 65, "sub-01_dwi.bval", _bval(lambda b: " ".join(b[:-1]))),
    Case("no-b0", "no b=0 volume in a TE/diffusion-time group", 65, "sub-01_dwi.nii.gz",
         _bval(lambda b: " ".join("300" if float(v) == 0 else v for v in b))),
    Case("3d-dwi", "a 3D image where the 4D DWI series should be", 65, "sub-01_dwi.nii.gz", _three_d),
    Case("unreadable-dwi", "a DWI file that is not a NIfTI", 66, "sub-01_dwi.nii.gz",
         _garbage("sub-01/dwi/sub-01_dwi.nii.gz")),
    Case("mask-geometry", "--mask on another grid than the DWI", 65, "mask.nii.gz",
         _image(lambda: (np.ones((10, 10, 4), np.uint8), np.eye(4)))),
    Case("empty-mask", "--mask with no voxel > 0", 65, "mask.nii.gz",
         _image(lambda: (np.zeros((20, 20, 4), np.uint8), np.diag([2.0, 2, 2, 1])))),
    Case("sigma-geometry", "--noise-map on another grid than the DWI", 65, "sigma.nii.gz",
         _image(lambda: (np.ones((10, 10, 4), np.float32), np.eye(4)), "sigma.nii.gz", "--noise-map")),
    Case("no-dictionary-match", "the protocol's (b, δ, Δ) are not in the dictionary", 65, "sub-01_dwi.nii.gz",
         _edit_sidecar(_far_delta)),
    Case("unknown-param", "--params names a parameter the dictionary lacks", 64, "kappaa",
         _participant("--params", "kappaa")),
    Case("unknown-bound", "--bounds names a parameter the dictionary lacks", 64, "--bounds",
         _participant("--bounds", "size=1,2")),
    Case("unknown-point-prior", "--point-prior names a parameter the dictionary lacks", 64, "--point-prior",
         _participant("--point-prior", "size=design")),
    Case("bad-point-prior", "--point-prior with a prior other than design or entries", 64, "--point-prior",
         _participant("--point-prior", "kappa=flat")),
    Case("bad-reg", "--reg with a norm other than 1 or 2", 64, "--reg", _participant("--reg", "3", "0.1")),
    Case("fit-only-option", "an option of the published fitting method (--noise-model, --reg, --surrogate...) "
         "without --estimator ml", 64, "--noise-model", _participant("--noise-model", "rician")),
    Case("bad-mem", "--mem that is not a memory size", 64, "--mem", _participant("--mem", "lots")),
    Case("unreadable-dictionary", "--dictionary that is not a dictionary .npz", 66, "bad.npz",
         _garbage("/bad.npz", "--dictionary", "TARGET")),
    Case("unreadable-flow-dictionary", "--flow-dictionary that is not a dictionary .npz", 66, "flow.npz",
         _garbage("/flow.npz", "--flow-dictionary", "TARGET")),
    Case("bad-network", "--flow-networks file that is not a network", 65, "net.json",
         _garbage("/net.json", "--flow-networks", "TARGET")),
    Case("unknown-plugin", "--plugin that is not a Nipype execution plugin", 64, "--plugin Torque",
         _participant("--plugin", "Torque")),
    Case("cluster-without-workdir", "a cluster --plugin without -w (the jobs run from the work dir)", 64,
         "-w/--work-dir", _participant("--plugin", "SLURM")),
    Case("bad-plugin-args", "--plugin-args that is not a JSON object", 64, "--plugin-args",
         _participant("--plugin-args", "sbatch_args=-p short")),
    Case("sim-bad-threads", "dmrimc-sim flow --threads-per-job 0", 64, "--threads-per-job",
         lambda bids, tmp: ("dmrimc-sim", ["flow", "--protocol", tmp / "p.tsv", "--out", tmp / "f.npz",
                                           "--threads-per-job", "0"])),
    Case("sim-bad-video", "dmrimc-sim --video that is neither .gif nor .mp4", 64, "spins.avi",
         _sim("flow", "--protocol", "/prot_ok.tsv", "--video", "/spins.avi")),
    Case("sim-bad-show-entry", "dmrimc-sim --show-entry beyond the dictionary's entries", 64, "--show-entry 9999",
         _sim("flow", "--protocol", "/prot_ok.tsv", "--show-entry", "9999")),
    Case("sim-plot-bad-entry", "dmrimc-sim plot --entry beyond the dictionary's entries", 64, "entry 99999",
         lambda bids, tmp: ("dmrimc-sim", ["plot", "--dictionary", default_dictionary_path(), "--entry", "99999",
                                           "--out", tmp / "signals.png"])),
    Case("output-is-input", "output folder = the BIDS dataset", 64, "output folder", _same_dir),
    Case("output-inside-input", "output folder inside the raw BIDS dataset (outside its derivatives/)", 64,
         "inside the raw BIDS dataset", lambda bids, tmp: ("dmrimc-bids", [bids, bids / "out", "participant"])),
    Case("output-under-a-file", "an output folder that cannot be created (a path under a file)", 73,
         "cannot be created", _under_a_file("out")),
    Case("work-dir-under-a-file", "a -w work folder that cannot be created", 73, "work folder (-w)",
         _under_a_file("work")),
    Case("damaged-dwi", "a .nii.gz whose compressed data fail their checksum (flipped bytes); the header still "
         "reads", 65, "sub-01_dwi.nii.gz", _damage("flipped")),
    Case("truncated-dwi", "a .nii.gz cut short (an interrupted copy)", 65, "sub-01_dwi.nii.gz", _damage("truncated")),
    Case("one-timing-for-differing-runs", "--small-delta/--big-delta for runs whose sidecars or TEs say their "
         "timing differs", 64, "--timing", _runs_with_one_timing),
    Case("bad-timing", "--timing item that is not RUN:δ,Δ", 64, "--timing", _participant("--timing", "run-1:25")),
    Case("bad-failed-fraction", "--max-failed-fraction outside [0, 1]", 64, "--max-failed-fraction",
         _participant("--max-failed-fraction", "5")),
    Case("no-dataset-description", "bids_dir without dataset_description.json", 16, "not a valid BIDS dataset",
         _no_description),
    Case("unknown-participant", "--participant-label not in the dataset", 66, "participant(s) 99",
         _participant("--participant-label", "99")),
    Case("unknown-session", "--session-label not in the dataset", 66, "session(s) 3",
         _participant("--session-label", "3")),
    Case("filter-selects-nothing", "--bids-filter-file that selects no DWI", 18, "no DWI series found",
         _filter_file(json.dumps({"dwi": {"acquisition": "nosuchacq"}}))),
    Case("bad-filter-file", "--bids-filter-file that is not JSON", 64, "filter.json", _filter_file("{not json")),
    Case("missing-derivatives", "--derivatives folder that does not exist", 66, "nowhere",
         lambda bids, tmp: ("dmrimc-bids", [bids, tmp / "out", "participant", "--derivatives", tmp / "nowhere"])),
    Case("group-without-outputs", "group level before any participant output", 66, "run the participant level",
         _group()),
    Case("group-bad-atlas", "--atlas without TEMPLATE:ATLAS", 64, "--atlas", _group("--atlas", "MNI152NLin2009cAsym")),
    Case("sim-bad-protocol", "dmrimc-sim histo --protocol that is not a protocol table", 65, "prot.tsv",
         _sim("histo", "--svg", "/cells.svg", "--width-um", "100", "--protocol", "/prot.tsv")),
    Case("sim-missing-svg", "dmrimc-sim histo --svg that does not exist", 66, "cells.svg",
         _sim("histo", "--svg", "/cells.svg", "--width-um", "100", "--protocol", "/prot_ok.tsv")),
    Case("sim-bad-network", "dmrimc-sim flow --network that is not a network", 65, "net.csv",
         _sim("flow", "--network", "/net.csv", "--protocol", "/prot_ok.tsv")),
]


def run_case(case: Case, demo_dir: Path, tmp: Path):
    """(exit code, stderr) of a case on a private one-subject copy of the demo."""
    import contextlib
    import io

    from dmrimc_bids.cli import run as bids_cli
    from dmrimc_bids.cli import sim as sim_cli

    bids = tmp / "bids"
    shutil.copytree(demo_dir, bids, ignore=shutil.ignore_patterns("sub-02"))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    prog, argv = case.make(bids, tmp)
    main = {"dmrimc-bids": bids_cli.main, "dmrimc-sim": sim_cli.main}[prog]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return prog, argv, code, err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, demo_dir, tmp_path):
    prog, _, code, err = run_case(case, demo_dir, tmp_path)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == case.code, err
    assert len(errors) == 1, err
    assert case.named in errors[0], errors[0]
    assert "Fix:" in errors[0] or "choose among" in errors[0] or prog == "dmrimc-bids" and "usage" in err, errors[0]
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))


def _normalise(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<tmp>").replace("|", "\\|")


def test_docs_table_is_current():
    """docs/errors.md lists every case with its exit code (regenerate with --write-docs)."""
    text = DOCS.read_text()
    for case in CASES:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{case.id}` ")), None)
        assert row is not None, f"{case.id} missing from {DOCS}"
        assert f"| {case.code} |" in row, row


def write_docs(path: Path) -> None:
    import tempfile

    from dmrimc_bids.cli.demo import write_demo
    lines = ["# Bad input: what you see and what to do", "",
             "Every case below is a test (`tests/test_bad_inputs.py`); each prints **one** error line naming the "
             "file or flag and the fix, exits with the code shown (BIDS-Apps draft: 16 invalid dataset, 18 no "
             "files selected, 64 usage, 65 data error, 66 missing input; sysexits 73 an output that cannot be created) "
             "and leaves no output file. In a cohort, a "
             "subject that fails is reported on its own line and in `logs/<run>_status.tsv`, the others go on, and "
             "the run exits 1. Invalid voxels (NaN, non-positive b=0) are not errors: they get exit code -1 in every "
             "model's `exitcode` map and NaN parameters and are counted per model in the status table and on the "
             "terminal, unless they are more than `--max-failed-fraction` (5 %) of the "
             "fitted voxels: the session is then marked failed in the status table, with the fraction. Damaged "
             "files are found before anything runs: every image is read in full once (gzip checksum, length).", "",
             "Regenerate: `python tests/test_bad_inputs.py --write-docs docs/errors.md`.", "",
             "| case | situation | exit | message |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        demo = write_demo(Path(d) / "demo")
        for case in CASES:
            tmp = Path(d) / case.id
            tmp.mkdir()
            _, _, code, err = run_case(case, demo, tmp)
            line = next((ln for ln in err.splitlines() if "error:" in ln), "").replace(str(demo), "<demo>")
            lines.append(f"| `{case.id}` | {case.what} | {code} | `{_normalise(line, tmp)}` |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-docs":
        write_docs(Path(sys.argv[2]))
    else:
        print(__doc__)
