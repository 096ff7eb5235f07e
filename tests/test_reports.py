"""Subject reports: content checked against the derivatives, rendered in headless Chromium."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ARTIFACTS = Path(os.environ.get("DMRIMC_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
SECTIONS = ("protocol", "histousim", "ivim", "spinflowsim", "methods")


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_reports_written_per_subject_with_sessions_as_sections(demo_run):
    code, out, _ = demo_run
    assert code == 0
    one, two = (out / "sub-01.html").read_text(), (out / "sub-02.html").read_text()
    assert 'id="ses-1"' in two and 'id="ses-2"' in two and 'id="ses-1"' not in one
    for sect in ("protocol", "histousim", "ivim", "spinflowsim"):
        assert f'id="ses-2-{sect}"' in two and f'id="sub-01-{sect}"' in one
    assert 'id="methods"' in one and "doi:10.1038/s42003-025-09096-3" in one
    for cls in ("maps", "uncertainty", "quality", "signals", "dictionary"):
        assert f'class="{cls}"' in one, cls
    # every figure is a valid PNG; one mosaic per parameter map, its SD, exit code and residual
    import matplotlib.image as mpimg
    imgs = _images(one)
    for raw in imgs:
        assert mpimg.imread(io.BytesIO(raw), format="png").shape[2] in (3, 4)
    n_maps = len(list((out / "sub-01/dwi").glob("*_dwimap.nii.gz")))
    n_diag_hidden = 3      # loglik, aic, bic of the joint fit's tissue part are tabulated, not drawn
    signals = 2            # measured vs fitted: the joint fit (tissue + vascular components), IVIM
    signals += 1           # the vascular panel: fV, D* and vm with their intervals
    n_intervals = len(list((out / "sub-01/dwi").glob("*_desc-ci95*_dwimap.nii.gz")))  # tabulated, not drawn
    assert n_intervals > 0 and "95% interval, low end" in one and "contraction (identifiability)" in one
    assert "Vascular maps and their uncertainty" in one
    assert len(imgs) == n_maps - n_diag_hidden - n_intervals + signals
    # dropped measurements and why (the joint fit takes every b > 0), and what the tissue part fits
    assert "b=0 shell (used for normalisation only)" in one and "below the vascular threshold" not in one
    assert "tissue posterior on b &gt;= 250 s/mm²" in one or "tissue posterior on b >= 250 s/mm²" in one
    # the protocol table lists every acquired shell: 2 diffusion times x (b=0 + 10 shells)
    block = one.split('id="sub-01-protocol"')[1].split("</table>")[0]
    assert block.count("<tr>") == 1 + 22
    assert (out / "logs/CITATION.md").read_text().count("doi:") >= 7


def test_report_summary_matches_the_maps(demo_run):
    _, out, _ = demo_run
    html = (out / "sub-01.html").read_text()
    fin = nib.load(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.nii.gz").get_fdata()
    ec = nib.load(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-exitcode_dwimap.nii.gz").get_fdata()
    med = np.median(fin[ec == 1])
    row = re.search(r"<td class=\"l\">fin</td><td></td><td>(\d+)</td><td>([0-9.e-]+)</td>", html)
    assert row and int(row[1]) == int((ec == 1).sum()) and float(row[2]) == pytest.approx(med, rel=1e-3)


def test_examples_are_model_predictions(demo_run):
    """The measured-vs-fitted voxels of the (default) joint fit: 'measured' is the fitted input, 'fitted' is
    the tissue plus the vascular component and reproduces it to within the demo's noise (SD 0.025 at b = 0,
    SNR 40), far closer than a constant curve."""
    _, _, work = demo_run
    ex = json.loads(next(work.rglob("single_subject_01_wf/joint_wf/fit_joint/examples.json")).read_text())
    assert 1 <= len(ex["voxels"]) <= 4 and len(ex["protocol"]) == len(ex["voxels"][0]["measured"])
    for v in ex["voxels"]:
        m, f = np.array(v["measured"]), np.array(v["fitted"])
        np.testing.assert_allclose(np.array(v["tissue"]) + np.array(v["vascular"]), f, atol=1e-9)
        rms = np.sqrt(np.mean((m - f) ** 2))
        assert rms < 0.04 and rms < 0.3 * np.sqrt(np.mean((m - m.mean()) ** 2)), rms
        assert 0 <= v["params"]["fV"] <= 1 and 0 < v["params"]["fin"] < 1


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("DMRIMC_REQUIRE_CHROMIUM"):
            pytest.fail("DMRIMC_REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip("headless Chromium not installed (Debian package chromium)")
    return exe


def render(html_file: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(DOM after load, console messages of level warning/error and uncaught exceptions) in headless Chromium."""
    exe = _chromium()
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
            "--v=0", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={html_file.parent / '.chromium'}"]
    url = html_file.resolve().as_uri()
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(base + ["--window-size=1300,4000", f"--screenshot={screenshot}", url], capture_output=True,
                       timeout=120, check=True)
    return dom.stdout, console


