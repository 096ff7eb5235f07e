"""init_dmrimc_wf: the app inside a lab's own Nipype pipeline, without a BIDS layout."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_lab_workflow_gets_the_apps_maps(demo_run, demo_dir, tmp_path):
    """docs/usage.md's example (docs/examples/lab_pipeline.py: the lab's own node feeding init_dmrimc_wf), run as a
    fresh process on the demo's sub-01, writes the maps the BIDS App wrote for it, within 1e-6."""
    _, app_out, _ = demo_run
    res = subprocess.run([sys.executable, str(ROOT / "docs/examples/lab_pipeline.py"), str(demo_dir), str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "derivatives"
    ours = sorted((out / "sub-01" / "dwi").glob("*_dwimap.nii.gz"))
    theirs = sorted((app_out / "sub-01" / "dwi").glob("*_dwimap.nii.gz"))
    assert [p.name for p in ours] == [p.name for p in theirs] and len(ours) > 40
    for a, b in zip(ours, theirs):
        x, y = nib.load(a).get_fdata(), nib.load(b).get_fdata()
        assert np.array_equal(np.isnan(x), np.isnan(y)), a.name
        np.testing.assert_allclose(x[~np.isnan(x)], y[~np.isnan(y)], atol=1e-6, rtol=0, err_msg=a.name)
    side = json.loads((out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.json").read_text())
    assert side["Model"]["Parameters"]["Seed"] == 7 and side["Model"]["Parameters"]["ModelOfRun"] == "joint"
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert (out / "sub-01.html").is_file()


def test_outputnode_lists_what_was_written(tmp_path, monkeypatch):
    """The workflow's node hands on the files session_outputs wrote (the graph itself is tested above)."""
    from dmrimc_bids.workflows import embed
    calls = {}

    def fake(*args):
        calls["args"] = args
        return ["a_dwimap.nii.gz"], "sub-01.html"
    monkeypatch.setattr(embed, "session_outputs", fake)
    wf = embed.init_dmrimc_wf(tmp_path / "d", subject="sub-01", session="ses-2", seed=3)
    wf.base_dir = str(tmp_path / "w")
    for f in ("dwi_file", "bval_file", "bvec_file", "json_file"):
        setattr(wf.inputs.inputnode, f, f)
    node = wf.get_node("run_dmrimc")
    assert (node.inputs.subject, node.inputs.session, node.inputs.options) == ("01", "2", {"seed": 3})
    assert embed.run_session("d", "b", "v", "j", "", "", "o", "01", "", {}) == (["a_dwimap.nii.gz"], "sub-01.html")
    assert calls["args"][:4] == ("d", "b", "v", "j")


def test_unknown_options_are_refused():
    from dmrimc_bids.core.errors import InputError
    from dmrimc_bids.workflows import init_dmrimc_wf
    with pytest.raises(InputError, match="estimatr"):
        init_dmrimc_wf("/tmp/x", subject="01", estimatr="ml")
