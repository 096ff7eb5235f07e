#!/usr/bin/env python
"""Joint tissue + vascular fit against the separate branches (issue #21), on voxels the dictionaries never saw.

Voxels: S = (1 - fV) S_tissue + fV S_flow, fV ~ U(0.01, 0.15), Rician noise of σ = 1/SNR on the
b0-normalised signal (SNR 20 and 50), for two protocols:
- demo: the demo dataset's shells (b 25-2550 s/mm², δ/Δ 10/25 and 15/45 ms, TE 55/80 ms);
- clinical: b 0, 25, 50, 100, 200, 400, 600, 800, 1000, 1500 s/mm² at δ/Δ 12/30 and 12/60 ms (TE 70/100 ms).
Tissue: HELD_OUT_SUBSTRATES substrates of the default generator with seeds outside the default dictionary's
population (dictionary_default.default_substrate_specs(seed=HELD_OUT_SEED)), each at CONFIGS_PER_SUBSTRATE
random (D0in, D0ex, κ) off the dictionary's grid, Monte Carlo walks simulated directly for each protocol.
Flow: realisations of the shared SpinFlowSim networks Net1..Net10 (../shared/reference/spinflowsim; not
the generated networks of the default flow dictionary), simulated with our simulator for each protocol.
Fitting dictionaries: the embedded default tissue dictionary and the default flow dictionary (generated
networks), as the app uses them.

separate: the app's two branches, tissue PosteriorModel on b >= 250 s/mm² and the app's default IVIM (Bayesian;
its fV is the "IVIM fV" the app writes beside the joint fit's), whose vascular signal goes to the flow posterior
(posterior mean, Gaussian noise). joint: core/fitting/joint.py
on every measurement. Reports Spearman ρ and bias (mean estimate - truth) per parameter, and voxels/s of
each (one thread). The last line is one JSON object
{"separate": {name: {"spearman", "bias"}}, "joint": {...}, "voxels_per_s": {...}} (the first protocol and
SNR 50; every case under "cases"). Beside them, the tissue estimator on the same tissue voxels with fV = 0
("without blood": its own ρ and bias; what the vascular signal adds is the difference), on the mixed voxels
after removing the TRUE vascular component and (1 - fV) scale ("true removal": the ceiling of any
devascularisation), and on the blood-free voxels scaled by BLOOD_SCALE (the blood's scale-down alone).

    python benchmarks/joint_model.py [--data ../shared/reference/spinflowsim] [--voxels 1500] [--prior design] [--record]
    python benchmarks/joint_model.py --inverse-crime    # the held-out signals in the dictionaries: a diagnosis
    python benchmarks/joint_model.py --ceiling [--record]    # what the voxels carry about fV: an upper bound

--ceiling is an inverse crime on purpose, recorded as such (block joint-model-ceiling), never a recovery figure:
the joint fit's fV with the held-out tissue and flow signals added to both dictionaries, under the session prior
the app estimates and under the voxels' true fV prior (no blood-free voxel, flat on (0, FV_RANGE[1]]: the
posterior mean is then the Bayes estimate of fV), beside the app's default fit. The last is what any estimator of
these voxels can approach; a bar above it asks for information the voxels do not hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HELD_OUT_SEED = 9001
HELD_OUT_SUBSTRATES = 16
CONFIGS_PER_SUBSTRATE = 4
NETWORK_REALISATIONS = 10     # per shared network
TISSUE = ("fin", "vCS_cyl", "D0in", "D0ex", "kappa")
VASCULAR = ("fV", "vm", "vs", "anb")
FV_RANGE = (0.01, 0.15)
#: The mean (1 - fV) of the mixed voxels: blood-free voxels scaled by it show what the blood's scale-down
#: alone does to the tissue estimates.
BLOOD_SCALE = 1 - sum(FV_RANGE) / 2
VASC_THRESHOLD = 250.0


def protocols() -> dict:
    """{name: (Protocol of the shells incl. b = 0, with echo times)}."""
    from dmrimc_bids.core.phantom import demo_shells
    from dmrimc_bids.core.protocol import Protocol

    clinical = [(bb, small, big, echo) for small, big, echo in ((12.0, 30.0, 70.0), (12.0, 60.0, 100.0))
                for bb in (0, 25, 50, 100, 200, 400, 600, 800, 1000, 1500)]
    b, sd, bd, te = (np.array(c, float) for c in zip(*clinical))
    return {"demo": demo_shells(), "clinical": Protocol(b, sd, bd, echo_time_ms=te)}


def held_out_tissue(prot, cache: Path, walkers: int) -> tuple:
    """(signals [n, M] (b = 0 gives 1), truth [n, 5]) of the held-out substrates for prot."""
    from dmrimc_bids.core.dictionary_default import DEFAULT_METRICS_AREA, default_substrate_specs
    from dmrimc_bids.core.simulate import montecarlo
    from dmrimc_bids.core.simulate.histo import load_substrate
    from dmrimc_bids.core.simulate.scaled import dt_for_step

    key = cache / f"tissue_{abs(hash((tuple(prot.b), tuple(prot.small_delta_ms), tuple(prot.big_delta_ms)))) % 10**12}_{walkers}.npz"
    if key.is_file():
        with np.load(key) as z:
            return z["signals"], z["truth"]
    rng = np.random.default_rng(HELD_OUT_SEED)
    dw = prot.b > 20
    from dmrimc_bids.core.protocol import Protocol
    sim_prot = Protocol(prot.b[dw], prot.small_delta_ms[dw], prot.big_delta_ms[dw])
    sig, truth = [], []
    for spec in default_substrate_specs(HELD_OUT_SUBSTRATES, seed=HELD_OUT_SEED):
        sub = load_substrate(spec)
        cfg = np.column_stack([rng.uniform(0.8, 3.0, CONFIGS_PER_SUBSTRATE), rng.uniform(0.8, 3.0, CONFIGS_PER_SUBSTRATE),
                               rng.uniform(0.0, 40.0, CONFIGS_PER_SUBSTRATE)])
        res = montecarlo.simulate(sub, sim_prot, cfg[:, 0], cfg[:, 1], cfg[:, 2], n_walkers=walkers,
                                  dt_ms=dt_for_step(0.5, float(cfg[:, :2].max())), seed=int(rng.integers(1 << 30)))
        s = np.ones((len(cfg), len(prot)))
        s[:, dw] = res.signals
        m = sub.metrics(DEFAULT_METRICS_AREA)
        sig.append(s)
        truth.append(np.column_stack([np.full(len(cfg), m["fin"]), np.full(len(cfg), m["vCS_cyl"]), cfg]))
        print(f"  held-out substrate {spec['tissue']['seed']}: fin {m['fin']:.2f}, vCS {m['vCS_cyl']:.1f} µm", flush=True)
    sig, truth = np.concatenate(sig), np.concatenate(truth)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(key, signals=sig, truth=truth)
    return sig, truth


def flow_sets(prot, data: Path, cache: Path, spins: int) -> tuple:
    """(held-out flow signals [n, M], their (vm, vs, anb) [n, 3], the default flow Dictionary on prot's b > 0)."""
    from dmrimc_bids.core.dictionary import Dictionary
    from dmrimc_bids.core.protocol import Protocol
    import hashlib

    from dmrimc_bids.core.simulate.flow.dictionary import network_checksum, simulate_flow_dictionary
    from dmrimc_bids.core.simulate.flow.generate import default_realisations
    from dmrimc_bids.core.simulate.flow.network import read_network

    dw = prot.b > 20
    sim_prot = Protocol(prot.b[dw], prot.small_delta_ms[dw], prot.big_delta_ms[dw])
    tag = abs(hash((tuple(prot.b), tuple(prot.small_delta_ms), tuple(prot.big_delta_ms)))) % 10**12
    nets_tag = hashlib.sha256("".join(network_checksum(n) for n in default_realisations()).encode()).hexdigest()[:10]
    held = cache / f"flow_held_{tag}_{spins}_ids.npz"   # with network ids (the dictionaries' structure)
    default = cache / f"flow_default_{tag}_{spins}_{nets_tag}.npz"   # keyed by the default networks too
    if not held.is_file():
        nets = [read_network(f) for k in range(1, 11)
                for f in sorted((data / "networks" / f"Net{k}").glob("*.npz"))[:NETWORK_REALISATIONS]]
        simulate_flow_dictionary(nets, sim_prot, n_spins=spins, seed=HELD_OUT_SEED).save(held)
    if not default.is_file():
        simulate_flow_dictionary(default_realisations(), sim_prot, n_spins=spins, seed=0).save(default)
    h, d = Dictionary.load(held).select(), Dictionary.load(default).select()
    full = np.ones((len(h), len(prot)))
    full[:, dw] = h.signals
    return full, h.params, d


def voxels(tissue, tissue_truth, flow, flow_truth, n, snr, rng, fv_range=FV_RANGE) -> tuple:
    """(noisy signals [n, M], truth {name: [n]}, the vascular component fV·S_flow [n, M]) of mixed voxels with
    Rician noise σ = 1/snr."""
    it, iv = rng.integers(0, len(tissue), n), rng.integers(0, len(flow), n)
    fv = rng.uniform(*fv_range, n)
    clean = (1 - fv[:, None]) * tissue[it] + fv[:, None] * flow[iv]
    sigma = 1.0 / snr
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    noisy[:, ~np.isfinite(clean).all(0)] = np.nan
    truth = {k: tissue_truth[it, j] for j, k in enumerate(TISSUE)}
    truth["fV"] = fv
    truth.update({k: flow_truth[iv, j] for j, k in enumerate(VASCULAR[1:])})
    return noisy, truth, fv[:, None] * flow[iv]


def normalise(noisy, prot) -> np.ndarray:
    """Each TE group divided by its mean b = 0 (as the app's preprocessing)."""
    out = np.empty_like(noisy)
    for te in np.unique(prot.echo_time_ms):
        g = prot.echo_time_ms == te
        b0 = noisy[:, g & (prot.b <= 20)].mean(1, keepdims=True)
        out[:, g] = noisy[:, g] / b0
    return out


def fit_separate(y, sigma, prot, tissue_dic, flow_dic, prior="entries") -> tuple:
    """The app's separate branches: ({name: estimate [n]}, seconds)."""
    from dmrimc_bids.core.fitting.ivim import IvimModel
    from dmrimc_bids.core.fitting.posterior import PosteriorModel

    t0 = time.perf_counter()
    keep = np.flatnonzero(prot.b >= VASC_THRESHOLD)
    tissue = PosteriorModel(tissue_dic.match(prot.subset(keep)), prior=prior).fit(y[:, keep],
                                                                                  sigma=np.full(len(y), sigma))
    out = {k: tissue.params[k] for k in TISSUE}
    ivim = IvimModel(prot).fit(y, sigma=np.full(y.shape, sigma))
    out["fV"] = ivim.params["fV"]
    vs = ivim.flow_signal
    dw = np.flatnonzero(prot.b > 20)
    cols = np.searchsorted(dw, vs.index)
    flow = PosteriorModel(_columns(flow_dic, cols), point="mean", noise="gaussian")
    sig_v = np.nanmean(vs.sigma, axis=1) if vs.sigma is not None else None
    fit = flow.fit(np.nan_to_num(vs.signal), mask=vs.mask, sigma=sig_v)
    out.update({k: np.where(vs.mask, fit.params[k], np.nan) for k in VASCULAR[1:]})
    return out, time.perf_counter() - t0


def _columns(dic, cols):
    from dmrimc_bids.core.dictionary import Dictionary
    return Dictionary(dic.signals[:, cols], dic.params, dic.names, dic.protocol.subset(cols), dic.units, dic.provenance)


def fit_joint(y, sigma, prot, tissue_dic, flow_dic, prior="entries") -> tuple:
    from dmrimc_bids.core.fitting.joint import JointModel

    t0 = time.perf_counter()
    dw = np.flatnonzero(prot.b > 20)
    model = JointModel(tissue_dic.match(prot.subset(dw)), flow_dic, prior=prior)
    fit = model.fit(y[:, dw], sigma=np.full(len(y), sigma))
    out = {k: fit.tissue.params[k] for k in TISSUE}
    out.update({k: fit.vascular.params[k] for k in VASCULAR})
    return out, time.perf_counter() - t0


def with_entries(dic, prot, signals, params):
    """A diagnosis only (an inverse crime on purpose): dic matched to prot's b > 0 with the entries
    signals [n, len(prot)] (params [n, P] in dic's name order) appended, each its own structure."""
    from dmrimc_bids.core.dictionary import Dictionary
    dw = np.flatnonzero(prot.b > 20)
    m = dic.match(prot.subset(dw))
    first = (int(m.structure.max()) + 1) if m.structure is not None else len(m)
    old_ids = m.structure if m.structure is not None else np.arange(len(m))
    return Dictionary(np.concatenate([m.signals, signals[:, dw]]).astype(np.float32),
                      np.concatenate([m.params, params]), list(m.names), m.protocol, m.units, m.provenance,
                      np.concatenate([old_ids, first + np.arange(len(signals))]))


def fit_oracle(y, vascular, fv, sigma, prot, tissue_dic, prior="entries") -> dict:
    """The tissue posterior on b >= VASC_THRESHOLD after removing the TRUE vascular component and (1 - fV)
    scale: what a perfect devascularisation would give the tissue estimator."""
    from dmrimc_bids.core.fitting.posterior import PosteriorModel

    keep = np.flatnonzero(prot.b >= VASC_THRESHOLD)
    y_t = (y[:, keep] - vascular[:, keep]) / (1 - fv)[:, None]
    fit = PosteriorModel(tissue_dic.match(prot.subset(keep)), prior=prior).fit(y_t, sigma=sigma / (1 - fv))
    return {k: fit.params[k] for k in TISSUE}


def scores_tissue(est: dict, truth: dict) -> dict:
    """Spearman ρ and bias of the tissue parameters."""
    return scores(est, truth, np.ones(len(truth["fin"]), bool), TISSUE)


def scores(est: dict, truth: dict, common: np.ndarray, names=TISSUE + VASCULAR) -> dict:
    """Spearman ρ and bias per parameter; the flow parameters on the voxels both estimators mapped (common:
    the separate branch maps vm, vs, anb only where segmented IVIM's fV >= 0.005)."""
    from scipy.stats import spearmanr
    out = {}
    for k in names:
        e, t = np.asarray(est[k], float), truth[k]
        ok = np.isfinite(e) & (common if k in VASCULAR[1:] else True)
        out[k] = {"spearman": round(float(spearmanr(e[ok], t[ok]).statistic), 3) if ok.sum() > 2 else None,
                  "bias": round(float(np.mean(e[ok] - t[ok])), 4) if ok.any() else None,
                  "medae": round(float(np.median(np.abs(e[ok] - t[ok]))), 4) if ok.any() else None,
                  "fitted": round(float(ok.mean()), 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "reference" / "spinflowsim")
    ap.add_argument("--voxels", type=int, default=1500)
    ap.add_argument("--walkers", type=int, default=6000)
    ap.add_argument("--spins", type=int, default=2000)
    ap.add_argument("--snr", type=float, nargs="+", default=[50.0, 20.0])
    ap.add_argument("--protocols", nargs="+", default=["demo", "clinical"])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dmrimc-bids" / "joint_model")
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--prior", choices=["entries", "design"], default="entries",
                    help="the tissue posterior's prior (PosteriorModel); design is recorded in its own block")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--ceiling", action="store_true",
                    help="the fV the voxels carry: an inverse crime on purpose (the truth in the dictionaries, the "
                         "true fV prior), recorded as block joint-model-ceiling")
    ap.add_argument("--inverse-crime", action="store_true",
                    help="diagnosis, never recorded: add the held-out tissue and flow signals to the fitting "
                         "dictionaries and print the joint fit's fV, vm, vs, anb rho and bias (what the voxels carry)")
    args = ap.parse_args(argv)
    if args.inverse_crime and args.record:
        ap.error("--inverse-crime is a diagnosis: it is never recorded")
    if args.ceiling and args.inverse_crime:
        ap.error("--ceiling and --inverse-crime are two diagnoses: choose one")
    if not (args.data / "networks").is_dir():
        print(f"shared SpinFlowSim networks not found at {args.data}: skipped", file=sys.stderr)
        return 0
    from threadpoolctl import threadpool_limits
    import numba

    from dmrimc_bids.core.dictionary_default import default_dictionary

    numba.set_num_threads(1)
    tissue_dic = default_dictionary().select()
    cases = {}
    for pname in args.protocols:
        prot = protocols()[pname]
        print(f"{pname}: simulating held-out tissue and flow (cached in {args.cache})", flush=True)
        t_sig, t_truth = held_out_tissue(prot, args.cache, args.walkers)
        f_sig, f_truth, flow_dic = flow_sets(prot, args.data, args.cache, args.spins)
        for snr in args.snr:
            rng = np.random.default_rng(args.seed)
            noisy, truth, vascular = voxels(t_sig, t_truth, f_sig, f_truth, args.voxels, snr, rng)
            y = normalise(noisy, prot)
            if args.ceiling:
                cases[f"{pname}_snr{snr:g}"] = fv_ceiling(y, truth, 1.0 / snr, prot, tissue_dic, flow_dic, t_sig, t_truth,
                                                          f_sig, f_truth, args.prior)
                print(f"{pname} SNR {snr:g}: fV rho, median error {cases[f'{pname}_snr{snr:g}']}", flush=True)
                continue
            if args.inverse_crime:   # a diagnosis: the fitting dictionaries hold the voxels' own signals
                names = list(tissue_dic.match(prot.subset(np.flatnonzero(prot.b > 20))).names)
                t_par = np.column_stack([t_truth[:, TISSUE.index(k)] for k in names])
                crime_t = with_entries(tissue_dic, prot, t_sig, t_par)
                crime_f = with_entries(flow_dic, prot, f_sig, f_truth)
                with threadpool_limits(1):
                    joint, _ = fit_joint(y, 1.0 / snr, prot, crime_t, crime_f, args.prior)
                got = scores(joint, truth, np.ones(len(y), bool))
                cases[f"{pname}_snr{snr:g}"] = {k: {m: got[k][m] for m in ("spearman", "bias")} for k in VASCULAR}
                # the tissue: the joint fit against the true-removal ceiling, both with the truth in the dictionary
                ceiling = scores_tissue(fit_oracle(y, vascular, truth["fV"], 1.0 / snr, prot, crime_t, args.prior),
                                        truth)
                cases[f"{pname}_snr{snr:g}"]["tissue_minus_ceiling"] = {
                    k: round(got[k]["spearman"] - ceiling[k]["spearman"], 3) for k in TISSUE}
                print(f"{pname} SNR {snr:g}, dictionaries holding the truth: rho {cases[f'{pname}_snr{snr:g}']}")
                continue
            with threadpool_limits(1):
                sep, t_sep = fit_separate(y, 1.0 / snr, prot, tissue_dic, flow_dic, args.prior)
                joint, t_joint = fit_joint(y, 1.0 / snr, prot, tissue_dic, flow_dic, args.prior)
            # the tissue estimator on these substrates: the same voxels without blood (fV = 0), and the mixed
            # voxels with the true vascular component removed (the ceiling of any devascularisation)
            pure, pure_truth, _ = voxels(t_sig, t_truth, f_sig, f_truth, args.voxels, snr,
                                         np.random.default_rng(args.seed), fv_range=(0.0, 0.0))
            with threadpool_limits(1):
                base, _ = fit_separate(normalise(pure, prot), 1.0 / snr, prot, tissue_dic, flow_dic, args.prior)
                # ... and scaled by the mean (1 - fV), the blood's scale-down without its signal
                shrunk, _ = fit_separate(normalise(pure, prot) * BLOOD_SCALE, BLOOD_SCALE / snr, prot, tissue_dic,
                                         flow_dic, args.prior)
                oracle = fit_oracle(y, vascular, truth["fV"], 1.0 / snr, prot, tissue_dic, args.prior)
            baseline = {k: round(float(np.mean(base[k] - pure_truth[k])), 4) for k in TISSUE}
            common = np.isfinite(np.asarray(sep["vm"], float))
            case = {"separate": scores(sep, truth, common), "joint": scores(joint, truth, common),
                    "tissue_only_bias": baseline, "tissue_only": scores_tissue(base, pure_truth),
                    "tissue_only_scaled": scores_tissue(shrunk, pure_truth),
                    "oracle_removal": scores_tissue(oracle, truth),
                    "flow_mapped_fraction": {"separate": round(float(common.mean()), 3), "joint": 1.0},
                    "seconds": {"separate": round(t_sep, 1), "joint": round(t_joint, 1)}}
            cases[f"{pname}_snr{snr:g}"] = case
            print(f"{pname} SNR {snr:g}: seconds (models built included) separate {case['seconds']['separate']}, "
                  f"joint {case['seconds']['joint']}; flow maps of the separate branch on "
                  f"{case['flow_mapped_fraction']['separate']:.0%} of the voxels")
            for k in TISSUE + VASCULAR:
                s, j = case["separate"][k], case["joint"][k]
                print(f"  {k:8s} rho {s['spearman']} -> {j['spearman']}   bias {s['bias']} -> {j['bias']}"
                      + (f"   (without blood: rho {case['tissue_only'][k]['spearman']} bias {baseline[k]}; true "
                         f"removal: rho {case['oracle_removal'][k]['spearman']}; without blood x {BLOOD_SCALE:g}: rho "
                         f"{case['tissue_only_scaled'][k]['spearman']} bias {case['tissue_only_scaled'][k]['bias']})"
                         if k in baseline else ""))
    if args.inverse_crime:
        print(json.dumps({"inverse_crime": cases}))
        return 0
    if args.ceiling:
        if args.record:
            sys.path.insert(0, str(HERE))
            from _record import machine, record
            record("joint-model-ceiling", render_ceiling(cases, args, machine()))
        print(json.dumps({"ceiling": cases}))
        return 0
    rate = throughput(protocols()[args.protocols[0]], tissue_dic, args)
    first = cases[next(iter(cases))]
    summary = {"separate": first["separate"], "joint": first["joint"], "voxels_per_s": rate, "cases": cases}
    if args.record:
        sys.path.insert(0, str(HERE))
        from _record import machine, record
        block = "joint-model" + ("" if args.prior == "entries" else f"-prior-{args.prior}")
        record(block, render(cases, args, machine()) + f"\nThroughput, one thread, {args.protocols[0]} protocol, "
               f"4000 voxels (median of 3): separate {rate['separate']:.0f} voxels/s, joint {rate['joint']:.0f} voxels/s.")
    print(json.dumps(summary))
    return 0


