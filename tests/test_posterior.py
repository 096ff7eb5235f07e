"""Posterior-mean dictionary estimator (core/fitting/posterior.py)."""

import numpy as np

from dmrimc_bids.core.dictionary import Dictionary
from dmrimc_bids.core.fitting.posterior import PosteriorModel
from dmrimc_bids.core.protocol import Protocol


def toy(k=60, seed=0):
    rng = np.random.default_rng(seed)
    b = np.array([25.0, 50, 100, 200])
    vm = np.exp(rng.uniform(np.log(0.3), np.log(30), k))
    anb = 2 + 3 * vm ** 0.8
    sig = np.exp(-np.outer(vm, b) * 2e-3)
    return Dictionary(sig, np.stack([vm, anb], 1), ["vm", "anb"], Protocol(b, 10.0, 30.0))


def test_posterior_equals_brute_force_and_limits():
    dic = toy()
    model = PosteriorModel(dic, chunk_size=7)
    rng = np.random.default_rng(1)
    y = dic.signals[:20].astype(float) + rng.normal(0, 0.05, (20, 4))
    fit = model.fit(y, sigma=np.full(20, 0.05))
    d2 = ((y[:, None, :] - dic.signals[None].astype(float)) ** 2).sum(-1)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * 0.05 ** 2))
    w /= w.sum(1, keepdims=True)
    logm = w @ np.log(dic.params)
    np.testing.assert_allclose(fit.params["vm"], np.exp(logm[:, 0]), rtol=1e-9)
    sd = np.sqrt(w @ np.log(dic.params[:, 1]) ** 2 - logm[:, 1] ** 2) * np.exp(logm[:, 1])
    np.testing.assert_allclose(fit.sd["anb"], sd, rtol=1e-6, atol=1e-12)
    # tiny noise: the posterior collapses on the entry that generated the data
    exact = model.fit(dic.signals[:5].astype(float), sigma=np.full(5, 1e-6))
    np.testing.assert_allclose(exact.params["vm"], dic.params[:5, 0], rtol=1e-9)
    assert np.all(exact.exitcode == 1)
    # huge noise: the prior's geometric mean
    flat = model.fit(y[:3], sigma=np.full(3, 1e3))
    np.testing.assert_allclose(flat.params["vm"], np.exp(np.log(dic.params[:, 0]).mean()), rtol=1e-6)


def test_mask_nan_and_unknown_sigma():
    dic = toy()
    y = np.stack([dic.signals[3], dic.signals[4], np.full(4, np.nan)]).astype(float)
    fit = PosteriorModel(dic).fit(y.reshape(3, 1, 4), mask=np.array([[True], [False], [True]]))
    assert fit.exitcode.ravel().tolist() == [1, 0, -1]
    assert fit.params["vm"][0, 0] > 0 and fit.params["vm"][1, 0] == 0 and np.isnan(fit.params["vm"][2, 0])


def test_posterior_median_by_hand_and_between_nodes():
    from dmrimc_bids.core.fitting.posterior import _Medians

    col = _Medians(np.array([[2.0, 5.0], [0.0, 5.0], [1.0, 5.0], [1.0, 5.0]]))  # values 0, 1, 2; edges 0, 0.5, 1.5, 2
    w = np.array([[0.0, 0.25, 0.25, 0.5],     # mass 0: 0.25, 1: 0.75, 2: 0 -> cdf crosses 1/2 inside [0.5, 1.5]
                  [1.0, 0.0, 0.0, 0.0],       # all on the value 2 -> its half of [1.5, 2] -> 1.75
                  [0.0, 1.0, 0.0, 0.0]])      # all on 0 -> [0, 0.5] -> 0.25
    np.testing.assert_allclose(col.median(w), [[0.5 + (0.5 - 0.25) / 0.75, 5], [1.75, 5], [0.25, 5]])
    # a mono-exponential dictionary on a coarse D grid: data from D between two nodes gives a median
    # between them (no "steps"), closer to the truth than either node
    b = np.array([300.0, 600, 1000, 1500, 2000])
    d = np.arange(0.5, 3.01, 0.5)
    dic = Dictionary(np.exp(-np.outer(d, b) * 1e-3), d[:, None], ["D"], Protocol(b, 10.0, 30.0))
    y = np.exp(-1.3 * b * 1e-3)[None]
    med = PosteriorModel(dic, point="median").fit(y, sigma=np.array([0.1])).params["D"][0]
    assert 1.0 < med < 1.5 and abs(med - 1.3) < 0.2 and min(abs(med - 1.0), abs(med - 1.5)) > 0.05
    fit = PosteriorModel(dic, point="median").fit(y, sigma=np.array([0.1]))
    assert fit.info["estimate_placement"]["D"]["on_node"] == 0.0


def test_dictionary_within_bounds():
    import pytest

    from dmrimc_bids.core.errors import InputError

    dic = toy()
    sub = dic.within({"vm": (1.0, 10.0)})
    assert len(sub) == int(np.sum((dic.params[:, 0] >= 1) & (dic.params[:, 0] <= 10))) and len(sub) < len(dic)
    assert sub.params[:, 0].min() >= 1.0 and sub.params[:, 0].max() <= 10.0
    with pytest.raises(InputError, match="--bounds"):
        dic.within({"vm": (100.0, 200.0)})
