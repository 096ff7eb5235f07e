"""Segmented IVIM (core/fitting/ivim.py) on the OSIPI TF2.4 test data (../shared/reference/ivim)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dmrimc_bids.core.fitting.ivim import fit_segmented_ivim

OSIPI = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ivim" / "unit_tests"
B = np.array([0, 1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 350, 400, 550, 700, 850, 1000], float)


def biexp(b, f, d, dstar):
    """IVIM signal, S0 = 1; b in s/mm², D and D* in µm²/ms."""
    return f * np.exp(-b * 1e-3 * dstar) + (1 - f) * np.exp(-b * 1e-3 * d)


def test_exact_when_vascular_signal_decays_before_split():
    # D* large: the vascular signal is gone above b = 200, so the estimator is exact without noise
    sig = np.array([biexp(B, f, d, ds) for f, d, ds in [(0.1, 1.37, 60), (0.2, 1.0, 80), (0.35, 2.0, 90)]])
    fit = fit_segmented_ivim(sig, B)
    np.testing.assert_allclose(fit.fV, [0.1, 0.2, 0.35], atol=2e-4)
    np.testing.assert_allclose(fit.D, [1.37, 1.0, 2.0], rtol=1e-3)
    np.testing.assert_allclose(fit.Dstar, [60, 80, 90], rtol=2e-3)
    # the vascular signal, normalised to 1 at b = 0, is e^{-bD*}
    np.testing.assert_allclose(fit.vascular_signal(sig, B)[0, :11], np.exp(-B[:11] * 0.06), atol=3e-3)


def test_bad_voxels_and_protocols():
    sig = np.stack([biexp(B, 0.1, 1.0, 50), np.full(B.size, np.nan), np.zeros(B.size)])
    fit = fit_segmented_ivim(sig, B)
    assert np.isfinite(fit.fV[0]) and np.isnan(fit.fV[1]) and np.isnan(fit.D[2])
    with pytest.raises(ValueError, match="two distinct b"):
        fit_segmented_ivim(sig[:, :12], B[:12])
    # b = 0 need not come first, and the voxel order does not matter
    perm = np.random.default_rng(0).permutation(B.size)
    again = fit_segmented_ivim(sig[:1, perm], B[perm])
    np.testing.assert_allclose(again.Dstar, fit.Dstar[:1], rtol=1e-9)


needs_osipi = pytest.mark.skipif(not OSIPI.is_dir(), reason="OSIPI IVIM test data (../shared/reference/ivim) absent")


@needs_osipi
def test_osipi_generic_recovered_to_the_noise_free_limit():
    data = json.loads((OSIPI / "generic.json").read_text())
    b = np.array(data["config"]["bvalues"])
    tissues = [k for k in data if k != "config"]
    sig = np.array([data[k]["data"] for k in tissues])
    clean = np.array([biexp(b, data[k]["f"], data[k]["D"] * 1e3, data[k]["Dp"] * 1e3) for k in tissues])
    fit, limit = fit_segmented_ivim(sig, b), fit_segmented_ivim(clean, b)
    # OSIPI data carry noise SD 5e-4: the estimates sit at the estimator's own noise-free limit
    np.testing.assert_allclose(fit.fV, limit.fV, atol=6e-3)
    np.testing.assert_allclose(fit.D, limit.D, rtol=0.02)
    np.testing.assert_allclose(fit.Dstar, limit.Dstar, rtol=0.1, atol=0.5)
    # ... and the limit is the truth where D* is large (the OSIPI IVIM code collection, TF2.4)
    fast = np.array([data[k]["Dp"] >= 0.026 for k in tissues])
    np.testing.assert_allclose(limit.fV[fast], [data[k]["f"] for k, m in zip(tissues, fast) if m], atol=0.005)


@needs_osipi
@pytest.mark.parametrize("snr", [30, 100])
def test_osipi_noise_no_worse_than_task_force_reference(snr):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ivim_osipi import osipi_statistics  # the benchmark's own computation, asserted here
    ours, theirs = osipi_statistics(OSIPI, snr)
    ref = theirs["TF_reference_IVIMfit"]
    for p in ("f", "D", "Dp"):
        bias, sd = ours[p]
        # 300 fits: a 10 % margin covers the sampling error of the reference figures themselves
        assert bias <= 1.1 * ref[p][0] + 2e-3, (p, bias, ref[p])
        assert sd <= 1.1 * ref[p][1], (p, sd, ref[p])


# ---- the Bayesian estimator (ivim_posterior.py), the app's default -----------------------------------------
from dmrimc_bids.core.fitting.ivim import choose_b_split  # noqa: E402
from dmrimc_bids.core.fitting.ivim_posterior import posterior_ivim  # noqa: E402

B12 = np.array([0, 10, 20, 30, 50, 80, 100, 200, 400, 600, 800, 1000], float)


def _noisy_set(n, snr, seed, b=B12):
    """Bi-exponential voxels (f U(0.02, 0.3), D U(0.5, 2.5), D* U(5, 100) µm²/ms) with Rician noise."""
    rng = np.random.default_rng(seed)
    f, d, ds = rng.uniform(0.02, 0.3, n), rng.uniform(0.5, 2.5, n), rng.uniform(5, 100, n)
    clean = np.array([biexp(b, *t) for t in zip(f, d, ds)])
    return np.hypot(clean + rng.normal(0, 1 / snr, clean.shape), rng.normal(0, 1 / snr, clean.shape)), f, d, ds


def test_bayes_noise_free_recovery_and_scale_invariance():
    truth = [(0.1, 1.37, 60), (0.2, 1.0, 25), (0.3, 2.0, 90), (0.05, 0.7, 12)]
    sig = np.array([biexp(B12, *t) for t in truth])
    post = posterior_ivim(sig, B12)
    f, d, ds = (np.array(c) for c in zip(*truth))
    np.testing.assert_allclose(post["fV"], f, atol=0.01)
    np.testing.assert_allclose(post["D"], d, rtol=0.01)
    np.testing.assert_allclose(post["Dstar"], ds, rtol=0.1)
    np.testing.assert_allclose(post["S0"], 1.0, atol=0.01)
    assert np.all((post["fV_ci95lo"] <= f + 1e-3) & (f - 1e-3 <= post["fV_ci95hi"]))
    # S0 is free: scaling the signal scales S0 only
    again = posterior_ivim(250.0 * sig, B12)
    np.testing.assert_allclose(again["fV"], post["fV"], atol=1e-6)
    np.testing.assert_allclose(again["S0"], 250.0 * post["S0"], rtol=1e-6)
    bad = posterior_ivim(np.stack([sig[0], np.full(B12.size, np.nan), np.zeros(B12.size)]), B12)
    assert np.isfinite(bad["fV"][0]) and np.isnan(bad["fV"][1:]).all()


def test_bayes_on_held_out_noisy_voxels_beats_segmented_and_constant():
    from scipy.stats import spearmanr
    y, f, d, ds = _noisy_set(3000, 30, seed=77)
    post = posterior_ivim(y, B12)
    seg = fit_segmented_ivim(y, B12)
    for est, truth in ((post["fV"], f), (post["D"], d), (post["Dstar"], ds)):
        err, const = np.median(np.abs(est - truth)), np.median(np.abs(np.median(truth) - truth))
        assert err < 0.75 * const, (err, const)
    assert spearmanr(post["fV"], f)[0] > 0.78 and spearmanr(post["D"], d)[0] > 0.95
    assert spearmanr(post["Dstar"], ds)[0] > 0.5
    assert np.median(np.abs(post["fV"] - f)) < np.median(np.abs(seg.fV - f))
    assert np.median(np.abs(post["Dstar"] - ds)) < np.median(np.abs(seg.Dstar - ds))
    # calibrated intervals (nominal 95 %) and a contraction that ranks f and D above D*
    for k, truth in (("fV", f), ("D", d), ("Dstar", ds)):
        cover = np.mean((post[k + "_ci95lo"] <= truth) & (truth <= post[k + "_ci95hi"]))
        assert 0.9 <= cover <= 0.995, (k, cover)
    assert np.median(post["Dstar_contraction"]) < np.median(post["fV_contraction"])
    # a known σ gives the same estimates as σ integrated out, within the noise
    known = posterior_ivim(y, B12, sigma=np.full(len(y), 1 / 30))
    assert np.median(np.abs(known["fV"] - post["fV"])) < 0.01


def test_b_split_chosen_from_the_acquired_b_values():
    assert choose_b_split(B12) == 200.0
    assert choose_b_split([0, 10, 50, 150, 300, 500, 800]) == 150.0   # nearest to 200 on a log scale
    assert choose_b_split([0, 50, 100, 250, 500, 1000]) == 250.0
    # a split needs two distinct b at or above it
    assert choose_b_split([0, 20, 100, 200]) == 100.0
    # the segmented fit takes D from b >= split: b = 200 now counts
    sig = np.array([biexp(B12, 0.1, 1.0, 80.0)])
    assert np.isfinite(fit_segmented_ivim(sig[:, [0, 3, 7, 8]], B12[[0, 3, 7, 8]]).D).all()
