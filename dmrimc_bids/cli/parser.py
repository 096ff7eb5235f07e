"""The BIDS App's command line: the parser and the one Config it builds (workflows/config.py)."""

from __future__ import annotations

from ..core.fitting.registry import model_kind
from ..core.simulate.flow.dictionary import DEFAULT_SPINS

import argparse
import sys
from pathlib import Path

from . import add_version
from .argtypes import UsageParser, bound, fix, memory_gb, point_prior
from ..core.errors import EX_USAGE, InputError
from ..workflows.config import DEFAULT_POINT_PRIOR, Config
from ..workflows.execution import PLUGINS

#: Options of the published fitting method (--estimator ml) only.
FIT_ONLY_OPTIONS = ("reg", "surrogate", "surrogate_smoothing", "surrogate_neighbours", "noise_model")


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="dmrimc-bids", description="Histology-informed dMRI microstructure maps (Histo-uSim) "
                                                "from a BIDS dataset.")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset (raw)")
    p.add_argument("output_dir", type=Path, help="where the derivatives go")
    p.add_argument("analysis_level", choices=["participant", "group"],
                   help="participant: maps and a report per subject/session; group: tables and a report over them")
    add_version(p, "dmrimc-bids")
    _input_options(p.add_argument_group("selecting inputs"))
    _model_options(p.add_argument_group("model"))
    _vascular_options(p.add_argument_group(vascular_group_title()))
    _execution_options(p.add_argument_group("execution"))
    return p


def _input_options(g) -> None:
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to process, with or without 'sub-' (default: every subject)")
    g.add_argument("--session-label", "--session-id", "--session_label", nargs="+", metavar="LABEL",
                   help="sessions to process, with or without 'ses-' (default: every session)")
    g.add_argument("--bids-filter-file", type=Path, metavar="FILE", help='JSON {"dwi": {entity: value}}')
    g.add_argument("--derivatives", nargs="+", type=Path, metavar="DIR",
                   help="derivative datasets with preprocessed DWI (desc-preproc_dwi), masks, σ maps")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not check that bids_dir is a BIDS dataset (dataset_description.json, layout)")
    g.add_argument("--mask", type=Path, metavar="FILE", help="mask on the DWI grid (all subjects)")
    g.add_argument("--mask-label", metavar="LABEL",
                   help="use the desc-LABEL_mask of the --derivatives folders (default: the only one, else "
                        "tumour > tumor > lesion > roi > brain; none: built from the b=0 intensity)")
    g.add_argument("--noise-map", type=Path, metavar="FILE",
                   help="noise σ map of one acquired volume, signal units (default: derivative desc-sigma)")
    g.add_argument("--atlas", metavar="TPL:ATLAS[:DESC[:RES]]",
                   help="group level: TemplateFlow atlas ROIs for template-space inputs (from TEMPLATEFLOW_HOME)")
    g.add_argument("--group-column", metavar="COLUMN",
                   help="group level: participants.tsv column splitting the cohort distributions")
    g.add_argument("--small-delta", type=float, metavar="MS", help="gradient duration δ [ms] for every volume")
    g.add_argument("--big-delta", type=float, metavar="MS", help="gradient separation Δ [ms] for every volume")
    g.add_argument("--timing", nargs="+", metavar="RUN:δ,Δ|TSV",
                   help="per-run gradient timing [ms], e.g. --timing run-1:10,25 run-2:15,45 (RUN: an entity or the "
                        "file name of the DWI), or a TSV with columns run, small_delta, big_delta; wins over the "
                        "sidecars and --small-delta/--big-delta")


