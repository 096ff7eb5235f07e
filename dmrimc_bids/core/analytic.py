"""Analytic diffusion signals: restricted diffusion under the Gaussian phase approximation (GPA).

Units: lengths µm, times ms, diffusivity µm²/ms, b in s/mm² at the interface (1 ms/µm² = 1000
s/mm²). Used as the reference for Monte Carlo tests and for the embedded default dictionary until a
histology-informed one is simulated.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import jnp_zeros

#: geometry name -> dimension d of the restriction (planes 1, cylinder 2, sphere 3).
GEOMETRIES = {"planes": 1, "cylinder": 2, "sphere": 3}


@lru_cache(maxsize=None)
def _roots(geometry: str, n: int) -> np.ndarray:
    """First n roots x_m = α_m R of the boundary condition of each geometry.

    planes: cos x = 0; cylinder: J1'(x) = 0; sphere: j1'(x) = 0, i.e. x cos x... written as
    tan x = 2x / (2 - x²) (Neuman 1974; van Gelderen et al. 1994).
    """
    if geometry == "planes":
        return (2 * np.arange(1, n + 1) - 1) * np.pi / 2
    if geometry == "cylinder":
        return jnp_zeros(1, n)
    if geometry == "sphere":
        f = lambda x: (2 - x * x) * np.sin(x) - 2 * x * np.cos(x)  # noqa: E731  zero <=> j1'(x) = 0
        roots, k = [], 0
        while len(roots) < n:  # one root in each (kπ, (k+1)π) after the first
            a, b = max(k * np.pi, 1e-6) + 1e-9, (k + 1) * np.pi - 1e-9
            if f(a) * f(b) < 0:
                roots.append(brentq(f, a, b, xtol=1e-14))
            k += 1
        return np.array(roots)
    raise ValueError(f"unknown geometry {geometry!r}; use one of {sorted(GEOMETRIES)}")


def gpa_log_attenuation_per_b(radius_um, diffusivity, small_delta_ms, big_delta_ms,
                              geometry: str = "cylinder", n_roots: int = 30) -> np.ndarray:
    """ln E / b [ms/µm² ⁻¹ → returns µm²/ms] for PGSE under the GPA, gradient ⊥ to the restriction axis.

    ln E = -2γ²G² Σ_m [α_m² (α_m²R² - d + 1)]⁻¹ [2δ/(Dα_m²) - (2 - 2e^{-Dα²δ} - 2e^{-Dα²Δ}
    + e^{-Dα²(Δ-δ)} + e^{-Dα²(Δ+δ)})/(Dα²)²] (Murday & Cotts 1968; Neuman 1974; van Gelderen et al.
    1994). With γ²G² = b / (δ²(Δ - δ/3)), ln E is linear in b for fixed timing, so this returns the
    apparent diffusivity -ln E / b in µm²/ms, broadcast over all inputs. R: planes half-gap,
    cylinder/sphere radius [µm].
    """
    d = GEOMETRIES[geometry]
    R, D, sd, bd = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in
                                         (radius_um, diffusivity, small_delta_ms, big_delta_ms)))
    x = _roots(geometry, n_roots)
    shape = R.shape
    R, D, sd, bd = (v.reshape(-1, 1) for v in (R, D, sd, bd))
    a2 = (x[None, :] / R) ** 2
    dA = D * a2
    bracket = _gpa_bracket(dA, sd, bd)
    s = np.sum(bracket / (a2 * (a2 * R**2 - d + 1)), axis=1)
    adc = 2 * s / (sd[:, 0] ** 2 * (bd[:, 0] - sd[:, 0] / 3))
    return adc.reshape(shape)


def _gpa_bracket(a, sd, bd):
    """2δ/a - (2 - 2e^{-aδ} - 2e^{-aΔ} + e^{-a(Δ-δ)} + e^{-a(Δ+δ)})/a², a = Dα² [1/ms].

    The closed form cancels catastrophically when a(Δ+δ) << 1 (large restrictions), so there
    the Taylor series -Σ_{n>=3} (-a)^n c_n / (n! a²), c_n = (Δ-δ)^n + (Δ+δ)^n - 2δ^n - 2Δ^n, is used
    (its first term, a δ²(Δ - δ/3), gives free diffusion).
    """
    closed = 2 * sd / a - (2 - 2 * np.exp(-a * sd) - 2 * np.exp(-a * bd) + np.exp(-a * (bd - sd))
                           + np.exp(-a * (bd + sd))) / a**2
    small = a * (bd + sd) < 0.05
    if not np.any(small):
        return closed
    series = np.zeros(np.broadcast_shapes(a.shape, sd.shape))
    fact = 2.0
    for n in range(3, 12):
        fact *= n
        c = (bd - sd) ** n + (bd + sd) ** n - 2 * sd**n - 2 * bd**n
        series -= (-a) ** (n - 2) * c / fact
    return np.where(small, series, closed)


def restricted_signal(b_s_per_mm2, radius_um, diffusivity, small_delta_ms, big_delta_ms,
                      geometry: str = "cylinder") -> np.ndarray:
    """GPA PGSE signal attenuation E(b) of restricted diffusion (gradient ⊥ axis); b in s/mm²."""
    adc = gpa_log_attenuation_per_b(radius_um, diffusivity, small_delta_ms, big_delta_ms, geometry)
    return np.exp(-np.asarray(b_s_per_mm2, float) * 1e-3 * adc)


def two_compartment_signal(b, small_delta_ms, big_delta_ms, fin, vcs_um, d0in, d0ex) -> np.ndarray:
    """Directionally averaged in-plane signal of impermeable cylinders in a hindered medium.

    S = fin·E_cyl(R = vCS/2, D0in) + (1 - fin)·exp(-b D_ex), D_ex = D0ex/(1 + fin): the
    extra-cellular tortuosity of impermeable cylinders in 2D (Maxwell-Garnett / Hashin bound,
    per unit extra-cellular volume). No exchange (κ = 0). The gradient lies in the plane of the
    cylinders' cross-sections, as for the 2D histology substrates. Microstructure arguments
    broadcast as [K, 1] against measurements [1, M]; returns [K, M].
    """
    fin = np.asarray(fin, float).reshape(-1, 1)
    R = np.asarray(vcs_um, float).reshape(-1, 1) / 2
    d0in = np.asarray(d0in, float).reshape(-1, 1)
    d0ex = np.asarray(d0ex, float).reshape(-1, 1)
    b = np.asarray(b, float).reshape(1, -1)
    sd = np.asarray(small_delta_ms, float).reshape(1, -1)
    bd = np.asarray(big_delta_ms, float).reshape(1, -1)
    dw = (b > 0).ravel()
    e_in = np.ones(np.broadcast_shapes(R.shape, b.shape))
    if dw.any():  # ln E / b depends on the timing only: compute it once per unique (δ, Δ)
        timing = np.stack([sd.ravel()[dw], bd.ravel()[dw]], 1)
        pairs, inverse = np.unique(timing, axis=0, return_inverse=True)
        adc = gpa_log_attenuation_per_b(R, d0in, pairs[None, :, 0], pairs[None, :, 1], "cylinder")
        e_in[:, dw] = np.exp(-b[:, dw] * 1e-3 * adc[:, inverse.ravel()])
    e_ex = np.exp(-b * 1e-3 * d0ex / (1 + fin))
    return fin * e_in + (1 - fin) * e_ex


#: Grid of the embedded default dictionary (analytic, see analytic_dictionary).
DEFAULT_GRID = {
    "fin": np.linspace(0.1, 0.85, 10),
    "vCS_cyl": np.linspace(6.0, 20.0, 8),           # µm
    "D0in": np.linspace(0.8, 3.0, 5),           # µm²/ms
    "D0ex": np.linspace(0.8, 3.0, 5),           # µm²/ms
    "b": np.concatenate([[0, 50, 100, 150, 200, 250], np.arange(300, 3001, 100)]),  # s/mm²
    "small_delta": np.arange(5.0, 25.01, 2.5),  # ms
    "big_delta": np.arange(10.0, 80.01, 2.5),   # ms
}


def analytic_dictionary(grid: dict | None = None):
    """The embedded default dictionary: two_compartment_signal on a parameter x protocol grid.

    Parameters fin, vCS (cell diameter = 2R, µm), D0in, D0ex on the grid of DEFAULT_GRID; protocol:
    every b x δ x Δ with Δ >= δ. It is analytic (impermeable cylinders under the GPA + hindered
    extra-cellular diffusion), not histology-informed: kappa is not modelled. Its provenance says so.
    """
    from .dictionary import Dictionary
    from .protocol import Protocol

    g = {k: np.asarray(v, float) for k, v in {**DEFAULT_GRID, **(grid or {})}.items()}
    pf = np.stack(np.meshgrid(g["fin"], g["vCS_cyl"], g["D0in"], g["D0ex"], indexing="ij"), -1).reshape(-1, 4)
    sd, bd = np.meshgrid(g["small_delta"], g["big_delta"], indexing="ij")
    ok = bd >= sd
    pairs = np.stack([sd[ok], bd[ok]], 1)
    b = np.repeat(g["b"][None, :], len(pairs), 0).ravel()
    prot = Protocol(b, np.repeat(pairs[:, 0], g["b"].size), np.repeat(pairs[:, 1], g["b"].size))
    signals = two_compartment_signal(prot.b, prot.small_delta_ms, prot.big_delta_ms,
                                     pf[:, 0], pf[:, 1], pf[:, 2], pf[:, 3])
    prov = {"source": "analytic two-compartment model (dmrimc_bids.core.analytic.two_compartment_signal): "
                      "impermeable cylinders of diameter vCS under the Gaussian phase approximation "
                      "(Neuman 1974; van Gelderen 1994) + hindered extra-cellular diffusion with "
                      "D_ex = D0ex/(1+fin); no membrane exchange. Not histology-informed: a stand-in "
                      "until a Monte Carlo dictionary is simulated.",
            "grid": {k: [float(x) for x in v] for k, v in g.items() if k in ("fin", "vCS_cyl", "D0in", "D0ex")}}
    return Dictionary(signals, pf, ["fin", "vCS_cyl", "D0in", "D0ex"], prot, {}, prov)
