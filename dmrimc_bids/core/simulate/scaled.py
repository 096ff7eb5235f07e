"""Diffusion-time scaling: one Monte Carlo walk serves every intrinsic diffusivity.

Brownian motion with diffusivity D in a geometry with reflecting or permeable walls is, in law, the
motion with diffusivity 1 µm²/ms run on the clock t' = D·t, with permeability κ' = κ/D (the
boundary condition D ∂ρ/∂n = κ[ρ] divided by D). A PGSE phase φ = γG ∫ g(t) x(t) dt with timings
(δ, Δ) then equals the phase of gradient G/D with timings (D·δ, D·Δ), i.e.

    S(b, δ, Δ; D0in, D0ex, κ) = S(D0in·b, D0in·δ, D0in·Δ; 1, D0ex/D0in, κ/D0in)        (D in µm²/ms)

so one walk at (1, r, κ') gives the signals of every D0in, with D0ex = r·D0in and κ = κ'·D0in, by
recording the phase integrals of the scaled timings. Without permeability the two compartments are
independent, so one walk of intra-cellular walkers and one of extra-cellular walkers at D = 1 give
every (D0in, D0ex) pair: S = w_in·S_in(D0in) + (1 - w_in)·S_ex(D0ex), with w_in the cells' area
fraction (walkers start uniformly, so the water fraction is the area fraction).

Units: b [s/mm²], δ/Δ [ms], D [µm²/ms], κ [µm/s], lengths [µm].
"""

from __future__ import annotations

import math

import numpy as np

from ..protocol import Protocol
from . import montecarlo

#: Default walker step length [µm] (3D step ℓ = sqrt(6·D·dt)): 0.3 x the radius of a 5 µm cell.
DEFAULT_STEP_UM = 0.75


def scaled_protocol(protocol: Protocol, factors) -> Protocol:
    """The protocol repeated once per factor f with b·f, δ·f, Δ·f (measurement m of block k is row
    k·M + m)."""
    f = np.repeat(np.asarray(factors, float), len(protocol))
    b = np.tile(protocol.b, len(factors)) * f
    sd = np.tile(protocol.small_delta_ms, len(factors)) * f
    bd = np.tile(protocol.big_delta_ms, len(factors)) * f
    return Protocol(b, sd, bd)


def dt_for_step(step_um: float, d_max: float) -> float:
    """Time step [ms] whose 3D step length sqrt(6·d_max·dt) is step_um [µm]."""
    return step_um ** 2 / (6.0 * d_max)


def starts_in(substrate, n: int, intra: bool, rng) -> np.ndarray:
    """n start positions [n, 2] µm drawn uniformly inside the cells (intra) or outside them."""
    import shapely

    union = shapely.union_all(substrate.cells) if substrate.cells else None
    lx, ly = map(float, substrate.tile_um)
    out = np.zeros((0, 2))
    while len(out) < n:
        cand = rng.random((max(4 * n, 1000), 2)) * (lx, ly)
        inside = shapely.contains_xy(union, cand[:, 0], cand[:, 1]) if union is not None else \
            np.zeros(len(cand), bool)
        out = np.concatenate([out, cand[inside == intra]])
    return np.ascontiguousarray(out[:n])


