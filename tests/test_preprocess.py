import numpy as np
import pytest

from dmrimc_bids.core.errors import InputError
from dmrimc_bids.core.preprocess import normalise_b0, shell_assignment, spherical_mean, vascular_filter
from dmrimc_bids.core.protocol import Protocol


def two_group_protocol():
    # group A: δ=10, Δ=20, TE=60: b0, b0 (nominal 1), 1000 x2 (998, 1003), 2000 ; group B: δ=10, Δ=40, TE=90: b0, 1000 x2
    return Protocol([0, 1, 998, 1003, 2000, 0, 1000, 1000], [10] * 5 + [10] * 3, [20] * 5 + [40] * 3,
                    [60] * 5 + [90] * 3)


def test_spherical_mean_by_hand():
    p = two_group_protocol()
    data = np.array([[100, 110, 50, 60, 30, 80, 20, 30]], float)
    out, shells, index = spherical_mean(data, p)
    assert list(index) == [0, 0, 1, 1, 2, 3, 4, 4]
    assert np.allclose(out[0], [105, 55, 30, 80, 25])
    assert np.allclose(shells.b, [0, 1000.5, 2000, 0, 1000]) and list(shells.n_averaged) == [2, 2, 1, 1, 2]
    assert np.allclose(shells.big_delta_ms, [20, 20, 20, 40, 40])


def test_low_b_are_ivim_shells_not_b0():
    # an IVIM protocol: b = 10, 20, 30 are separate shells and not b0; scanner rounding at high b stays one shell
    p = Protocol([0, 10, 20, 30, 50, 995, 1000, 1005], 10, 30)
    shells, index = shell_assignment(p)
    assert list(index) == [0, 1, 2, 3, 4, 5, 5, 5]
    assert np.allclose(shells.b, [0, 10, 20, 30, 50, 1000])
    norm, _, plan = normalise_b0(np.array([[100.0, 90, 85, 80, 75, 30, 30, 30]]), shells)
    assert list(plan.b0_shells) == [0] and np.allclose(norm[0, :5], [1, 0.9, 0.85, 0.8, 0.75])


def test_shells_split_by_b_tolerance():
    p = Protocol([50, 100, 200, 205], 10, 30)
    shells, index = shell_assignment(p, b0_threshold=20, shell_tolerance=20)
    assert list(index) == [0, 1, 2, 2] and np.allclose(shells.b, [50, 100, 202.5])


def test_b0_normalisation_per_group_and_sigma():
    p = two_group_protocol()
    data = np.array([[100, 110, 50, 60, 30, 80, 20, 30]], float)
    sm, shells, _ = spherical_mean(data, p)
    norm, sig, plan = normalise_b0(sm, shells, sigma=np.array([10.0]))
    assert np.allclose(norm[0], [1, 55 / 105, 30 / 105, 1, 25 / 80])
    assert np.allclose(sig[0], [10 / 105, 10 / 105, 10 / 105, 10 / 80, 10 / 80])
    assert plan.notes == []


def test_b0_without_timing_serves_its_te_and_fallback_note():
    p = Protocol([0, 1000, 1000], [np.nan, 10, 10], [np.nan, 20, 40], [70, 70, 70])
    sm, shells, _ = spherical_mean(np.array([[200.0, 100, 50]]), p)
    norm, _, plan = normalise_b0(sm, shells)
    assert np.allclose(norm[0], [1, 0.5, 0.25]) and plan.notes == []
    # a b=0 with *other* timing at the same TE is used with a note
    p2 = Protocol([0, 1000], [10, 10], [20, 40], [70, 70])
    sm2, shells2, _ = spherical_mean(np.array([[200.0, 50]]), p2)
    norm2, _, plan2 = normalise_b0(sm2, shells2)
    assert np.allclose(norm2[0], [1, 0.25]) and len(plan2.notes) == 1


def test_no_b0_and_wrong_te_are_errors():
    with pytest.raises(InputError, match="no b=0"):
        normalise_b0(np.ones((1, 2)), Protocol([500, 1000], 10, 20), source="dwi.nii.gz")
    with pytest.raises(InputError, match="TE=90"):
        normalise_b0(np.ones((1, 2)), Protocol([0, 1000], 10, 20, [60, 90]))


def test_invalid_b0_voxels_become_nan():
    sm, shells, _ = spherical_mean(np.array([[0.0, 5], [np.nan, 5], [-3, 5], [10, 5]]), Protocol([0, 1000], 10, 20))
    norm, _, _ = normalise_b0(sm, shells)
    assert np.isnan(norm[:3, 1]).all() and norm[3, 1] == pytest.approx(0.5)