def fv_ceiling(y, truth, sigma, prot, tissue_dic, flow_dic, t_sig, t_truth, f_sig, f_truth, prior="entries") -> dict:
    """{variant: {"spearman", "medae"}} of the joint fit's fV: the app's default ('app'), the held-out signals in
    both dictionaries under the session prior ('truth in the dictionaries') and under the voxels' true fV
    prior ('... and the true fV prior': p_zero 0, flat on (0, FV_RANGE[1]])."""
    from scipy.stats import spearmanr

    from dmrimc_bids.core.fitting.joint import JointModel

    dw = np.flatnonzero(prot.b > 20)
    names = list(tissue_dic.match(prot.subset(dw)).names)
    crime_t = with_entries(tissue_dic, prot, t_sig, np.column_stack([t_truth[:, TISSUE.index(k)] for k in names]))
    crime_f = with_entries(flow_dic, prot, f_sig, f_truth)
    variants = {"app": (tissue_dic.match(prot.subset(dw)), flow_dic, {}),
                "truth in the dictionaries": (crime_t, crime_f, {}),
                "truth in the dictionaries and the true fV prior": (crime_t, crime_f, {
                    "p_zero": 0.0, "fv_rate": 0.0, "fv_max": FV_RANGE[1]})}
    out = {}
    from threadpoolctl import threadpool_limits
    for name, (td, fd, kw) in variants.items():
        with threadpool_limits(1):
            fv = JointModel(td, fd, prior=prior, **kw).fit(y[:, dw], sigma=np.full(len(y), sigma)).vascular.params["fV"]
        out[name] = {"spearman": round(float(spearmanr(fv, truth["fV"]).statistic), 3),
                     "medae": round(float(np.median(np.abs(fv - truth["fV"]))), 4)}
    return out