def impermeable_signals(substrate, protocol: Protocol, d0_values, *, n_walkers: int, step_um: float = DEFAULT_STEP_UM,
                        seed: int = 0, device: str = "cpu"):
    """(S_in, S_ex) [len(d0_values), M]: each compartment's signal for every intrinsic diffusivity in
    d0_values [µm²/ms], from one walk of n_walkers/2 walkers per compartment at D = 1 (κ = 0)."""
    d0 = np.asarray(d0_values, float)
    proto = scaled_protocol(protocol, d0)
    dt = dt_for_step(step_um, 1.0)
    rng = np.random.default_rng(seed)
    half = max(1, n_walkers // 2)
    out = []
    for k, intra in enumerate((True, False)):
        if intra and not substrate.cells:
            out.append(np.ones((d0.size, len(protocol))))
            continue
        start = starts_in(substrate, half, intra, rng)
        res = montecarlo.simulate(substrate, proto, 1.0, 1.0, 0.0, start_xy=start, dt_ms=dt,
                                  seed=seed * 2 + k, device=device)
        out.append(res.signals[0].reshape(d0.size, len(protocol)))
    return out[0], out[1]


def permeable_signals(substrate, protocol: Protocol, d0in_values, ratio: float, kappa_per_d0in, *,
                      n_walkers: int, step_um: float = DEFAULT_STEP_UM, seed: int = 0, device: str = "cpu"):
    """Signals [len(kappa_per_d0in), len(d0in_values), M] of (D0in, D0ex = ratio·D0in, κ = κ'·D0in) for
    every D0in in d0in_values [µm²/ms] and every κ' in kappa_per_d0in [µm/s per µm²/ms], from one call
    walking n_walkers per κ' at (1, ratio, κ') (a scalar κ' gives [len(d0in_values), M]). One call keeps
    the GPU busy (n_walkers x len(κ') threads); the walks share the time step of D = max(1, ratio)."""
    d0 = np.asarray(d0in_values, float)
    kp = np.atleast_1d(np.asarray(kappa_per_d0in, float))
    proto = scaled_protocol(protocol, d0)
    dt = dt_for_step(step_um, max(1.0, ratio))
    res = montecarlo.simulate(substrate, proto, 1.0, ratio, kp, n_walkers=n_walkers, dt_ms=dt,
                              seed=seed, device=device)
    out = res.signals.reshape(kp.size, d0.size, len(protocol))
    return out[0] if np.ndim(kappa_per_d0in) == 0 else out


def within(values, lo, hi) -> np.ndarray:
    v = np.asarray(values, float)
    return (v >= lo - 1e-9) & (v <= hi + 1e-9)


def substrate_entries(substrate, protocol: Protocol, design: dict, *, n_walkers: int, step_um: float = DEFAULT_STEP_UM,
                      seed: int = 0, device: str = "cpu"):
    """Signals [n, M] and configurations [n, 3] (D0in, D0ex [µm²/ms], κ [µm/s]) of one substrate.

    design: {"d0": diffusivity grid [µm²/ms] (both compartments, κ = 0 entries: every pair),
    "ratios": D0ex/D0in of the permeable walks, "kappa_per_d0": κ/D0in [µm/s per µm²/ms] of the
    permeable walks, "kappa_max": largest κ kept [µm/s]}. Permeable entries keep the D0in of the grid
    whose D0ex = ratio·D0in lies within the grid's range.
    """
    d0 = np.asarray(design["d0"], float)
    lo, hi = float(d0.min()), float(d0.max())
    s_in, s_ex = impermeable_signals(substrate, protocol, d0, n_walkers=n_walkers, step_um=step_um, seed=seed,
                                     device=device)
    w = substrate.metrics("polygon")["fin"]  # the cells' area fraction = the walkers' water fraction
    sig = [w * s_in[i] + (1 - w) * s_ex[j] for i in range(d0.size) for j in range(d0.size)]
    cfg = [(d0[i], d0[j], 0.0) for i in range(d0.size) for j in range(d0.size)]
    kmax = design.get("kappa_max", math.inf) + 1e-9
    for walk, r in enumerate(design["ratios"], start=1):
        keep = within(d0 * r, lo, hi)
        kps = [kp for kp in design["kappa_per_d0"] if np.any(d0[keep] * kp <= kmax)]
        if not keep.any() or not kps:
            continue
        s = permeable_signals(substrate, protocol, d0[keep], r, kps, n_walkers=n_walkers, step_um=step_um,
                              seed=seed * 1000 + walk, device=device)
        for k, kp in enumerate(kps):
            ok = d0[keep] * kp <= kmax
            sig.extend(s[k][ok])
            cfg.extend((d, r * d, kp * d) for d in d0[keep][ok])
    return np.asarray(sig), np.asarray(cfg, float)