def test_console_check_catches_errors(tmp_path):
    """The harness itself: a page with a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p id='x'>x</p><script>console.error('boom'); undefinedFunction();</script>"
                    "</body></html>")
    dom, console = render(page)
    assert 'id="x"' in dom and any("boom" in c for c in console) and any("undefinedFunction" in c for c in console)


def test_demo_report_loads_in_chromium(demo_run, tmp_path):
    _, out, _ = demo_run
    page = tmp_path / "sub-02.html"
    shutil.copy(out / "sub-02.html", page)
    shot = ARTIFACTS / "report_sub-02.png"
    dom, console = render(page, shot)
    assert console == []
    for ses in ("ses-1", "ses-2"):
        for sect in SECTIONS[:-1]:
            assert f'id="{ses}-{sect}"' in dom
    assert 'id="methods"' in dom
    assert dom.count("<img") == len(_images(page.read_text()))
    import matplotlib.image as mpimg
    png = mpimg.imread(shot)
    assert png.shape[0] == 4000 and png.shape[1] == 1300 and png[..., :3].std() > 0.05  # not a blank page


def test_report_shows_estimate_placement_from_the_fit(demo_run):
    """The share of estimates on a dictionary node / at a bound is computed by the fit, recorded in the
    sidecars (EstimatePlacement, with the share chance puts on a node) and shown in the report."""
    _, out, _ = demo_run
    from dmrimc_bids.bids.derivatives import expanded_parameters
    place = expanded_parameters(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.json")[
        "EstimatePlacement"]
    assert set(place) == {"fin", "vCS_cyl", "D0in", "D0ex", "kappa"}
    fin = nib.load(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-fin_dwimap.nii.gz").get_fdata()
    code = nib.load(out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-exitcode_dwimap.nii.gz").get_fdata()
    assert place["fin"]["Voxels"] == int((code == 1).sum())
    assert all(0 <= v["OnDictionaryNode"] <= 1 and 0 <= v["AtBound"] <= 1 for v in place.values())
    html = (out / "sub-01.html").read_text()
    assert "Estimates on a dictionary node or at a bound" in html
    row = re.search(r"<td class=\"l\">kappa[^<]*</td><td>([0-9.]+) %</td><td>([0-9.]+) %</td><td>([0-9.]+) %</td>", html)
    assert row and float(row.group(1)) == pytest.approx(100 * place["kappa"]["OnDictionaryNode"], abs=0.05)
    assert float(row.group(2)) == pytest.approx(100 * place["kappa"]["OnDictionaryNodeByChance"], abs=0.05)
    assert all(0 <= v["OnDictionaryNodeByChance"] <= 1 for v in place.values())
    assert np.isfinite(fin[code == 1]).all()


def test_dictionary_provenance_is_a_readable_table_and_units_read_as_units(demo_run):
    """The provenance is a short table (source, substrates, entries, coverage, ranges with units, seed,
    checksum) with the whole record collapsed beside it; the report writes µm²/ms where the sidecars keep
    BIDS' um^2/ms."""
    _, out, _ = demo_run
    html = (out / "sub-01.html").read_text()
    block = html.split("<summary>Dictionary provenance</summary>")[1].split("</table>")[0]
    labels = re.findall(r'<tr><th class="l">([^<]+)</th>', block)
    assert labels[:4] == ["source", "substrates", "entries", "protocol coverage"], labels
    assert "checksum" in labels and "D0in" in labels and "µm²/ms" in block and "{" not in block
    visible = re.sub(r"<pre>.*?</pre>", "", html, flags=re.S)
    assert "um^2" not in visible and "µm²/ms" in visible
    side = json.loads((out / "sub-01/dwi/sub-01_space-dwi_model-histousim_param-D0in_dwimap.json").read_text())
    assert side["Units"] == "um^2/ms"


