"""Expected identifiability of a protocol before acquisition (`dmrimc-sim design`).

For a dictionary matched to the protocol's fitted measurements and a signal-to-noise ratio, the posterior
estimator (posterior.py) is run on n_samples of the dictionary's own entries with noise added, each
estimated with its own structure (substrate, network; the entry itself for a crossed grid) left out,
so the figures are those of tissue the dictionary has not seen, never an inverse crime. Per parameter it
reports the median posterior contraction (1 - var_post/var_prior: 0 = the protocol tells nothing beyond
the prior range, 1 = fully determined), Spearman's ρ between truth and estimate, the median absolute
error beside that of the constant guess (the prior median), and the coverage of the 95 % intervals.

SNR is that of the fitted signal: 1/σ of the directionally averaged, b0-normalised signal (averaging N
directions raises a volume's SNR by about sqrt(N)).
"""

from __future__ import annotations

import numpy as np

from ..dictionary import Dictionary
from .likelihood import add_noise
from .posterior import PosteriorModel

__all__ = ["add_noise", "expected_identifiability"]


def expected_identifiability(dictionary: Dictionary, snr: float, n_samples: int = 1000, seed: int = 0,
                             noise: str = "offset-gaussian", bounds: dict | None = None) -> dict:
    """{parameter: {contraction, contraction_p10, contraction_p90, rho, medae, medae_constant, coverage95,
    width95}} of the posterior estimator for dictionary (matched to the fitted measurements) at snr, from
    n_samples entries drawn with seed from the estimator's prior, each estimated with its structure left
    out. Fixed parameters
    (one value in the dictionary) are left out."""
    from scipy.stats import spearmanr

    if not snr > 0:
        raise ValueError(f"SNR must be > 0, not {snr}")
    model = PosteriorModel(dictionary, noise=noise, bounds=bounds)
    n_entries = len(model.dictionary)
    if n_entries < 2:
        raise ValueError("the dictionary needs at least two entries inside the bounds")
    rng = np.random.default_rng(seed)
    prior = np.exp(model.log_prior)   # the truths follow the estimator's prior (flat over the design axes)
    pick = rng.choice(n_entries, size=min(int(n_samples), n_entries), replace=False, p=prior / prior.sum())
    sigma = 1.0 / float(snr)
    y = add_noise(model.signals[pick], sigma, noise, rng)
    held_out = model.structure_of(pick)
    model.model_error(sigma)
    rows = []
    for c0 in range(0, pick.size, model.chunk_size):
        sl = slice(c0, c0 + model.chunk_size)
        post = model.posterior(y[sl], np.full(y[sl].shape[0], sigma), exclude=held_out[sl])
        rows.append(model.summaries(post))
    est, _, lo, hi, contraction = (np.concatenate(parts) for parts in zip(*rows))
    truth = model.dictionary.params[pick]
    constant = np.median(model.dictionary.params, axis=0)
    out = {}
    for j in model.free:
        name = model.names[j]
        err = np.abs(est[:, j] - truth[:, j])
        out[name] = {"contraction": float(np.median(contraction[:, j])),
                     "contraction_p10": float(np.percentile(contraction[:, j], 10)),
                     "contraction_p90": float(np.percentile(contraction[:, j], 90)),
                     "rho": float(spearmanr(truth[:, j], est[:, j]).statistic),
                     "medae": float(np.median(err)),
                     "medae_constant": float(np.median(np.abs(constant[j] - truth[:, j]))),
                     "coverage95": float(np.mean((truth[:, j] >= lo[:, j]) & (truth[:, j] <= hi[:, j]))),
                     "width95": float(np.mean(hi[:, j] - lo[:, j]))}
    return out