def test_vascular_filter_lists_drops():
    shells = Protocol([0, 50, 200, 250, 1000, 3000, 3500], 10, 30)
    res = vascular_filter(shells, vasc_threshold=250, max_b=3000)
    assert list(res.keep) == [3, 4, 5]
    reasons = {d["b"]: d["reason"] for d in res.dropped}
    assert "vascular" in reasons[50] and "vascular" in reasons[200] and "largest b" in reasons[3500]
    assert "normalisation" in reasons[0]
    assert any("50, 200" in w for w in res.warnings()) and not any(w.startswith("dropped b = 0,") for w in res.warnings())


def _two_runs(n_vox, scale2, rng, snr=50.0):
    """Two series (runs) at one TE, each a b=0 and a b=1000 with true attenuation 0.5; run 2 is
    written with a global scale `scale2`. Gaussian noise of σ = S0/snr on every volume."""
    p = Protocol([0, 1000, 0, 1000], [np.nan, 10, np.nan, 10], [np.nan, 30, np.nan, 30], 60,
                 series=[0, 0, 1, 1])
    s0 = rng.uniform(500, 1500, n_vox)
    clean = np.stack([s0, 0.5 * s0, scale2 * s0, scale2 * 0.5 * s0], 1)
    return p, clean + rng.normal(0, 1, clean.shape) * (s0[:, None] / snr * np.array([1, 1, scale2, scale2]))


def test_b0_pooled_across_runs_is_scale_matched_and_less_noisy():
    rng = np.random.default_rng(4)
    p, data = _two_runs(20000, 1.7, rng)
    sm, shells, _ = spherical_mean(data, p)
    pooled, _, plan = normalise_b0(sm, shells)
    own, _, plan_own = normalise_b0(sm, shells, pool_series=False)
    dw = [list(shells.b).index(1000), len(shells) - 1]
    assert all(plan.pooled[i] for i in dw) and not any(plan_own.pooled) and len(plan.notes) == 1
    for i in dw:  # run 2's different scale is matched: no bias in either run
        assert np.mean(pooled[:, i]) == pytest.approx(0.5, abs=2e-3)
    # the run-wide b=0 noise shrinks: the normalised b=1000 scatter drops (theory: sqrt(1.25/1.125) = 1.054;
    # relative var per volume (1/50)^2 -> 0.25 + 0.25/2 instead of 0.25 + 0.25)
    ratio = np.std(own[:, dw[0]]) / np.std(pooled[:, dw[0]])
    assert 1.035 < ratio < 1.08
    # without the scale matching (naive pooling), run 2 would be off by 1.7 / 1.35
    naive = sm[:, dw[1]] / sm[:, [0, 2]].mean(1)
    assert abs(np.mean(naive) - 0.5) > 0.1


def test_b0_pooling_one_voxel_is_the_runs_own_and_other_te_is_not_pooled():
    rng = np.random.default_rng(5)
    p, data = _two_runs(1, 1.3, rng)
    sm, shells, _ = spherical_mean(data, p)
    assert np.allclose(normalise_b0(sm, shells)[0], normalise_b0(sm, shells, pool_series=False)[0], rtol=1e-6)
    p2 = Protocol([0, 1000, 0, 1000], 10, 30, [60, 60, 90, 90], series=[0, 0, 1, 1])
    _, shells2, _ = spherical_mean(np.ones((1, 4)), p2)
    _, _, plan2 = normalise_b0(np.ones((1, len(shells2))), shells2)
    assert not any(plan2.pooled) and plan2.notes == []


def test_borrowed_b0_timing_is_one_note_per_series():
    """Eight shells whose (δ, Δ) has no b=0 of its own give one note for their series, not eight."""
    from dmrimc_bids.core.preprocess import normalisation_plan
    b = [0.0] + [300.0 * k for k in range(1, 9)] + [0.0, 500.0]
    sd = [10.0] + [15.0] * 8 + [10.0, 10.0]
    bd = [25.0] + [45.0] * 8 + [25.0, 25.0]
    shells = Protocol(b, sd, bd, echo_time_ms=80.0, series=[0] * 9 + [1, 1])
    plan = normalisation_plan(shells, pool_series=False)
    borrowed = [n for n in plan.notes if "another timing" in n]
    assert len(borrowed) == 1 and "series 0" in borrowed[0] and "8 measurement(s)" in borrowed[0]
    assert "(15, 45)" in borrowed[0]
    assert plan.normaliser[1] == [0] and plan.normaliser[10] == [9]