def test_methods_text_is_carried_by_the_workflows_that_ran(demo_run, demo_dir):
    """niworkflows' __desc__ style: each step's sentence lives on the workflow that builds it, the session's
    graph hands them to its report, and CITATION.md quotes them; another option or model changes them."""

    from dmrimc_bids.bids.layout import collect_inputs
    from dmrimc_bids.workflows import methods
    from dmrimc_bids.workflows.config import Config
    from dmrimc_bids.workflows.participant import init_single_subject_wf
    from dmrimc_bids.workflows.plan import plan_session

    _, out, _ = demo_run
    config = Config.from_dict(out_dir=str(out), bids_dir=str(demo_dir), derivatives=[str(demo_dir / "derivatives" / "segmentation")],
                    participant_label=["01"], seed=7).validate()
    item = collect_inputs(demo_dir, config.inputs.derivatives, ["01"], validate=False)[0]

    def carried(cfg):
        return init_single_subject_wf(plan_session(item, cfg)).get_node("session_report").inputs.pipeline_methods

    joint = carried(config)
    assert joint["desc"] == [methods.preproc_desc(config), methods.joint_desc()]
    assert joint["postdesc"] == ["Random seed: 7."]
    other = config.replace(b0_threshold=5.0, model="separate")
    separate = carried(other)
    assert separate["desc"] == [methods.preproc_desc(other), methods.separate_desc()]
    assert "b ≤ 5 s/mm²" in separate["desc"][0] and separate != joint
    citation = (out / "logs/CITATION.md").read_text()
    assert all(text in citation for text in joint["desc"] + joint["postdesc"])


def _sidecar(out, base, model, param):
    import json
    return json.loads(next(out.rglob(f"{base}_space-dwi_model-{model}_param-{param}_dwimap.json")).read_text())


@pytest.mark.slow
def test_the_written_text_follows_the_fit_that_ran(demo_run, single_demo, tmp_path, capsys):
    """Methods text, sidecar FitMethod/Description and the help's group title are generated from what ran:
    the default (joint fit, Bayesian IVIM with a noise map) and --model separate --ivim-estimator segmented."""
    from dmrimc_bids.cli.parser import build_parser
    from dmrimc_bids.cli.run import main
    _, out, _ = demo_run
    text = (out / "logs" / "CITATION.md").read_text()
    tissue = next(p for p in text.split("\n\n") if "Histo-μSim [histousim]" in p)
    flow = next(p for p in text.split("\n\n") if "SpinFlowSim [spinflowsim]" in p)
    assert "were discarded" not in tissue and "every measurement with b > 0 (b 25-2550" in tissue, tissue
    assert not any(k in flow for k in ("fin", "vCS_cyl", "kappa", "κ")), flow
    assert "P(no vascular" not in flow and "estimated from the session's voxels" in flow
    ivim = _sidecar(out, "sub-01", "ivim", "fV")
    assert "Bayesian IVIM" in ivim["Model"]["Description"] and "egmented" not in ivim["Model"]["Description"]
    assert "sigma from the noise map" in ivim["Model"]["Parameters"]["FitMethod"]
    assert "segmented" not in ivim["Description"]
    assert "posterior" in _sidecar(out, "sub-01", "ivim", "fV_desc-sd")["Description"]
    report = (out / "sub-01.html").read_text()
    assert "Segmented IVIM" not in report and "repeats the dictionary's prior" not in report
    # other options, other text
    out2 = tmp_path / "out2"
    assert main([str(single_demo), str(out2), "participant", "--model", "separate", "--ivim-estimator", "segmented",
                 "-w", str(tmp_path / "w"), "--derivatives", str(single_demo / "derivatives" / "segmentation")]) == 0
    text2 = (out2 / "logs" / "CITATION.md").read_text()
    tissue2 = next(p for p in text2.split("\n\n") if "Histo-μSim [histousim]" in p)
    assert "b < 250 s/mm² were discarded" in tissue2 and "(b 450-2550 s/mm²)" in tissue2, tissue2
    assert "segmented IVIM" in _sidecar(out2, "sub-01", "ivim", "fV")["Model"]["Description"]
    assert "S_V/S_V(0)" in _sidecar(out2, "sub-01", "spinflowsim", "vm")["Model"]["Description"]
    helptext = build_parser().format_help()
    assert "segmented IVIM + SpinFlowSim" not in helptext and "default bayes" in helptext
    assert "recorded in sidecars\n" not in helptext