def _model_options(m) -> None:
    m.add_argument("--dictionary", type=Path, metavar="NPZ",
                   help="dictionary (default: the embedded Monte Carlo one, see dmrimc-sim default-dictionary)")
    m.add_argument("--dictionary-source", choices=["match", "simulate"], default="match",
                   help="match: the dictionary's measurements nearest the protocol (default); simulate: run the "
                        "Monte Carlo simulator for each subject's own protocol (cached in the work dir)")
    m.add_argument("--substrate-svg", nargs="+", type=Path, metavar="SVG",
                   help="with --dictionary-source simulate: traced cell substrates (default: the generated ones)")
    sg = m.add_mutually_exclusive_group()
    sg.add_argument("--substrate-width-um", type=float, metavar="W", help="width of each substrate SVG [µm]")
    sg.add_argument("--substrate-scale", type=float, metavar="UM_PER_UNIT", help="µm per SVG unit")
    m.add_argument("--sim-walkers", type=int, default=2000, metavar="N", help="walkers per simulated entry (2000)")
    m.add_argument("--sim-d0", nargs="+", type=float, metavar="D", help="D0in and D0ex values [µm²/ms]")
    m.add_argument("--sim-kappa", nargs="+", type=float, metavar="K", help="permeabilities [µm/s]")
    m.add_argument("--params", nargs="+", metavar="NAME", help="parameters to estimate (D0in, D0ex, kappa added)")
    m.add_argument("--fix", nargs="+", type=fix, default=[], metavar="NAME=VALUE", help="fix at a grid value")
    m.add_argument("--bounds", nargs="+", type=bound, default=[], metavar="NAME=LO,HI",
                   help="keep only dictionary entries with NAME in [LO, HI] (units of the maps), e.g. kappa=0,30")
    m.add_argument("--b0-threshold", type=float, default=2.0, metavar="B",
                   help="b <= B is b=0 [s/mm²] (2: b ≈ 0 as acquired; low b such as 5-20 are IVIM data)")
    m.add_argument("--b0-per-series", action="store_true",
                   help="normalise each series (run) by its own b=0 only; default: pool the b=0 of every series "
                        "with the same TE, after matching each series' global scale (less noise)")
    m.add_argument("--vasc-threshold", type=float, default=250.0, metavar="B",
                   help="drop non-zero b below B from the tissue fit [s/mm²] (250)")
    m.add_argument("--shell-tolerance", type=float, default=20.0, metavar="B", help="b within B is one shell [s/mm²] (20)")
    m.add_argument("--match-tolerance-b", type=float, default=100.0, metavar="B", help="[s/mm²] (100)")
    m.add_argument("--match-tolerance-ms", type=float, default=2.5, metavar="MS", help="δ and Δ [ms] (2.5)")
    m.add_argument("--estimator", choices=["posterior", "posterior-mean", "ml", "posterior-median", "fit"],
                   default="posterior",
                   help="posterior (default): posterior median with calibrated 95 %% intervals and identifiability "
                        "maps (docs/benchmarks.md); posterior-mean: its mean; ml: maximum likelihood by grid search "
                        "+ Levenberg-Marquardt on a spline surrogate (the published method; the options below "
                        "apply to it). posterior-median and fit are the former names of posterior and ml")
    m.add_argument("--prior", choices=["entries", "design"], default="entries",
                   help="prior of the posterior estimators' tissue fit: entries (default): flat over the dictionary's "
                        "entries; design: flat over its design axes (D0in, D0ex, kappa), each entry weighted to even "
                        "out the dictionary's sampling: smaller biases, lower rank correlation at low SNR "
                        "(docs/benchmarks.md, 'Prior')")
    m.add_argument("--point-prior", nargs="+", type=point_prior, default=None, metavar="NAME=PRIOR",
                   help="the prior of one parameter's estimate and SD, e.g. kappa=entries (default: "
                        f"{' '.join(f'{k}={v}' for k, v in DEFAULT_POINT_PRIOR.items())}; the rest follow --prior)")
    m.add_argument("--n-averages", type=float, default=1.0, metavar="N",
                   help="the σ map refers to data magnitude-averaged over N volumes (1)")
    m.add_argument("--reg", nargs=2, default=["2", "0"], metavar=("NORM", "WEIGHT"),
                   help="L1/L2 regularisation towards the range centre, e.g. --reg 2 0.0025 (none)")
    m.add_argument("--surrogate-smoothing", type=float, default=1e-3, metavar="LAMBDA",
                   help="--estimator ml: smoothing of the thin-plate-spline surrogate (1e-3)")
    m.add_argument("--surrogate", choices=["local", "global"], default="local",
                   help="thin-plate-spline surrogate: local (fast, default) or global (the published reference)")
    m.add_argument("--surrogate-neighbours", type=int, default=32, metavar="K",
                   help="dictionary entries per local surrogate model (32)")
    m.add_argument("--noise-model", choices=["offset-gaussian", "rician"], default="offset-gaussian",
                   help="offset-Gaussian (default, as published) or Rician likelihood; voxels without a "
                        "noise map use least squares")