def render_ceiling(cases: dict, args, machine: str) -> str:
    variants = list(next(iter(cases.values())))
    lines = [f"`python benchmarks/joint_model.py --ceiling --voxels {args.voxels} --record` ({machine}; an inverse "
             "crime on purpose, an upper bound, not a recovery figure: the held-out voxels of block joint-model, fV ~ "
             f"U{FV_RANGE}, their own tissue and flow signals added to the fitting dictionaries). fV ρ (median error).",
             "", "| case | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for name, case in cases.items():
        lines.append(f"| {name} | " + " | ".join(f"{case[v]['spearman']} ({case[v]['medae']})" for v in variants) + " |")
    return "\n".join(lines)


def throughput(prot, tissue_dic, args, n: int = 4000, repeats: int = 3) -> dict:
    """Voxels/s of each estimator on one thread (models built and warmed up first; median of repeats) on
    n voxels of the first protocol at SNR 50."""
    from threadpoolctl import threadpool_limits

    from dmrimc_bids.core.fitting.ivim import IvimModel
    from dmrimc_bids.core.fitting.joint import JointModel
    from dmrimc_bids.core.fitting.posterior import PosteriorModel

    t_sig, t_truth = held_out_tissue(prot, args.cache, args.walkers)
    f_sig, f_truth, flow_dic = flow_sets(prot, args.data, args.cache, args.spins)
    y = normalise(voxels(t_sig, t_truth, f_sig, f_truth, n, 50.0, np.random.default_rng(1))[0], prot)
    sigma = np.full(n, 0.02)
    keep, dw = np.flatnonzero(prot.b >= VASC_THRESHOLD), np.flatnonzero(prot.b > 20)
    tissue = PosteriorModel(tissue_dic.match(prot.subset(keep)), prior=args.prior)
    ivim = IvimModel(prot)
    joint = JointModel(tissue_dic.match(prot.subset(dw)), flow_dic, prior=args.prior)
    flow = PosteriorModel(_columns(flow_dic, np.flatnonzero(prot.b[dw] <= 200)), point="mean", noise="gaussian")

    def separate():
        tissue.fit(y[:, keep], sigma=sigma)
        vs = ivim.fit(y, sigma=np.full(y.shape, 0.02)).flow_signal
        flow.fit(np.nan_to_num(vs.signal), mask=vs.mask, sigma=np.nanmean(vs.sigma, axis=1))

    runs = {"separate": [], "joint": []}
    with threadpool_limits(1):
        separate(), joint.fit(y[:200, dw], sigma=sigma[:200])   # warm-up: compilation, model error
        for _ in range(repeats):
            for name, call in (("separate", separate), ("joint", lambda: joint.fit(y[:, dw], sigma=sigma))):
                t0 = time.perf_counter()
                call()
                runs[name].append(n / (time.perf_counter() - t0))
    return {k: round(float(np.median(v)), 1) for k, v in runs.items()}


def render(cases: dict, args, machine: str) -> str:
    lines = [f"`python benchmarks/joint_model.py --voxels {args.voxels}"
             + ("" if args.prior == "entries" else f" --prior {args.prior}") + f" --record` ({machine}; one thread; "
             f"held-out tissue: {HELD_OUT_SUBSTRATES} substrates x {CONFIGS_PER_SUBSTRATE} configurations, seed "
             f"{HELD_OUT_SEED}, {args.walkers} walkers; held-out flow: {NETWORK_REALISATIONS} realisations of each "
             f"shared network Net1-Net10, {args.spins} spins; fV ~ U{FV_RANGE}).", ""]
    for name, case in cases.items():
        fi, fj = case["separate"]["fV"], case["joint"]["fV"]
        lines += [f"**{name}** (vm, vs, anb scored on the {case['flow_mapped_fraction']['separate']:.0%} of the "
                  "voxels where the separate branch maps them). fV: the app's default IVIM (Bayesian) ρ "
                  f"{fi['spearman']}, median error {fi['medae']}; the joint fit (the headline fV) ρ {fj['spearman']}, "
                  f"median error {fj['medae']}.", "",
                  "| parameter | ρ separate | ρ joint | bias separate | bias joint | ρ, bias without blood | "
                  f"ρ after true removal | ρ, bias without blood x {BLOOD_SCALE:g} |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in TISSUE + VASCULAR:
            s, j = case["separate"][k], case["joint"][k]
            pure = (f"{case['tissue_only'][k]['spearman']}, {case['tissue_only_bias'][k]}" if k in TISSUE else "")
            orc = case["oracle_removal"][k]["spearman"] if k in TISSUE else ""
            sc = case["tissue_only_scaled"].get(k)
            scaled = f"{sc['spearman']}, {sc['bias']}" if sc else ""
            lines.append(f"| {k} | {s['spearman']} | {j['spearman']} | {s['bias']} | {j['bias']} | {pure} | {orc} "
                         f"| {scaled} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