def test_a_near_constant_float32_map_gets_its_picture():
    """pvascular of a session where every voxel has blood is 1 - 1e-8 in float32 (0.99999994 or 1): too few
    floats in that range for 30 histogram bins crashed the report (a session marked failed)."""
    from dmrimc_bids.reports import figures
    vol = np.where(np.arange(4 * 4 * 2).reshape(4, 4, 2) % 2, 1.0, 0.99999994).astype(np.float32)
    mask = np.ones(vol.shape, bool)
    assert figures.map_mosaic(vol, np.ones(vol.shape), mask, "pvascular", "")


def test_example_panel_titles_name_every_parameter_with_its_unit(demo_run, monkeypatch):
    """The measured-vs-fitted panels: voxel indices as plain integers (main: 'voxel (np.int64(7), ...)' in the
    IVIM panel), every tissue parameter (main cut the list at four: kappa was missing) with its unit."""
    from nipype.utils.filemanip import loadpkl

    from dmrimc_bids.bids.derivatives import find_maps
    from dmrimc_bids.reports import figures, subject
    _, out, work = demo_run
    inputs = loadpkl(next(work.rglob("single_subject_01_wf/session_report/_inputs.pklz")))
    titles = []
    monkeypatch.setattr(figures, "signal_panel", lambda vox, *a, **k: titles.extend(v["title"] for v in vox) or "")
    subject._example_figure(inputs["tissue_examples"], "t")
    mask = nib.load(inputs["mask_file"]).get_fdata() > 0
    maps = find_maps(out, "01", None)["ivim"]
    subject._ivim_figure(inputs["norm_file"], inputs["shells"], maps, mask)
    assert len(titles) >= 4 and not any("np." in t for t in titles), titles
    tissue = [t for t in titles if "fin=" in t]
    assert tissue and all("kappa=" in t and "µm/s" in t and "vCS_cyl=" in t and "µm" in t for t in tissue), tissue
    assert all(re.match(r"voxel \(\d+, \d+, \d+\)", t) for t in titles), titles


def test_no_offset_on_axes_and_the_legend_below_the_panels():
    """A near-constant S0 axis reads its values (main: '1e-5+9.977e-1'); the signal panel's legend sits below the
    axes, never on the data."""
    from dmrimc_bids.reports import figures
    plt = figures.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.99770, 0.99771])
    fig.canvas.draw()
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    plt.close(fig)
    captured = {}
    real = figures.to_data_uri
    figures.to_data_uri = lambda fig, tight=True: captured.setdefault("fig", fig) and ""
    try:
        figures.signal_panel([{"measured": [1, 0.8, 0.5], "fitted": [1, 0.79, 0.5], "title": "v"}],
                             np.array([0, 500, 1000.0]), "b", np.array([0, 0, 1]), ["a", "b"])
    finally:
        figures.to_data_uri = real
    fig = captured["fig"]
    assert not fig.axes[0].get_legend() and fig.legends
    assert fig.legends[0].get_window_extent().y1 <= fig.axes[0].get_window_extent().y0 + 1