def vascular_group_title() -> str:
    """The vascular options' help title, from the models that exist and the defaults that run."""
    from ..core.fitting.ivim import IVIM_ESTIMATORS
    from ..workflows.config import Config
    default = Config(out_dir="")
    ivim = f"IVIM ({' or '.join(IVIM_ESTIMATORS)}; default {default.ivim_estimator})"
    fit = ("by default the joint tissue + vascular fit, otherwise its signal's SpinFlowSim fit"
           if default.model == "joint" else "SpinFlowSim fit of its vascular signal")
    return f"vascular branch ({ivim}; {fit})"


def _vascular_options(v) -> None:
    v.add_argument("--vascular", choices=["auto", "on", "off"], default="auto",
                   help="auto: run it when a TE group has IVIM b-values (default); on: require it; off: skip")
    v.add_argument("--ivim-estimator", choices=["bayes", "segmented"], default="bayes",
                   help="bayes (default; best in benchmarks/ivim_peers.py): posterior of fV, D, D* with SDs, 95 %% "
                        "intervals and contraction; segmented: the OSIPI segmented fit (D from b >= the split)")
    v.add_argument("--ivim-b-split", type=float, default=200.0, metavar="B",
                   help="segmented IVIM: D from b >= the acquired b nearest B; vascular signal on b <= it "
                        "[s/mm²] (200)")
    v.add_argument("--ivim-b-max", type=float, default=1200.0, metavar="B",
                   help="largest b of the IVIM fit [s/mm²] (1200)")
    v.add_argument("--flow-dictionary", type=Path, metavar="NPZ",
                   help="flow dictionary (dmrimc-sim flow); default: simulated for each protocol (cached)")
    v.add_argument("--flow-networks", nargs="+", type=Path, metavar="FILE",
                   help="networks (.json/.npz) for the simulated flow dictionary (default: generated ones)")
    v.add_argument("--flow-spins", type=int, default=DEFAULT_SPINS, metavar="N",
                   help=f"spins per realisation ({DEFAULT_SPINS})")
    v.add_argument("--flow-params", nargs="+", metavar="NAME",
                   help="flow parameters to estimate (default vm vs anb)")
    v.add_argument("--model", choices=["separate", "joint"], default=None,
                   help="joint (default): one posterior of (1 - fV) S_tissue + fV S_flow on every b > 0 "
                        "(core/fitting/joint.py; writes the histousim and spinflowsim maps, fV among the latter, and "
                        "the IVIM maps); sessions without IVIM b-values get the tissue fit alone, and --estimator ml, "
                        "--dictionary-source simulate or --vascular off select separate; separate: tissue fit on "
                        "b >= --vasc-threshold, IVIM and the flow fit of its vascular signal")
    v.add_argument("--t2-tissue-ms", type=float, default=None, metavar="MS",
                   help="--model joint: tissue T2 [ms]; with --t2-blood-ms, fV is the blood volume fraction "
                        "corrected for the T2 difference at each TE (default: none, fV is the signal fraction)")
    v.add_argument("--t2-blood-ms", type=float, default=None, metavar="MS", help="--model joint: blood T2 [ms]")
    v.add_argument("--flow-estimator", choices=["posterior", "posterior-mean", "ml", "fit"], default="posterior-mean",
                   help="posterior-mean (default; best in the leave-one-network-out benchmark) or posterior "
                        "(median): the tissue's posterior estimator with a Gaussian likelihood; ml (alias fit): "
                        "grid search + Levenberg-Marquardt")


