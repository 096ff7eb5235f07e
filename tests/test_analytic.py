import numpy as np
import pytest

from dmrimc_bids.core.analytic import restricted_signal, two_compartment_signal

# GPA reference values (van Gelderen et al. 1994 formula); b in s/mm².
REFERENCE = [
    ("cylinder", 5, 2, 10, 20, 500, 0.91553), ("cylinder", 5, 2, 10, 20, 1000, 0.83820),
    ("cylinder", 5, 2, 10, 20, 2000, 0.70257), ("cylinder", 5, 2, 10, 20, 3000, 0.58890),
    ("cylinder", 5, 2, 10, 40, 3000, 0.78299), ("cylinder", 8, 1, 4, 30, 2000, 0.44481),
    ("cylinder", 3, 3, 20, 50, 5000, 0.97852), ("sphere", 5, 2, 10, 20, 1000, 0.88440),
    ("sphere", 5, 2, 10, 40, 3000, 0.84493), ("sphere", 8, 1, 4, 30, 2000, 0.49818),
    ("planes", 5, 2, 10, 20, 1000, 0.76404), ("planes", 5, 2, 10, 40, 3000, 0.68085),
]


@pytest.mark.parametrize("geometry, R, D, sd, bd, b, expected", REFERENCE)
def test_gpa_matches_reference_table(geometry, R, D, sd, bd, b, expected):
    assert restricted_signal(b, R, D, sd, bd, geometry) == pytest.approx(expected, abs=6e-6)


def test_large_radius_tends_to_free_diffusion():
    # R >> sqrt(D·Δ): restriction vanishes and the apparent diffusivity -ln E / b -> D. Needs the
    # small-a series of the bracket (the closed form cancels) and enough roots (the sum over
    # 1/(x_m² - d + 1) converges like 1/m); surface effects scale like (S/V)·sqrt(Dt) ~ 1e-3 here.
    from dmrimc_bids.core.analytic import gpa_log_attenuation_per_b
    for geometry in ("planes", "cylinder", "sphere"):
        adc = gpa_log_attenuation_per_b(5000.0, 2.0, 10.0, 20.0, geometry, n_roots=3000)
        assert adc == pytest.approx(2.0, rel=3e-3), geometry


def test_long_pulse_limit_cylinder():
    # δ >> R²/D: ln E -> -(7/48) γ²G² δ R⁴ / D, with γ²G² = b/(δ²(Δ-δ/3))
    R, D, sd, bd, b = 2.0, 2.0, 60.0, 60.0, 3000
    g2 = b * 1e-3 / (sd**2 * (bd - sd / 3))
    expected = np.exp(-(7 / 48) * g2 * sd * R**4 / D)
    assert restricted_signal(b, R, D, sd, bd) == pytest.approx(expected, rel=2e-3)


def test_two_compartment_limits():
    b, sd, bd = np.array([0, 1000, 2000]), np.full(3, 10.0), np.full(3, 30.0)
    s = two_compartment_signal(b, sd, bd, [0.0, 1.0], [10, 10], [2, 2], [2.5, 2.5])
    assert np.allclose(s[0], np.exp(-b * 1e-3 * 2.5))                  # fin = 0: free extra-cellular
    assert np.allclose(s[1], restricted_signal(b, 5.0, 2.0, sd, bd))   # fin = 1: cylinders only
    assert np.allclose(s[:, 0], 1.0)
