"""Joint tissue + vascular posterior (core/fitting/joint.py) and `--model joint`."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import spearmanr

from dmrimc_bids.core.dictionary import Dictionary
from dmrimc_bids.core.fitting.joint import TISSUE_REMOVAL_P_ZERO, JointModel, normalisation_groups
from dmrimc_bids.core.fitting.posterior import PosteriorModel
from dmrimc_bids.core.protocol import Protocol

B = np.array([25.0, 50, 100, 200, 400, 800, 1200, 2000])
PROT = Protocol(np.r_[B, B], 10.0, np.r_[np.full(8, 25.0), np.full(8, 45.0)],
                echo_time_ms=np.r_[np.full(8, 60.0), np.full(8, 80.0)])


def tissue_dictionary():
    """Two compartments, the extra-cellular one hindered more at the longer Δ (a diffusion-time effect)."""
    f, d_ex = np.meshgrid(np.linspace(0.2, 0.8, 7), np.linspace(1.0, 3.0, 5), indexing="ij")
    f, d_ex = f.ravel(), d_ex.ravel()
    b, big = PROT.b * 1e-3, PROT.big_delta_ms
    sig = f[:, None] * np.exp(-b * 0.4) + (1 - f[:, None]) * np.exp(-b * d_ex[:, None] * (1 - big / 200))
    return Dictionary(sig, np.stack([f, d_ex], 1), ["fin", "D0ex"], PROT)


def flow_dictionary():
    """Pseudo-diffusion compartments e^{-b D*} with D* 5-150 µm²/ms ('vm' a stand-in, 'anb' tied to it)."""
    dstar = np.geomspace(5.0, 150.0, 12)
    sig = np.exp(-np.outer(dstar, PROT.b) * 1e-3)
    return Dictionary(sig, np.stack([dstar / 10, 1 + dstar / 50], 1), ["vm", "anb"], PROT)


def mixed(tissue, flow, it, iv, fv):
    return (1 - fv[:, None]) * tissue.signals[it] + fv[:, None] * flow.signals[iv]


def test_normalisation_groups_follow_te_and_series():
    groups, n = normalisation_groups(PROT)
    assert n == 2 and np.array_equal(groups, np.r_[np.zeros(8), np.ones(8)])


def test_noise_free_joint_voxel_is_recovered_exactly():
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(4)
    it, iv = rng.integers(0, len(tissue), 12), rng.integers(0, len(flow), 12)
    fv = rng.uniform(0.03, 0.2, 12)
    model = JointModel(tissue, flow, n_candidates=len(tissue), tissue_b_min=200)
    fit = model.fit(mixed(tissue, flow, it, iv, fv), sigma=np.full(12, 1e-5))
    np.testing.assert_allclose(fit.vascular.params["fV"], fv, atol=2e-4)
    for j, name in enumerate(flow.names):
        np.testing.assert_allclose(fit.vascular.params[name], flow.params[iv, j], rtol=1e-9)
    for j, name in enumerate(tissue.names):
        np.testing.assert_allclose(fit.tissue.params[name], tissue.params[it, j], atol=1e-3)
    np.testing.assert_allclose(fit.vascular_signal, fv[:, None] * flow.signals[iv], atol=1e-3)


@pytest.mark.parametrize("prior", ["entries", "design"])
def test_without_a_vascular_compartment_the_joint_fit_is_the_tissue_fit(prior):
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(5)
    it = rng.integers(0, len(tissue), 30)
    y = np.hypot(tissue.signals[it] + rng.normal(0, 0.02, (30, len(PROT))), rng.normal(0, 0.02, (30, len(PROT))))
    joint = JointModel(tissue, flow, fv_max=0.0, tissue_b_min=200, prior=prior).fit(y, sigma=np.full(30, 0.02))
    cols = np.flatnonzero(PROT.b >= 200)
    alone = PosteriorModel(tissue.measurements(cols), prior=prior).fit(y[:, cols], sigma=np.full(30, 0.02))
    assert np.all(joint.vascular.params["fV"] == 0)
    for name in tissue.names:
        np.testing.assert_array_equal(joint.tissue.params[name], alone.params[name])
        np.testing.assert_array_equal(joint.tissue.ci95hi[name], alone.ci95hi[name])


def test_joint_recovers_the_vascular_fraction_better_than_a_constant():
    """Truths off the dictionaries (tissue and D* between their entries), Rician noise at SNR 100."""
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(6)
    n = 300
    f_in, d_ex = rng.uniform(0.2, 0.8, n), rng.uniform(1.0, 3.0, n)
    b, big = PROT.b * 1e-3, PROT.big_delta_ms
    t = f_in[:, None] * np.exp(-b * 0.4) + (1 - f_in[:, None]) * np.exp(-b * d_ex[:, None] * (1 - big / 200))
    v = np.exp(-np.outer(np.exp(rng.uniform(np.log(8), np.log(100), n)), PROT.b) * 1e-3)
    fv = rng.uniform(0.02, 0.2, n)
    clean = (1 - fv[:, None]) * t + fv[:, None] * v
    y = np.hypot(clean + rng.normal(0, 0.01, clean.shape), rng.normal(0, 0.01, clean.shape))
    fit = JointModel(tissue, flow, tissue_b_min=200).fit(y, sigma=np.full(n, 0.01))
    est = fit.vascular.params["fV"]
    assert spearmanr(est, fv).statistic > 0.8
    assert np.median(np.abs(est - fv)) < 0.5 * np.median(np.abs(np.median(fv) - fv))
    cover = np.mean((fv >= fit.vascular.ci95lo["fV"]) & (fv <= fit.vascular.ci95hi["fV"]))
    assert cover > 0.8
    assert spearmanr(fit.tissue.params["fin"], f_in).statistic > 0.9


@pytest.mark.slow
def test_model_joint_writes_the_joint_and_the_ivim_maps(tmp_path, single_demo, capsys):
    from dmrimc_bids.cli.run import main
    out = tmp_path / "out"
    code = main([str(single_demo), str(out), "participant", "--model", "joint", "--prior", "design",
                 "-w", str(tmp_path / "w"), "--derivatives", str(single_demo / "derivatives" / "segmentation")])
    assert code == 0, capsys.readouterr().err
    dwi = out / "sub-01" / "dwi"
    fin = nib.load(dwi / "sub-01_space-dwi_model-histousim_param-fin_dwimap.nii.gz").get_fdata()
    fv = nib.load(dwi / "sub-01_space-dwi_model-spinflowsim_param-fV_dwimap.nii.gz").get_fdata()
    ok = np.isfinite(fin)
    assert ok.sum() > 100 and np.all((fv[ok] >= 0) & (fv[ok] <= 0.3))
    # the IVIM maps are written under --model joint too, with their intervals and the run's model
    ivim_fv = nib.load(dwi / "sub-01_space-dwi_model-ivim_param-fV_dwimap.nii.gz").get_fdata()
    assert np.isfinite(ivim_fv[ok]).mean() > 0.95
    assert (dwi / "sub-01_space-dwi_model-ivim_param-Dstar_desc-ci95hi_dwimap.nii.gz").is_file()
    ivim_side = json.loads((dwi / "sub-01_space-dwi_model-ivim_param-fV_dwimap.json").read_text())
    assert ivim_side["Model"]["Parameters"]["ModelOfRun"] == "joint"
    assert ivim_side["Model"]["Parameters"]["IvimEstimator"] == "bayes"
    side = json.loads((dwi / "sub-01_space-dwi_model-spinflowsim_param-fV_dwimap.json").read_text())
    assert "joint" in side["Model"]["Parameters"]["FitMethod"] and "joint" in side["Description"]
    assert (dwi / "sub-01_space-dwi_model-spinflowsim_param-fV_desc-ci95hi_dwimap.nii.gz").is_file()
    tissue_side = json.loads((dwi / "sub-01_space-dwi_model-histousim_param-fin_dwimap.json").read_text())
    from dmrimc_bids.bids.derivatives import expanded_parameters
    assert expanded_parameters(dwi / "sub-01_space-dwi_model-histousim_param-fin_dwimap.json")["JointModel"]["FlowEntries"] > 0
    assert tissue_side["Model"]["Parameters"]["Prior"] == "design"


def test_model_joint_refuses_the_maximum_likelihood_estimator(tmp_path, single_demo, capsys):
    from dmrimc_bids.cli.run import main
    code = main([str(single_demo), str(tmp_path / "o"), "participant", "--model", "joint", "--estimator", "ml"])
    err = capsys.readouterr().err
    assert code == 64 and "--model joint" in err and "--estimator ml" in err
    assert not (tmp_path / "o" / "sub-01").exists()
    code = main([str(single_demo), str(tmp_path / "o"), "participant", "--t2-blood-ms", "200"])
    err = capsys.readouterr().err
    assert code == 64 and "--t2-blood-ms" in err and "--model joint" in err


def test_without_a_noise_map_sigma_is_estimated_and_every_voxel_fitted():
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(8)
    it, iv = rng.integers(0, len(tissue), 40), rng.integers(0, len(flow), 40)
    fv = rng.uniform(0.05, 0.15, 40)
    y = mixed(tissue, flow, it, iv, fv) + rng.normal(0, 0.01, (40, len(PROT)))
    fit = JointModel(tissue, flow, tissue_b_min=200).fit(y)
    assert np.all(fit.tissue.exitcode == 1) and np.all(fit.vascular.exitcode == 1)
    assert spearmanr(fit.tissue.params["fin"], tissue.params[it, 0]).statistic > 0.8
    assert np.all(np.isfinite(fit.vascular.params["fV"]))


def test_blood_t2_is_corrected_when_both_t2s_are_given():
    """Blood T2 200 ms, tissue 80 ms, TE 60/80 ms: the apparent vascular fraction is larger at the longer
    TE. With both T2s given the joint fit recovers the volume fraction; with none, the signal fraction."""
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(9)
    it, iv = rng.integers(0, len(tissue), 30), rng.integers(0, len(flow), 30)
    fv = rng.uniform(0.03, 0.15, 30)
    te = PROT.echo_time_ms
    blood, tis = np.exp(-te / 200.0), np.exp(-te / 80.0)
    sig = ((1 - fv[:, None]) * tis * tissue.signals[it] + fv[:, None] * blood * flow.signals[iv]) / \
        ((1 - fv[:, None]) * tis + fv[:, None] * blood)
    corrected = JointModel(tissue, flow, n_candidates=len(tissue), tissue_b_min=200, t2_tissue_ms=80.0,
                           t2_blood_ms=200.0).fit(sig, sigma=np.full(30, 1e-4))
    plain = JointModel(tissue, flow, n_candidates=len(tissue), tissue_b_min=200).fit(sig, sigma=np.full(30, 1e-4))
    err_corrected = np.abs(corrected.vascular.params["fV"] - fv)
    err_plain = np.abs(plain.vascular.params["fV"] - fv)
    assert np.median(err_corrected) < 0.01 < np.median(err_plain)
    with pytest.raises(ValueError, match="both T2s"):
        JointModel(tissue, flow, t2_tissue_ms=80.0)


def test_blood_free_voxels_are_fitted_as_tissue_only_under_the_default_prior():
    """A blood-free session teaches its own prior 'no vascular signal' (P near 1): its tissue is fitted as
    tissue only (fV near 0, the tissue maps those of the tissue posterior to a small fraction of their SD),
    while a session with blood keeps its fV."""
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(8)
    n = 80
    it = rng.integers(0, len(tissue), n)
    noise = lambda s: np.hypot(s + rng.normal(0, 0.01, s.shape), rng.normal(0, 0.01, s.shape))  # noqa: E731
    y = noise(tissue.signals[it])
    model = JointModel(tissue, flow, tissue_b_min=200)
    joint = model.fit(y, sigma=np.full(n, 0.01))
    assert model.prior.source == "session" and model.prior.p_zero > 0.9
    cols = np.flatnonzero(PROT.b >= 200)
    alone = PosteriorModel(tissue.measurements(cols)).fit(y[:, cols], sigma=np.full(n, 0.01))
    assert np.median(joint.vascular.params["fV"]) < 0.01
    flat = JointModel(tissue, flow, tissue_b_min=200, p_zero=0.0).fit(y, sigma=np.full(n, 0.01))
    assert np.median(joint.vascular.params["fV"]) < 0.5 * np.median(flat.vascular.params["fV"])
    for name in tissue.names:
        close = np.abs(joint.tissue.params[name] - alone.params[name]) <= 0.1 * alone.sd[name] + 1e-9
        assert close.mean() > 0.8, name
    # with blood (fV 0.1) the spike does not take it away
    iv = rng.integers(0, len(flow), n)
    yb = noise(mixed(tissue, flow, it, iv, np.full(n, 0.1)))
    fit = JointModel(tissue, flow, tissue_b_min=200).fit(yb, sigma=np.full(n, 0.01))
    assert abs(np.median(fit.vascular.params["fV"]) - 0.1) < 0.03


def test_the_vascular_prior_is_the_sessions_own_and_small_fv_is_not_collapsed():
    """Half of the voxels blood-free, half with a small fV (0.02-0.08): the estimated prior's mean fV is the
    session's (a spike at 0 and a steep slab near 0 are nearly the same prior, so its two parts are not
    asserted apart), and fewer than 5 % of the voxels with blood read fV < 0.01, where the constant
    prior of 0.95 on fV = 0 (the old default) maps many of them to 0."""
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(11)
    n = 240
    it, iv = rng.integers(0, len(tissue), n), rng.integers(0, len(flow), n)
    fv = np.where(np.arange(n) % 2 == 0, rng.uniform(0.02, 0.08, n), 0.0)
    y = np.hypot(mixed(tissue, flow, it, iv, fv) + rng.normal(0, 0.015, (n, len(PROT))),
                 rng.normal(0, 0.015, (n, len(PROT))))
    model = JointModel(tissue, flow, tissue_b_min=200)
    est = model.fit(y, sigma=np.full(n, 0.015)).vascular.params["fV"]
    assert abs(model.prior.moments()[0] - fv.mean()) < 0.01
    blood = fv > 0
    assert np.mean(est[blood] < 0.01) < 0.05
    const = JointModel(tissue, flow, tissue_b_min=200, p_zero=0.95).fit(y, sigma=np.full(n, 0.015))
    assert np.mean(const.vascular.params["fV"][blood] < 0.01) > 2 * max(np.mean(est[blood] < 0.01), 0.02)
    assert np.median(np.abs(est - fv)[blood]) < np.median(np.abs(const.vascular.params["fV"] - fv)[blood])
    # too few voxels: the constant, and the sidecar says so
    small = JointModel(tissue, flow, tissue_b_min=200)
    small.fit(y[:10], sigma=np.full(10, 0.015))
    assert small.prior.source == "constant" and "constant" in small.describe().parameters["VascularPrior"]["Source"]


def test_the_vascular_component_is_removed_in_proportion_to_its_posterior():
    """Soft removal: every voxel's tissue data lose the vascular component's mean given a vascular signal
    times P(vascular | data) at the tissue step's odds, also where a vascular signal is only somewhat likelier
    than none (no Bayes-factor threshold that a small change of input flips), so the tissue input moves
    continuously with the data."""
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(12)
    n = 120
    it, iv = rng.integers(0, len(tissue), n), rng.integers(0, len(flow), n)
    fv = rng.uniform(0.0, 0.04, n)
    y = np.hypot(mixed(tissue, flow, it, iv, fv) + rng.normal(0, 0.015, (n, len(PROT))),
                 rng.normal(0, 0.015, (n, len(PROT))))
    model = JointModel(tissue, flow, tissue_b_min=200, p_zero=0.95)   # the old default's prior

    def tissue_input(data):
        out = {k: np.zeros((n, 3)) for k in ("params", "sd", "lo", "hi", "contraction")}
        out["p_none"], out["log_bf"] = np.zeros(n), np.zeros(n)
        y_t, sig_t, vs, sv = np.zeros_like(data), np.full(n, 0.015), np.zeros_like(data), np.zeros(n)
        model._vascular_chunk(data, np.full(n, 0.015), np.arange(n), out, vs, y_t, sig_t, sv)
        return y_t, out, vs
    y_t, out, vs = tissue_input(y)
    p_none = out["p_none"]
    bf = np.exp(out["log_bf"])   # Bayes factor of a vascular signal, as P(fV = 0 | data) under the prior says
    np.testing.assert_allclose(bf, (0.95 / 0.05) * (1 - p_none) / p_none, rtol=1e-4)   # up to the pruned pairs
    odds = TISSUE_REMOVAL_P_ZERO / (1 - TISSUE_REMOVAL_P_ZERO)
    w = bf / (bf + odds)   # P(vascular | data) at the tissue step's odds
    slab = 1 - p_none
    ef = w * out["params"][:, -1] / slab
    np.testing.assert_allclose(y_t, (y - (w / slab)[:, None] * vs) / (1 - ef[:, None]), rtol=1e-9, atol=1e-12)
    # where the old rule (Bayes factor <= 99) left the data as measured, a part is removed
    middling = (bf <= 99) & (out["params"][:, -1] > 0.005) & (w > 0.05)
    assert middling.sum() >= 5 and np.all(np.abs(y_t - y)[middling].max(1) > 1e-4)
    y_t2 = tissue_input(y * (1 + 1e-5))[0]
    assert np.abs(y_t2 - y_t).max() < 1e-3


def test_joint_is_the_default_where_it_can_run(tmp_path, single_demo):
    """No --model: joint; options the joint fit cannot take select separate (an explicit --model joint with
    them is refused above); a session without IVIM b-values gets the tissue fit alone."""
    from dmrimc_bids.cli.parser import build_parser, config_from_args
    from dmrimc_bids.workflows.config import Config
    base = [str(single_demo), str(tmp_path / "o"), "participant"]
    model = lambda *extra: config_from_args(build_parser().parse_args(base + list(extra))).vascular.model  # noqa: E731
    assert model() == "joint" and model("--model", "separate") == "separate"
    assert model("--estimator", "ml") == model("--vascular", "off") == "separate"
    cfg = Config.from_dict(out_dir=str(tmp_path / "o"))
    assert cfg.vascular.model == "joint" and cfg.session_model(True) == "joint" and cfg.session_model(False) == "separate"
    assert Config.from_dict(out_dir="", estimator="ml").session_model(True) == "separate"


def test_the_bayes_factor_survives_a_session_prior_of_no_blood_free_voxel():
    """A session where every voxel has blood learns P(no vascular signal) near 0; the tissue step's weight
    comes from the kernel's Bayes factor (exact), not from P(fV = 0 | data), which is then 0 to rounding
    and would call every voxel blood-free: the vascular component is removed (weight near 1)."""
    tissue, flow = tissue_dictionary(), flow_dictionary()
    rng = np.random.default_rng(13)
    n = 120
    it, iv = rng.integers(0, len(tissue), n), rng.integers(0, len(flow), n)
    y = np.hypot(mixed(tissue, flow, it, iv, rng.uniform(0.08, 0.2, n)) + rng.normal(0, 0.01, (n, len(PROT))),
                 rng.normal(0, 0.01, (n, len(PROT))))
    model = JointModel(tissue, flow, tissue_b_min=200)
    model.fit(y, sigma=np.full(n, 0.01))
    assert model.prior.p_zero < 0.05
    post = model.vascular_posterior(y, np.full(n, 0.01))
    assert np.median(model.removal_weight(post["fv"][:, 3])) > 0.9


FAR_TAIL = pytest.mark.xfail(strict=True, reason=(
    "known, kept as issue #41 found it (the maps must not change there): each pair's Gaussian in fV lies 12-16 SDs "
    "below 0, where 1 - Φ computed as a difference rounds to 0, and the span filter compares the pairs' "
    "unconstrained profiles, which a far-outside fV inflates by e^{d²/2}: one flow entry of three is kept and "
    "E[fV] is 3x too small. Computing both exactly raises the blood-free real-histology fV median from 0.006 "
    "to 0.014 (benchmarks/estimator_parity.py), a change of the science for its own issue"))


@pytest.mark.parametrize("p_zero, rate, offset, sigma", [
    (0.5, 0.0, 0.05, 0.02), (0.9, 5.0, 0.02, 0.02), (0.0, 0.0, 0.1, 0.02), (0.99, 400.0, 0.0, 0.02),
    (0.3, 400.0, -0.02, 0.02), (0.0, 0.0, -0.6, 0.02),
    pytest.param(0.99, 400.0, 0.0, 0.05, marks=FAR_TAIL), pytest.param(0.3, 400.0, -0.02, 0.05, marks=FAR_TAIL)])
def test_pair_posterior_is_the_quadrature_of_the_joint_model(p_zero, rate, offset, sigma):
    """joint_pair_moments' E[fV], P(fV = 0) and log Bayes factor for one tissue candidate and three flow
    entries (no normalisation noise, equal T2s) against a quadrature over fV of the exact posterior: spike p0 at 0
    and slab ∝ e^{-rate·f} on [0, fv_max]: the Gaussian in fV of each pair, its truncation and the slab's
    exponential (offset -0.6: the pairs' fV above fv_max). FAR_TAIL: the cases the kernel gets wrong."""
    from dmrimc_bids.core.fitting import kernels
    rng = np.random.default_rng(3)
    m, fv_max = 8, 0.3
    t = np.exp(-np.linspace(0.2, 2.0, m))
    flows = np.stack([np.exp(-np.linspace(0.2, 2.0, m) * d) for d in (5.0, 12.0, 30.0)])
    y = (1 - 0.08) * t + 0.08 * flows[1] + offset * (t - flows[1]) + rng.normal(0, sigma, m)
    n_f = len(flows)
    w_flow, g_flow, f_mom = np.empty((1, n_f)), np.empty((1, n_f)), np.empty((1, 4))
    kernels.joint_pair_moments(y[None], np.array([sigma ** 2]), t[None, None], np.ascontiguousarray(flows.T),
                               (flows ** 2).sum(1), fv_max, np.zeros(m, np.int64), np.zeros((1, 1)), np.ones(m),
                               w_flow, g_flow, f_mom, np.empty((1, 1, n_f)), p_zero, rate)
    f = np.linspace(0.0, fv_max, 600001)   # the slab on [0, fv_max] (its density is finite at 0)
    log_like = -((y[None, None] - (1 - f[None, :, None]) * t - f[None, :, None] * flows[:, None]) ** 2).sum(2) / (
        2 * sigma ** 2)   # [Kf, F]
    spike_ll = -((y - t) ** 2).sum() / (2 * sigma ** 2)
    ref = max(log_like.max(), spike_ll)
    slab_density = np.exp(-rate * f) / np.trapezoid(np.exp(-rate * f), f)
    slab = np.trapezoid(np.exp(log_like - ref) * slab_density, f, axis=1).mean()   # flow entries 1/Kf each
    slab_f = np.trapezoid(np.exp(log_like - ref) * slab_density * f, f, axis=1).mean()
    spike = np.exp(spike_ll - ref)
    total = (1 - p_zero) * slab + p_zero * spike
    assert f_mom[0, 0] == pytest.approx((1 - p_zero) * slab_f / total, rel=1e-4, abs=1e-7)
    assert f_mom[0, 2] == pytest.approx(p_zero * spike / total, rel=1e-4, abs=1e-7)
    assert f_mom[0, 3] == pytest.approx(np.log(slab / spike), abs=1e-4)
    per_flow = np.trapezoid(np.exp(log_like - ref) * slab_density, f, axis=1)
    # pairs under e^-JOINT_LOG_WEIGHT_SPAN (6e-6) of the best are left out by design
    assert w_flow[0] == pytest.approx(per_flow / per_flow.sum(), rel=1e-4, abs=np.exp(-kernels.JOINT_LOG_WEIGHT_SPAN))


def test_the_candidate_tree_keeps_the_scans_candidates():
    """The tissue candidates from the tree over the entries (kernels.joint_profile_leaves, what a CPU fit runs)
    are the scan's over every entry after the blocked product (kernels.joint_profile_top), voxel by voxel, on a
    dictionary large enough for groups of leaves and ties at the cut (duplicate entries)."""
    from dmrimc_bids.core.fitting import kernels
    rng = np.random.default_rng(5)
    f, d_ex = rng.uniform(0.2, 0.8, 4000), rng.uniform(1.0, 3.0, 4000)
    f[3000:], d_ex[3000:] = f[:1000], d_ex[:1000]   # twins: equal misfits, the lower index kept
    b, big = PROT.b * 1e-3, PROT.big_delta_ms
    sig = f[:, None] * np.exp(-b * 0.4) + (1 - f[:, None]) * np.exp(-b * d_ex[:, None] * (1 - big / 200))
    tissue = Dictionary(sig, np.stack([f, d_ex], 1), ["fin", "D0ex"], PROT)
    flow = flow_dictionary()
    model = JointModel(tissue, flow, tissue_b_min=200)
    y = mixed(tissue, flow, rng.integers(0, 4000, 300), rng.integers(0, len(flow), 300), rng.uniform(0, 0.15, 300))
    y = y + rng.normal(0, 0.02, y.shape)
    clean = model._clean(y, np.full(300, 0.02))
    tree = model._candidates(clean)
    yt = np.zeros((300, len(tissue)))
    for j in range(clean.shape[1]):   # <y, t> summed in the tree's order (a BLAS product may round otherwise)
        yt += clean[:, j:j + 1] * model.tissue_signals[:, j]
    scan = np.empty_like(tree)
    kernels.joint_profile_top(clean, yt, model.tissue_sq, model.tissue_proto, model.pair_sq, model.prototypes,
                              model.fv_max, scan)
    assert len(model._profile_tree()[12]) > 1   # groups of leaves
    np.testing.assert_array_equal(tree, np.sort(scan, axis=1))