def _execution_options(e) -> None:
    e.add_argument("-w", "--work-dir", type=Path, help="Nipype work dir; reruns reuse finished nodes")
    e.add_argument("--nprocs", "--nthreads", "--n-cpus", type=int, default=1,
                   help="processes on this machine (MultiProc); 1: Linear")
    e.add_argument("--plugin", metavar="NAME",
                   help=f"Nipype execution plugin, one of {', '.join(PLUGINS)} (default: Linear, or MultiProc "
                        "with --nprocs > 1); cluster plugins need -w on a shared file system (docs/cluster.md)")
    e.add_argument("--plugin-args", metavar="JSON",
                   help="""the plugin's arguments, a JSON object or file, e.g. '{"sbatch_args": "-p short"}'""")
    e.add_argument("--omp-nthreads", type=int, default=1, help="threads per fitting process")
    e.add_argument("--seed", "--random-seed", type=int, default=0,
                   help="seed of the Monte Carlo simulations a run makes (--dictionary-source simulate, and a flow "
                        "dictionary for the protocol when none is cached: its networks' spins); recorded in the "
                        "sidecars. The fits are deterministic, and the default maps of two seeds differ by far less "
                        "than their posterior SDs (benchmarks/seed_stability.py)")
    e.add_argument("--chunk-size", type=int, default=10000, help="voxels per fitting batch (memory)")
    e.add_argument("--mem", "--mem-gb", dest="mem_gb", type=memory_gb, metavar="MEM",
                   help="memory for the whole run, e.g. 8G or 8000M (a bare number is GB): Nipype schedules "
                        "nodes within it and the fitting batches shrink to fit")
    e.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="fitting device; auto: a CUDA GPU (the [gpu] extra) only for the steps measured faster "
                        "there (the simulators; not the fits yet: docs/benchmarks.md); if CUDA fails, the CPU "
                        "with one warning; gpu: every step with a GPU kernel")
    e.add_argument("--max-failed-fraction", type=float, default=0.05, metavar="F",
                   help="a session whose fit failed in more than this fraction of any model's fitted voxels "
                        "(histousim, ivim, spinflowsim: each counted) is marked failed (0.05)")
    e.add_argument("--allow-incomplete", action="store_true",
                   help="group: exit 0 although some subject/sessions' participant runs failed, were interrupted or "
                        "are incomplete (they are listed in group.html and on the terminal, and left out of the tables)")
    e.add_argument("--allow-mixed-runs", action="store_true",
                   help="group level: pool maps written by different versions or options (refused by default)")
    e.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: Nipype's node messages on the terminal too (they always go to logs/); -vv: debug")


def resolve_model(args) -> str:
    """The model of the run: --model as given (an explicit --model joint with options it cannot take is a
    usage error); without --model, joint unless --estimator ml, --dictionary-source simulate or --vascular
    off asks for the separate branches."""
    conflicts = Config(out_dir="", estimator=args.estimator, dictionary_source=args.dictionary_source,
                       vascular=args.vascular).joint_conflicts()
    if args.model is None:
        return "separate" if conflicts else "joint"
    if args.model == "joint" and conflicts:
        raise InputError("--model joint", exit_code=EX_USAGE, fix=conflicts[0])
    return args.model


