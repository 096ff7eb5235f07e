"""One Model/Fit protocol (core/fitting/model.py): every estimator fits, predicts and describes itself the
same way; the methods text follows the models and options that ran."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmrimc_bids.core.analytic import analytic_dictionary, two_compartment_signal
from dmrimc_bids.core.fitting.model import EXIT_BACKGROUND, EXIT_OK, Fit, Model
from dmrimc_bids.core.fitting.registry import build_model
from dmrimc_bids.core.protocol import Protocol

PROTO = Protocol([500, 1000, 2000, 2500] * 2, [10] * 4 + [15] * 4, [22.5] * 4 + [45] * 4)


def _tissue(shape=(3, 2)):
    """Noise-free signals of off-grid fin (0.33, 0.47, 0.61 ...) at vCS 12 µm, D0 1.9 (not dictionary entries)."""
    fins = np.linspace(0.33, 0.68, int(np.prod(shape)))
    data = np.stack([two_compartment_signal(PROTO.b, PROTO.small_delta_ms, PROTO.big_delta_ms, f, 12.0, 1.9, 1.9)
                     for f in fins])
    return data.reshape(shape + (len(PROTO),)), fins.reshape(shape)


@pytest.mark.parametrize("estimator", ["fit", "posterior-mean", "posterior-median"])
def test_dictionary_estimators_share_the_protocol(estimator):
    dic = analytic_dictionary().select(["fin", "vCS_cyl"], {"D0in": 1.9, "D0ex": 1.9}).match(PROTO)
    data, fins = _tissue()
    mask = np.ones(fins.shape, bool)
    mask[0, 0] = False
    model = build_model(estimator, dic, chunk_size=4)
    assert isinstance(model, Model)
    fit = model.fit(data, mask, np.full(fins.shape, 0.01))
    assert isinstance(fit, Fit) and fit.names == dic.names
    assert fit.exitcode[0, 0] == EXIT_BACKGROUND and np.all(fit.exitcode[mask] == EXIT_OK)
    # the estimate follows the truth (a constant guess would not): within 0.05 of fin everywhere
    err = np.abs(fit.params["fin"][mask] - fins[mask])
    assert err.max() < 0.05 and np.abs(np.median(fins[mask]) - fins[mask]).max() > 0.1
    assert set(fit.sd) == {"fin", "vCS_cyl"} and np.all(np.isfinite(fit.sd["fin"][mask]))
    # predict: the model signal of the fitted voxels, close to the noise-free data
    sel = np.nonzero(mask)
    err = np.abs(fit.predict(sel) - data[sel]).max()
    assert err < 0.04 and err < 0.5 * np.abs(data[sel].mean(0) - data[sel]).max()  # beats the mean signal
    ex = fit.examples(dic.protocol.to_rows())
    assert 1 <= len(ex["voxels"]) <= 4 and len(ex["voxels"][0]["fitted"]) == len(PROTO)
    desc = model.describe()
    assert desc.method and desc.parameters["FitMethod"] and desc.parameters["NoiseModel"]
    assert ("posterior" in desc.parameters["FitMethod"]) == estimator.startswith("posterior")
    json.dumps(desc.to_dict())


@pytest.mark.parametrize("estimator", ["fit", "posterior"])
def test_model_predict_is_the_signal_at_given_parameters(estimator):
    """Model.predict(params): the noise-free signal at parameter values, one meaning for every model (main: the
    ML model ignored the data, the posterior the parameters). At an entry's parameters it is that entry's signal
    (exactly for the posterior, whose forward model is its entries; within the surrogate's error for ML), and
    another protocol is refused."""
    dic = analytic_dictionary().select(["fin", "vCS_cyl"], {"D0in": 1.9, "D0ex": 1.9}).match(PROTO)
    model = build_model(estimator, dic)
    k = np.arange(0, len(dic), max(1, len(dic) // 7))
    predicted = model.predict(dic.params[k])
    tol = 0.0 if estimator == "posterior" else 2e-3
    assert predicted.shape == (k.size, len(PROTO)) and np.abs(predicted - dic.signals[k]).max() <= tol
    assert np.abs(model.predict(dic.params[k[::-1]]) - dic.signals[k]).max() > 0.05   # it follows the parameters
    with pytest.raises(ValueError, match="own"):
        model.predict(dic.params[k], Protocol([1000.0], [10.0], [30.0]))


def test_joint_model_is_built_by_name_and_its_fit_predicts_its_fitted_signal():
    """build_model('joint') (main: ValueError), its Fit a Fit (names, params, sd, exitcode; main: none), whose
    predict() is the fitted signal (the two compartments) and agrees with the model's fitted_signal; the model's
    predict(params) is (1 - fV)·S_tissue + fV·S_flow at the entries' parameters."""
    from .test_joint import PROT, flow_dictionary, mixed, tissue_dictionary
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(11)
    n = 16
    it, iv, fv = rng.integers(0, len(tissue), n), rng.integers(0, len(flow), n), rng.uniform(0.03, 0.2, n)
    clean = mixed(tissue, flow, it, iv, fv)
    y = clean + rng.normal(0, 0.005, clean.shape)
    model = build_model("joint", tissue, flow_dictionary=flow, tissue_b_min=200)
    fit = model.fit(y, sigma=np.full(n, 0.005))
    assert isinstance(model, Model) and isinstance(fit, Fit)
    assert fit.names == ["fin", "D0ex", "fV", "vm", "anb"] and set(fit.params) >= set(fit.names)
    assert np.all(fit.exitcode == EXIT_OK) and {"fin", "fV", "vm"} <= set(fit.sd)
    everywhere = (np.arange(n),)
    fitted = fit.predict(everywhere)
    ex = fit.examples(PROT.to_rows())
    k = ex["voxels"][0]["ijk"][0]
    np.testing.assert_allclose(ex["voxels"][0]["fitted"], fitted[k], atol=1e-12)
    np.testing.assert_allclose(model.fitted_signal(y, sigma=np.full(n, 0.005)), fitted, atol=1e-9)
    misfit, constant = np.abs(fitted - clean).max(), np.abs(clean.mean(0) - clean).max()
    assert misfit < 0.02 and misfit < 0.25 * constant
    params = np.column_stack([tissue.params[it], fv, flow.params[iv]])
    np.testing.assert_allclose(model.predict(params), clean, atol=1e-12)
    with pytest.raises(ValueError, match="flow dictionary"):
        build_model("joint", tissue)


def test_ivim_predict_evaluates_any_protocol():
    shells = Protocol(np.array([0, 10, 50, 200, 800.0]), 10.0, 30.0)
    other = Protocol(np.array([0, 25, 400, 1500.0]), 10.0, 30.0)
    model = build_model("ivim", protocol=shells, b0_threshold=5.0)
    params = np.array([[0.1, 1.2, 30.0, 1.0], [0.02, 0.8, 12.0, 2.0]])
    b = other.b[None, :] * 1e-3
    expected = params[:, 3:] * ((1 - params[:, :1]) * np.exp(-b * params[:, 1:2]) + params[:, :1] * np.exp(-b * params[:, 2:3]))
    np.testing.assert_allclose(model.predict(params, other), expected, rtol=1e-12)
    assert model.predict(params).shape == (2, len(shells))


def test_ivim_model_fits_predicts_and_hands_on_the_vascular_signal():
    b = np.array([0, 10, 25, 50, 100, 200, 400, 600, 800, 1000], float)
    shells = Protocol(b, 10.0, 30.0, echo_time_ms=80.0)
    fv = np.array([[0.0, 0.05], [0.10, 0.15]])
    d, dstar = 1.2, 25.0
    data = (1 - fv)[..., None] * np.exp(-b * 1e-3 * d) + fv[..., None] * np.exp(-b * 1e-3 * dstar)
    model = build_model("ivim", protocol=shells, b_split=200.0, b_max=1000.0, b0_threshold=5.0)
    fit = model.fit(data, np.ones(fv.shape, bool))
    assert {"fV", "D", "Dstar", "S0", "fV_sd", "fV_ci95lo", "fV_ci95hi", "fV_contraction",
            "Dstar_ci95hi"} <= set(fit.maps())
    # noise-free: intervals contain the truth and f is determined
    assert np.all(fit.maps()["fV_ci95lo"] <= fv + 5e-3)
    assert np.all(fit.maps()["fV_ci95hi"] >= fv - 5e-3) and np.all(fit.maps()["fV_contraction"] > 0.9)
    assert np.abs(fit.params["fV"] - fv).max() < 0.01 and np.abs(fit.params["D"] - d).max() < 0.02
    sel = np.nonzero(fv > 0)
    assert np.abs(fit.predict(sel) - data[sel]).max() < 0.01
    vas = fit.flow_signal
    # the posterior mean of fV is > 0 wherever fV is bounded below by 0: the f = 0 voxel is a few 1e-3
    assert vas.mask[sel].all() and vas.reason == "" and fit.params["fV"][0, 0] < 0.01
    seg = build_model("ivim", protocol=shells, b0_threshold=5.0, method="segmented").fit(data, np.ones(fv.shape, bool))
    assert not seg.flow_signal.mask[0, 0] and seg.flow_signal.mask[sel].all()
    assert np.allclose(vas.signal[1, 1], np.exp(-shells.b[vas.index] * 1e-3 * dstar), atol=0.03)
    assert model.describe().parameters["BSplit"] == 200.0 and "ivim" in model.describe().references


def test_ivim_without_vascular_signal_writes_no_flow_maps(tmp_path):
    """No voxel with fV >= 0.005: the flow fit gets an empty mask and writes nothing; the reason is given
    (the old interface invented a one-voxel mask and wrote maps that meant nothing)."""
    import nibabel as nib

    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.interfaces.fitting import FitModel

    b = np.array([0, 10, 25, 50, 100, 200, 400, 600, 800, 1000], float)
    shells = Protocol(b, 10.0, 30.0, echo_time_ms=80.0)
    data = np.broadcast_to(np.exp(-b * 1e-3 * 1.1), (3, 3, 1, b.size)).astype(np.float32)
    aff = np.eye(4)
    nib.Nifti1Image(data, aff).to_filename(tmp_path / "norm.nii.gz")
    nib.Nifti1Image(np.ones((3, 3, 1), np.uint8), aff).to_filename(tmp_path / "mask.nii.gz")
    shells.to_table(tmp_path / "shells.tsv")
    (tmp_path / "ivim").mkdir()
    (tmp_path / "flow_fit").mkdir()
    ivim = FitModel(estimator="ivim", b_split=200.0, b_max=1000.0, b0_threshold=5.0,
                    in_file=str(tmp_path / "norm.nii.gz"), mask_file=str(tmp_path / "mask.nii.gz"),
                    protocol=str(tmp_path / "shells.tsv")).run(cwd=str(tmp_path / "ivim"))
    out = ivim.outputs
    assert "no voxel has fV >= 0.005" in out.signal_reason and out.signal_reason in out.notes
    assert not np.asarray(nib.load(out.signal_mask).dataobj).any()
    vm = Protocol.from_table(out.signal_protocol)
    rng = np.random.default_rng(3)
    flow = Dictionary(rng.uniform(0.1, 1, (20, len(vm))).astype(np.float32), rng.uniform(1, 5, (20, 1)), ["vm"],
                      vm, {"vm": "mm/s"}, {})
    flow.save(tmp_path / "flow")
    res = FitModel(estimator="posterior-mean", in_file=out.signal_file, mask_file=out.signal_mask,
                   dictionary=str(tmp_path / "flow.npz")).run(cwd=str(tmp_path / "flow_fit"))
    assert res.outputs.maps == {} and res.outputs.info["n_fitted"] == 0


def test_methods_text_follows_what_ran(tmp_path):
    """Each of --params, --fix, --dictionary, the estimator, the noise model and the dictionary's provenance
    changes the methods text."""
    from dmrimc_bids.core.dictionary_default import load_selected
    from dmrimc_bids.reports.citations import methods_paragraphs

    base = analytic_dictionary()
    base.provenance["source"] = "analytic restricted cylinders"
    base.save(tmp_path / "mine")

    def text(estimator="posterior-median", params=None, fix=None, file=None, **options):
        dic = load_selected(str(file) if file else str(tmp_path / "mine.npz"), params, fix).match(PROTO)
        desc = {**build_model(estimator, dic, **options).describe().to_dict(), "dictionary": dic.summary()}
        paragraphs = methods_paragraphs({"histousim": desc}, {"b0_threshold": 20, "vasc_threshold": 250})
        return next(p for p in paragraphs if "Histo-μSim" in p)

    ref = text()
    assert "posterior median" in ref and str(tmp_path / "mine.npz") in ref and "analytic restricted" in ref
    assert "estimating fin, vCS, D0in and D0ex" not in ref and "vCS_cyl" in ref
    assert "posterior mean" in text("posterior-mean")
    fitted = text("fit", noise="rician")
    assert "Levenberg-Marquardt" in fitted and "Rician" in fitted and "offset-Gaussian" in text("fit")
    assert "fin fixed at 0.5" not in ref and "D0in fixed at 1.9" in text(params=["fin"], fix={"D0in": 1.9})
    assert text(params=["fin"], fix={"D0in": 1.9}) != text(params=["fin", "vCS_cyl"], fix={"D0in": 1.9})
    other = analytic_dictionary()
    other.provenance["source"] = "someone else's simulation"
    other.save(tmp_path / "other")
    changed = text(file=tmp_path / "other.npz")
    assert "someone else's simulation" in changed and str(tmp_path / "other.npz") in changed


def test_config_resolves_paths_once_and_is_written(tmp_path, monkeypatch, demo_dir):
    """A relative --dictionary is read from where the command started (it used to pass the preflight and
    then fail inside the graph, whose nodes run in their own folders); the config is logged."""
    from dmrimc_bids.cli.parser import build_parser, config_from_args
    from dmrimc_bids.core.errors import InputError
    from dmrimc_bids.workflows.config import Config

    folds = tmp_path / "folds"
    folds.mkdir()
    analytic_dictionary().save(folds / "fold13")
    run_here = tmp_path / "here"
    run_here.mkdir()
    monkeypatch.chdir(run_here)
    args = build_parser().parse_args([str(demo_dir), "out", "participant", "--dictionary", "../folds/fold13.npz"])
    cfg = config_from_args(args)
    assert cfg.tissue.dictionary == str((folds / "fold13.npz").resolve()) and cfg.run.out_dir == str(run_here / "out")
    path = cfg.write("test")
    logged = json.loads(path.read_text())
    assert logged["tissue"]["dictionary"] == cfg.tissue.dictionary and logged["tissue"]["estimator"] == "posterior"
    assert Config.from_dict({k: v for k, v in logged.items() if k != "dmrimc_bids_version"}) == cfg
    args = build_parser().parse_args([str(demo_dir), "out", "participant", "--dictionary", "../folds/none.npz"])
    with pytest.raises(InputError, match="--dictionary ../folds/none.npz: file not found"):
        config_from_args(args)
