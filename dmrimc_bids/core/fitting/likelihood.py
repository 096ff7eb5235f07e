"""Noise models for dictionary fitting: offset-Gaussian noise floor, Rician likelihood, criteria.

Convention (one for grid search and refinement alike). ``sigma`` is the noise standard deviation
of one acquired magnitude volume, divided by the b=0 signal (normalised units). Averaging n
magnitude volumes (directional averaging, or ``n_averages`` done before our input) keeps the
noise floor, since each volume has the Rician mean σ·sqrt(π/2) at zero signal, and shrinks the
spread to σ/sqrt(n). If the σ map was estimated on data that were already magnitude-averaged over
N volumes (``n_averages = N``, e.g. a σ map from denoising a directionally averaged image), the
single-volume σ is σ_map·sqrt(N). Hence

    noise floor  nf = σ_map · sqrt(N) · sqrt(π/2)
    expected measurement  g(s) = sqrt(s² + nf²)          (offset-Gaussian approximation)
    spread of measurement k  σ_k = σ_map · sqrt(N) / sqrt(n_k)

where n_k is the number of volumes averaged into measurement k. This is the published tool's
refinement floor (σ·sqrt(π/2)·sqrt(NEX)); its grid search used σ alone, which we do not copy.

The Rician option (``noise="rician"``) maximises Σ_k log Rice(m_k | s_k, σ_k) with the same σ_k.
It is exact for single volumes (n_k = 1); for averaged measurements (the mean of n_k Rician
variables is not Rician) it keeps the right spread but puts the floor a factor sqrt(n_k) low, so
offset-Gaussian is the default for directionally averaged data.
"""

from __future__ import annotations

import numpy as np

SQRT_HALF_PI = np.sqrt(np.pi / 2)


#: z of the two-sided 95 % interval (every model's intervals).
Z95 = 1.959963984540054

#: The likelihoods by name, one meaning each in every model: 'offset-gaussian' (Gaussian about the signal
#: lifted by the magnitude data's noise floor: the published tool's, the posterior's default), 'gaussian'
#: (Gaussian, no floor: differences of magnitudes, the vascular signal), 'rician' (exact for single volumes).
LIKELIHOODS = {"offset-gaussian": "offset-Gaussian (noise floor)", "gaussian": "Gaussian (no noise floor)",
               "rician": "Rician"}


def noise_floor(sigma, n_averages: float = 1.0):
    """Offset-Gaussian noise floor σ·sqrt(N)·sqrt(π/2) (normalised units)."""
    return np.asarray(sigma, dtype=float) * np.sqrt(n_averages) * SQRT_HALF_PI


def add_noise(signals: np.ndarray, sigma: float, noise: str, rng: np.random.Generator,
              n_averages: float = 1.0) -> np.ndarray:
    """signals [n, M] as measured with noise σ (normalised units, this module's convention): additive Gaussian
    for 'gaussian' (a difference of magnitudes), else the magnitude of complex Gaussian noise (Rician) of the
    single-volume σ·sqrt(N), averaged over N = n_averages volumes (rounded; spread σ, floor nf)."""
    signals = np.asarray(signals, float)
    if noise == "gaussian":
        return signals + sigma * rng.standard_normal(signals.shape)
    n = max(1, int(round(n_averages)))
    single = sigma * np.sqrt(n_averages)
    return np.mean([np.hypot(signals + single * rng.standard_normal(signals.shape),
                             single * rng.standard_normal(signals.shape)) for _ in range(n)], axis=0)


def expected_signal(signal, floor):
    """Offset-Gaussian expected magnitude sqrt(s² + nf²)."""
    return np.sqrt(np.square(signal) + np.square(floor))


def log_likelihood(residual_ss_weighted, sum_log_var, n_meas):
    """Gaussian log-likelihood from Σ r²/σ_k² and Σ log σ_k² over the measurements."""
    return -0.5 * (n_meas * np.log(2 * np.pi) + sum_log_var + residual_ss_weighted)


def log_likelihood_unknown_sigma(rss, n_meas):
    """Gaussian log-likelihood with σ² at its maximum-likelihood value RSS/M (no noise map)."""
    rss = np.maximum(rss, np.finfo(float).tiny)
    return -0.5 * n_meas * (np.log(2 * np.pi * rss / n_meas) + 1)


def information_criteria(loglik, n_params: int, n_meas: int):
    """(AIC, BIC) = (2P - 2 logL, P ln M - 2 logL)."""
    loglik = np.asarray(loglik, dtype=float)
    return 2 * n_params - 2 * loglik, n_params * np.log(n_meas) - 2 * loglik


def rician_log_likelihood(measured, signal, sigma):
    """Σ_k log p(m_k | s_k, σ_k) for the Rician density
    p(m | s, σ) = m/σ² · exp(-(m² + s²)/(2σ²)) · I0(m s/σ²), summed over the last axis."""
    from scipy.special import i0e

    m, s, v = np.asarray(measured, float), np.asarray(signal, float), np.square(np.asarray(sigma, float))
    x = m * s / v
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.log(m / v) - (m**2 + s**2) / (2 * v) + np.log(i0e(x)) + np.abs(x)
    return np.sum(ll, axis=-1)