def check_arguments(args) -> None:
    """Usage errors that argparse cannot see (exit 64, one line each)."""
    out, raw = args.output_dir.resolve(), args.bids_dir.resolve()
    if out == raw:
        raise InputError("the output folder is the BIDS dataset itself", path=args.output_dir, exit_code=EX_USAGE,
                         fix="write elsewhere, e.g. <bids_dir>/derivatives/dmrimc-bids")
    if out.is_relative_to(raw) and not out.is_relative_to(raw / "derivatives"):
        raise InputError("the output folder is inside the raw BIDS dataset", path=args.output_dir, exit_code=EX_USAGE,
                         fix="write outside it, or under <bids_dir>/derivatives/ (e.g. derivatives/dmrimc-bids)")
    from ..bids.derivatives import check_output_folder
    check_output_folder(args.output_dir)
    if args.work_dir:
        check_output_folder(args.work_dir, "work folder (-w)")
    if not 0 <= args.max_failed_fraction <= 1:
        raise InputError(f"--max-failed-fraction {args.max_failed_fraction:g}", exit_code=EX_USAGE,
                         fix="give a fraction between 0 and 1")
    try:
        reg_norm, reg_weight = int(args.reg[0]), float(args.reg[1])
        if reg_norm not in (1, 2) or reg_weight < 0:
            raise ValueError
    except ValueError:
        raise InputError(f"--reg {' '.join(args.reg)}", exit_code=EX_USAGE, fix="give --reg 1|2 WEIGHT>=0") from None
    for flag, value, least in (("--nprocs", args.nprocs, 1), ("--omp-nthreads", args.omp_nthreads, 1),
                               ("--chunk-size", args.chunk_size, 1),
                               ("--surrogate-neighbours", args.surrogate_neighbours, 2)):
        if value < least:
            raise InputError(f"{flag} {value}", exit_code=EX_USAGE, fix=f"give {flag} >= {least}")
    if model_kind(args.estimator) != "ml":
        defaults = build_parser()
        given = ["--" + d.replace("_", "-") for d in FIT_ONLY_OPTIONS if getattr(args, d) != defaults.get_default(d)]
        if given:
            raise InputError(f"{', '.join(given)}: only for --estimator ml", exit_code=EX_USAGE,
                             fix=f"add --estimator ml, or drop {', '.join(given)}")
    args.model = resolve_model(args)
    given = [flag for flag, v in (("--t2-tissue-ms", args.t2_tissue_ms), ("--t2-blood-ms", args.t2_blood_ms)) if v is not None]
    if given and (args.model != "joint" or len(given) != 2 or min(args.t2_tissue_ms, args.t2_blood_ms) <= 0):
        raise InputError(f"{', '.join(given)}", exit_code=EX_USAGE,
                         fix="give both --t2-tissue-ms and --t2-blood-ms (> 0 ms), with --model joint")
    if not 0 < args.ivim_b_split < args.ivim_b_max:
        raise InputError(f"--ivim-b-split {args.ivim_b_split:g} / --ivim-b-max {args.ivim_b_max:g}",
                         exit_code=EX_USAGE, fix="give 0 < --ivim-b-split < --ivim-b-max (s/mm²)")
    if args.dictionary and args.dictionary_source == "simulate":
        raise InputError("--dictionary and --dictionary-source simulate exclude each other", exit_code=EX_USAGE,
                         fix="drop one of them")


def config_from_args(args) -> Config:
    """The run's Config from the parsed command line: checked (check_arguments), every path absolute and
    every named file present (Config.validate)."""
    check_arguments(args)
    text = lambda v: str(v) if v else ""  # noqa: E731
    cfg = Config(
        out_dir=str(args.output_dir), bids_dir=str(args.bids_dir), analysis_level=args.analysis_level,
        derivatives=[str(d) for d in args.derivatives or []], participant_label=list(args.participant_label or []),
        session_label=list(args.session_label or []), bids_filter_file=text(args.bids_filter_file),
        skip_bids_validation=args.skip_bids_validation, mask=text(args.mask), mask_label=args.mask_label or "",
        noise_map=text(args.noise_map), atlas=args.atlas or "", group_column=args.group_column or "",
        dictionary=text(args.dictionary), params=list(args.params or []), fix=dict(args.fix),
        b0_threshold=args.b0_threshold, b0_pool_series=not args.b0_per_series, vasc_threshold=args.vasc_threshold,
        shell_tolerance=args.shell_tolerance, small_delta_ms=args.small_delta, big_delta_ms=args.big_delta,
        timing=list(args.timing or []), max_failed_fraction=args.max_failed_fraction,
        allow_mixed_runs=args.allow_mixed_runs, allow_incomplete=args.allow_incomplete,
        match_tol_b=args.match_tolerance_b, match_tol_ms=args.match_tolerance_ms, n_averages=args.n_averages,
        reg_norm=int(args.reg[0]), reg_weight=float(args.reg[1]), bounds=dict(args.bounds),
        smoothing=args.surrogate_smoothing, surrogate=args.surrogate, n_neighbours=args.surrogate_neighbours,
        noise_model=args.noise_model, estimator=args.estimator, prior=args.prior, device=args.device,
        point_prior=dict(DEFAULT_POINT_PRIOR if args.point_prior is None else args.point_prior),
        omp_nthreads=args.omp_nthreads,
        chunk_size=args.chunk_size, seed=args.seed, dictionary_source=args.dictionary_source, vascular=args.vascular,
        ivim_b_split=args.ivim_b_split, ivim_b_max=args.ivim_b_max, ivim_estimator=args.ivim_estimator,
        flow_dictionary=text(args.flow_dictionary),
        flow_networks=[str(f) for f in args.flow_networks or []], flow_spins=args.flow_spins,
        flow_params=list(args.flow_params or []), flow_estimator=args.flow_estimator, model=args.model,
        t2_tissue_ms=args.t2_tissue_ms, t2_blood_ms=args.t2_blood_ms,
        work_dir=text(args.work_dir),
        nprocs=args.nprocs, plugin=args.plugin or "", mem_gb=args.mem_gb, verbose=args.verbose,
        command=" ".join(sys.argv))
    from ..workflows.execution import parse_plugin_args
    cfg.plugin_args = parse_plugin_args(args.plugin_args)
    if args.dictionary_source == "simulate":
        _simulation_options(args, cfg)
    return cfg.validate()


def _simulation_options(args, cfg: Config) -> None:
    """The --dictionary-source simulate options; bad values give one error line (exit 64)."""
    from ..core.dictionary_default import SIMULATE_D0, SIMULATE_KAPPA
    from ..core.simulate.histo import default_simulation_substrates, load_substrate

    if args.sim_walkers < 1 or any(d <= 0 for d in args.sim_d0 or []) or any(k < 0 for k in args.sim_kappa or []):
        raise InputError("--sim-walkers must be >= 1, --sim-d0 > 0 and --sim-kappa >= 0", exit_code=EX_USAGE,
                         fix="e.g. --sim-walkers 2000 --sim-d0 0.8 1.5 2.25 3 --sim-kappa 0 20 40")
    if args.substrate_svg:
        if args.substrate_width_um is None and args.substrate_scale is None:
            raise InputError("--substrate-svg needs --substrate-width-um or --substrate-scale", exit_code=EX_USAGE,
                             fix="give the substrate's width in µm (or µm per SVG unit)")
        specs = [{"svg": str(p.resolve()), "width_um": args.substrate_width_um,
                  "scale_um_per_unit": args.substrate_scale} for p in args.substrate_svg]
        for spec in specs:
            load_substrate(spec)  # one clear error now rather than a crash in the graph
    else:
        specs = default_simulation_substrates()
    cfg.sim_substrates, cfg.sim_walkers = specs, args.sim_walkers
    cfg.sim_d0, cfg.sim_kappa = list(args.sim_d0 or SIMULATE_D0), list(args.sim_kappa or SIMULATE_KAPPA)
