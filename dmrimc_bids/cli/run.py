"""`dmrimc-bids bids_dir out_dir participant`: the BIDS App."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network check for updates (offline clusters)

from .. import __version__  # noqa: E402
from ..core.errors import EX_USAGE, InputError  # noqa: E402
from ..workflows.execution import PLUGINS  # noqa: E402

LOG = logging.getLogger("dmrimc-bids")


def _pair(text: str, what: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{what} must look like NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def _fix(text):
    name, value = _pair(text, "--fix")
    try:
        return name, float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fix {text}: {value!r} is not a number") from exc


def _bound(text):
    name, value = _pair(text, "--bounds")
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--bounds {text}: give NAME=LO,HI") from exc
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"--bounds {text}: LO must be below HI")
    return name, (lo, hi)


def _memory_gb(text: str) -> float:
    """'8G', '8000M', '8g', '8' (GB) -> GB."""
    units = {"K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}
    t = text.strip().upper().removesuffix("B")
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mem {text}: give e.g. 8G or 8000M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--mem {text}: must be positive")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, BIDS-Apps usage exit code
        self.print_usage(sys.stderr)
        print(f"dmrimc-bids: error: {message}", file=sys.stderr)
        sys.exit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dmrimc-bids", description="Histology-informed dMRI microstructure maps (Histo-uSim) "
                                                "from a BIDS dataset.")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset (raw)")
    p.add_argument("output_dir", type=Path, help="where the derivatives go")
    p.add_argument("analysis_level", choices=["participant", "group"])
    p.add_argument("--version", action="version", version=f"dmrimc-bids {__version__}")
    g = p.add_argument_group("selecting inputs")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL")
    g.add_argument("--session-label", "--session-id", "--session_label", nargs="+", metavar="LABEL")
    g.add_argument("--bids-filter-file", type=Path, metavar="FILE", help='JSON {"dwi": {entity: value}}')
    g.add_argument("--derivatives", nargs="+", type=Path, metavar="DIR",
                   help="derivative datasets with preprocessed DWI (desc-preproc_dwi), masks, σ maps")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true")
    g.add_argument("--mask", type=Path, metavar="FILE", help="mask on the DWI grid (all subjects)")
    g.add_argument("--mask-label", metavar="LABEL", help="use the derivative desc-LABEL_mask")
    g.add_argument("--noise-map", type=Path, metavar="FILE",
                   help="noise σ map of one acquired volume, signal units (default: derivative desc-sigma)")
    g.add_argument("--atlas", metavar="TPL:ATLAS[:DESC[:RES]]",
                   help="group level: TemplateFlow atlas ROIs for template-space inputs (from TEMPLATEFLOW_HOME)")
    g.add_argument("--group-column", metavar="COLUMN",
                   help="group level: participants.tsv column splitting the cohort distributions")
    g.add_argument("--small-delta", type=float, metavar="MS", help="gradient duration δ [ms] for every volume")
    g.add_argument("--big-delta", type=float, metavar="MS", help="gradient separation Δ [ms] for every volume")
    m = p.add_argument_group("model")
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
    m.add_argument("--fix", nargs="+", type=_fix, default=[], metavar="NAME=VALUE", help="fix at a grid value")
    m.add_argument("--bounds", nargs="+", type=_bound, default=[], metavar="NAME=LO,HI")
    v = p.add_argument_group("vascular branch (segmented IVIM + SpinFlowSim)")
    v.add_argument("--vascular", choices=["auto", "on", "off"], default="auto",
                   help="auto: run it when a TE group has IVIM b-values (default); on: require it; off: skip")
    v.add_argument("--ivim-b-split", type=float, default=200.0, metavar="B",
                   help="tissue ADC from b > B; vascular signal on b <= B [s/mm²] (200)")
    v.add_argument("--ivim-b-max", type=float, default=1000.0, metavar="B",
                   help="largest b of the tissue ADC segment [s/mm²] (1000)")
    v.add_argument("--flow-dictionary", type=Path, metavar="NPZ",
                   help="flow dictionary (dmrimc-sim flow); default: simulated for each protocol (cached)")
    v.add_argument("--flow-networks", nargs="+", type=Path, metavar="FILE",
                   help="networks (.json/.npz) for the simulated flow dictionary (default: generated ones)")
    v.add_argument("--flow-spins", type=int, default=2000, metavar="N", help="spins per realisation (2000)")
    v.add_argument("--flow-params", nargs="+", metavar="NAME",
                   help="flow parameters to estimate (default vm vs anb)")
    v.add_argument("--flow-estimator", choices=["posterior", "fit"], default="posterior",
                   help="posterior: posterior mean over the flow dictionary (default; best in the "
                        "leave-one-network-out benchmark); fit: grid search + Levenberg-Marquardt")
    m.add_argument("--b0-threshold", type=float, default=20.0, metavar="B", help="b <= B is b=0 [s/mm²] (20)")
    m.add_argument("--b0-per-series", action="store_true",
                   help="normalise each series (run) by its own b=0 only; default: pool the b=0 of every series "
                        "with the same TE, after matching each series' global scale (less noise)")
    m.add_argument("--vasc-threshold", type=float, default=250.0, metavar="B",
                   help="drop non-zero b below B from the tissue fit [s/mm²] (250)")
    m.add_argument("--shell-tolerance", type=float, default=20.0, metavar="B", help="b within B is one shell [s/mm²] (20)")
    m.add_argument("--match-tolerance-b", type=float, default=100.0, metavar="B", help="[s/mm²] (100)")
    m.add_argument("--match-tolerance-ms", type=float, default=2.5, metavar="MS", help="δ and Δ [ms] (2.5)")
    m.add_argument("--estimator", choices=["posterior-median", "posterior-mean", "fit"], default="posterior-median",
                   help="posterior-median (default; best on real-histology signals, docs/benchmarks.md) or "
                        "posterior-mean over the dictionary's entries, or fit: grid search + Levenberg-Marquardt "
                        "on a spline surrogate (the published method; the options below apply to it)")
    m.add_argument("--n-averages", type=float, default=1.0, metavar="N",
                   help="the σ map refers to data magnitude-averaged over N volumes (1)")
    m.add_argument("--reg", nargs=2, default=["2", "0"], metavar=("NORM", "WEIGHT"),
                   help="L1/L2 regularisation towards the range centre, e.g. --reg 2 0.0025 (none)")
    m.add_argument("--surrogate-smoothing", type=float, default=1e-3, metavar="LAMBDA")
    m.add_argument("--surrogate", choices=["local", "global"], default="local",
                   help="thin-plate-spline surrogate: local (fast, default) or global (the published reference)")
    m.add_argument("--surrogate-neighbours", type=int, default=32, metavar="K",
                   help="dictionary entries per local surrogate model (32)")
    m.add_argument("--noise-model", choices=["gaussian", "rician"], default="gaussian",
                   help="offset-Gaussian (default, as published) or Rician likelihood; voxels without a "
                        "noise map use least squares")
    e = p.add_argument_group("execution")
    e.add_argument("-w", "--work-dir", type=Path, help="Nipype work dir; reruns reuse finished nodes")
    e.add_argument("--nprocs", "--nthreads", "--n-cpus", type=int, default=1,
                   help="processes on this machine (MultiProc); 1: Linear")
    e.add_argument("--plugin", metavar="NAME",
                   help=f"Nipype execution plugin, one of {', '.join(PLUGINS)} (default: Linear, or MultiProc "
                        "with --nprocs > 1); cluster plugins need -w on a shared file system (docs/cluster.md)")
    e.add_argument("--plugin-args", metavar="JSON",
                   help="""the plugin's arguments, a JSON object or file, e.g. '{"sbatch_args": "-p short"}'""")
    e.add_argument("--omp-nthreads", type=int, default=1, help="threads per fitting process")
    e.add_argument("--seed", "--random-seed", type=int, default=0, help="recorded in sidecars")
    e.add_argument("--chunk-size", type=int, default=10000, help="voxels per fitting batch (memory)")
    e.add_argument("--mem", "--mem-gb", dest="mem_gb", type=_memory_gb, metavar="MEM",
                   help="memory for the whole run, e.g. 8G or 8000M (a bare number is GB): Nipype schedules "
                        "nodes within it and the fitting batches shrink to fit")
    e.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="fitting device; auto: a CUDA GPU when one is present (needs the [gpu] extra)")
    e.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose == 0 else logging.DEBUG, format="%(message)s",
                        stream=sys.stderr)
    try:
        return _run(args)
    except InputError as exc:
        print(f"dmrimc-bids: error: {exc}", file=sys.stderr)
        return exc.exit_code


#: Options of the published fitting method (--estimator fit) only.
FIT_ONLY_OPTIONS = ("reg", "n_averages", "surrogate", "surrogate_smoothing", "surrogate_neighbours", "noise_model")


def _check_estimator_options(args) -> None:
    """A usage error when a fit-only option differs from its default under a posterior estimator."""
    if args.estimator == "fit":
        return
    defaults = build_parser()
    given = ["--" + d.replace("_", "-") for d in FIT_ONLY_OPTIONS if getattr(args, d) != defaults.get_default(d)]
    if given:
        raise InputError(f"{', '.join(given)}: only for --estimator fit", exit_code=EX_USAGE,
                         fix=f"add --estimator fit, or drop {', '.join(given)}")


def _run(args) -> int:
    if args.output_dir.resolve() == args.bids_dir.resolve():
        raise InputError("the output folder is the BIDS dataset itself", path=args.output_dir, exit_code=EX_USAGE,
                         fix="write elsewhere, e.g. <bids_dir>/derivatives/dmrimc-bids")
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
    _check_estimator_options(args)
    run_with = _execution(args)  # an unknown --plugin or bad --plugin-args fails here, before any output
    if args.analysis_level == "group":
        return _run_group(args, run_with)
    if args.device == "gpu":
        from ..core.fitting import gpu
        if not gpu.available():
            raise InputError("--device gpu: no CUDA GPU is visible", exit_code=EX_USAGE,
                             fix="use --device cpu (or auto), or install the [gpu] extra on a machine with a GPU")

    from ..bids.layout import collect_inputs, load_filters
    from ..core.dictionary import Dictionary
    from ..core.simulate.flow.network import read_network
    from ..interfaces.dictionary import load_selected
    from ..workflows.participant import Options, preflight

    opts = Options(out_dir=str(args.output_dir), dictionary=str(args.dictionary or ""), params=args.params or [],
                   fix=dict(args.fix), b0_threshold=args.b0_threshold, b0_pool_series=not args.b0_per_series,
                   vasc_threshold=args.vasc_threshold,
                   shell_tolerance=args.shell_tolerance, small_delta_ms=args.small_delta,
                   big_delta_ms=args.big_delta, match_tol_b=args.match_tolerance_b,
                   match_tol_ms=args.match_tolerance_ms, n_averages=args.n_averages, reg_norm=reg_norm,
                   reg_weight=reg_weight, bounds=dict(args.bounds), smoothing=args.surrogate_smoothing,
                   surrogate=args.surrogate, n_neighbours=args.surrogate_neighbours, noise_model=args.noise_model,
                   device=args.device, estimator=args.estimator,
                   omp_nthreads=args.omp_nthreads, chunk_size=args.chunk_size, seed=args.seed,
                   dictionary_source=args.dictionary_source, vascular=args.vascular,
                   ivim_b_split=args.ivim_b_split, ivim_b_max=args.ivim_b_max,
                   flow_dictionary=str(args.flow_dictionary.resolve()) if args.flow_dictionary else "",
                   flow_networks=[str(f.resolve()) for f in args.flow_networks or []], flow_spins=args.flow_spins,
                   flow_params=args.flow_params or [], flow_estimator=args.flow_estimator)
    if args.mem_gb:
        from ..workflows.participant import chunk_for_memory
        procs = max(1, args.nprocs // max(1, args.omp_nthreads))
        opts.chunk_size = chunk_for_memory(args.mem_gb / procs, args.chunk_size)
        LOG.info("--mem %.3g GB: fitting batches of at most %d voxels", args.mem_gb, opts.chunk_size)
    if not 0 < args.ivim_b_split < args.ivim_b_max:
        raise InputError(f"--ivim-b-split {args.ivim_b_split:g} / --ivim-b-max {args.ivim_b_max:g}",
                         exit_code=EX_USAGE, fix="give 0 < --ivim-b-split < --ivim-b-max (s/mm²)")
    if args.flow_dictionary:
        load_flow = Dictionary.load(args.flow_dictionary)  # fail early on an unreadable flow dictionary
        load_flow.select(opts.flow_params or None)
    for f in opts.flow_networks:
        read_network(f)
    if args.dictionary_source == "simulate":
        _simulation_options(args, opts)
    dictionary = load_selected(opts.dictionary, opts.params, opts.fix)
    for name in opts.bounds:
        if name not in dictionary.names:
            raise InputError(f"--bounds names unknown parameter {name!r}", exit_code=EX_USAGE,
                             fix=f"choose among {', '.join(dictionary.names)}")
    filters = load_filters(args.bids_filter_file) if args.bids_filter_file else None
    items = collect_inputs(args.bids_dir, args.derivatives, args.participant_label, args.session_label, filters,
                           validate=not args.skip_bids_validation, mask_label=args.mask_label,
                           mask_file=args.mask, sigma_file=args.noise_map)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"_{os.getpid()}"
    ok, failed, warnings, vascular = [], [], {}, False
    for item in items:
        try:
            summary = preflight(item, opts, dictionary)
        except InputError as exc:
            print(f"dmrimc-bids: error: {item.label}: {exc}", file=sys.stderr)
            failed.append((item, exc.exit_code, "preflight", str(exc)))
            continue
        for w in summary["warnings"]:
            LOG.warning("%s: warning: %s", item.label, w)
        LOG.info("%s: %d volumes -> %d shells, %d fitted measurements", item.label, summary["volumes"],
                 summary["shells"], summary["fitted"])
        warnings[item.label] = summary["warnings"]
        vascular |= bool(summary["vascular"])
        ok.append(item)
    submitted = False
    if ok:
        _remove_stale_temps(args.output_dir)
        result = _execute(ok, opts, args, run_with, warnings)
        submitted = result is None
        failed += result or []
    from ..bids.derivatives import write_dataset_description, write_status
    if len(failed) < len(items):
        from ..reports.subject import write_citation
        write_dataset_description(args.output_dir, args.bids_dir, opts.seed, " ".join(sys.argv))
        write_citation(args.output_dir, ["histousim"] + (["ivim", "spinflowsim"] if vascular else []),
                       opts.report_options())
    if submitted:
        print(f"dmrimc-bids: submitted {len(ok)} subject/session(s) to {run_with.plugin} "
              f"(work dir {args.work_dir}); "
              "maps and reports appear as the jobs finish. To collect the status, rerun the same command with "
              "--plugin Linear once they have: finished nodes are reused", file=sys.stderr)
        return 1 if failed else 0
    bad = {id(f[0]): f for f in failed}
    rows = [{"participant_id": f"sub-{i.subject}", "session_id": f"ses-{i.session}" if i.session else "n/a",
             "status": "failed" if id(i) in bad else "finished",
             "exit_code": bad[id(i)][1] if id(i) in bad else 0,
             "stage": bad[id(i)][2] if id(i) in bad else "report",
             "message": bad[id(i)][3] if id(i) in bad else ""} for i in items]
    status = "stderr"
    if ok:  # a run that started nothing (every subject refused at preflight) leaves no file behind
        status = write_status(args.output_dir, run_id, rows)
        LOG.info("status of each subject/session: %s", status)
    if failed:
        print(f"dmrimc-bids: {len(failed)} of {len(items)} subject/session(s) failed: "
              + ", ".join(f[0].label for f in failed) + f" (see {status})", file=sys.stderr)
        return failed[0][1] if len(failed) == len(items) else 1
    LOG.info("dmrimc-bids: finished %d subject/session(s) -> %s", len(items), args.output_dir)
    return 0


def _run_group(args, run_with) -> int:
    """Group level: ROI statistics of every subject/session's maps -> group_<model>.tsv + group.html."""
    from ..bids.derivatives import find_sessions
    from ..bids.layout import _strip
    from ..reports.group import read_participants, read_status
    from ..workflows.group import atlas_spec, check_group_inputs, find_rois, group_failures, init_group_wf

    check_group_inputs(args.output_dir)
    atlas = atlas_spec(args.atlas) if args.atlas else None
    wanted = set(_strip(args.participant_label, "sub-"))
    sessions_wanted = set(_strip(args.session_label, "ses-"))
    pairs = [(s, ses) for s, ses in find_sessions(args.output_dir)
             if (not wanted or s in wanted) and (not sessions_wanted or ses in sessions_wanted)]
    participants = read_participants(args.bids_dir)
    status = read_status(args.output_dir)
    expected = sorted(wanted or set(participants) or {p.name[4:] for p in args.bids_dir.glob("sub-*") if p.is_dir()})
    failures = group_failures(status, set(pairs), expected)
    entries = []
    for sub, ses in pairs:
        try:
            specs = find_rois(args.bids_dir, args.derivatives, sub, ses)
        except InputError as exc:
            label = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            print(f"dmrimc-bids: error: {label}: {exc}", file=sys.stderr)
            failures.append({"label": label, "exit_code": exc.exit_code, "stage": "group", "message": str(exc),
                             "log": ""})
            continue
        entries.append((sub, ses, specs + ([atlas] if atlas else [])))
    if not entries:
        raise InputError("no participant-level maps to aggregate", path=args.output_dir, exit_code=66,
                         fix="run the participant level first (and check --participant-label/--session-label)")
    if args.group_column and participants and not any(args.group_column in p for p in participants.values()):
        raise InputError(f"--group-column {args.group_column}: not a participants.tsv column",
                         path=args.bids_dir / "participants.tsv", exit_code=EX_USAGE,
                         fix=f"choose among {', '.join(sorted({k for p in participants.values() for k in p}))}")
    from ..workflows import execution
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dmrimc_group_")).resolve()
    execution.configure(run_with, work)
    _remove_stale_temps(args.output_dir)
    wf = init_group_wf(entries, args.output_dir, work, failures, participants, args.group_column, args.seed)
    graph = execution.run(wf, run_with)
    if graph is None:
        print(f"dmrimc-bids: submitted the group graph to {run_with.plugin} (work dir {work}); group.html appears "
              "when its jobs finish", file=sys.stderr)
        return 0
    report = args.output_dir / "group.html"
    res = next(n for n in graph.nodes() if n.name == "group_report").result
    all_failures = res.outputs.failures
    for f in all_failures:
        print(f"dmrimc-bids: {f['label']}: {f['stage']}: {f['message']}", file=sys.stderr)
    LOG.info("dmrimc-bids: group tables %s and report %s (%d aggregated, %d failed or missing)",
             ", ".join(res.outputs.tables.values()), report, len(entries), len(all_failures))
    return 1 if all_failures else 0


def _remove_stale_temps(out_dir) -> None:
    from ..bids.derivatives import remove_stale_temps
    removed = remove_stale_temps(out_dir)
    if removed:
        LOG.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out_dir)


def _execution(args):
    """The Nipype plugin of --plugin/--plugin-args/--nprocs/--mem (workflows/execution.py)."""
    from ..workflows import execution
    return execution.choose(args.plugin, execution.parse_plugin_args(args.plugin_args), args.nprocs,
                            args.mem_gb, args.work_dir)


def _simulation_options(args, opts) -> None:
    """Fill the --dictionary-source simulate options; bad values give one error line (exit 64)."""
    from ..core.dictionary_default import SIMULATE_D0, SIMULATE_KAPPA
    from ..core.simulate.histo import default_simulation_substrates, load_substrate

    if args.dictionary:
        raise InputError("--dictionary and --dictionary-source simulate exclude each other", exit_code=EX_USAGE,
                         fix="drop one of them")
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
    opts.sim_substrates = specs
    opts.sim_walkers = args.sim_walkers
    opts.sim_d0 = list(args.sim_d0 or SIMULATE_D0)
    opts.sim_kappa = list(args.sim_kappa or SIMULATE_KAPPA)


def _execute(items, opts, args, run_with, warnings=None) -> list:
    """Run the graph; return [(item, exit code, stage, message)] of the subjects whose outputs are missing,
    or None when a graph plugin only submitted it."""
    from nipype import logging as nlogging

    from ..bids.derivatives import map_path
    from ..workflows import execution
    from ..workflows.participant import init_participant_wf

    tmp_work = None
    work = args.work_dir
    if work is None:
        tmp_work = Path(tempfile.mkdtemp(prefix="dmrimc_work_"))
        work = tmp_work
    work = Path(work).resolve()
    crash_dir = work / "crash"
    execution.configure(run_with, work)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogging.getLogger(name).setLevel(logging.INFO if args.verbose > 1 else logging.WARNING)
    if not opts.sim_cache_dir:
        opts.sim_cache_dir = str(work / "dictionary_cache")
    wf = init_participant_wf(items, opts, work, warnings=warnings)
    before = set(crash_dir.glob("crash-*.txt")) if crash_dir.is_dir() else set()
    t0, started = time.perf_counter(), time.time() - 1.0  # 1 s of slack for coarse file-system clocks
    try:
        if execution.run(wf, run_with) is None:
            return None
    except RuntimeError as exc:  # some node failed; we find out which subjects below
        LOG.debug("workflow: %s", exc)
    LOG.info("workflow finished in %.1f s", time.perf_counter() - t0)
    crashes = sorted(set(crash_dir.glob("crash-*.txt")) - before) if crash_dir.is_dir() else []
    failed, broken = [], {}
    for item in items:
        reason = _crash_reason(crashes, item)
        if reason or not map_path(opts.out_dir, item.subject, item.session, "histousim", "exitcode").is_file():
            broken[id(item)] = reason or "no maps were written"
    _partial_reports(items, broken, opts, work / wf.name)
    for item in items:
        report = Path(opts.out_dir) / f"sub-{item.subject}.html"
        if id(item) in broken:
            reason = broken[id(item)]
            print(f"dmrimc-bids: error: {item.label}: processing failed: {reason}", file=sys.stderr)
            failed.append((item, 1, "workflow", reason))
        elif not report.is_file() or report.stat().st_mtime < started:  # an old report is not this run's
            reason = _crash_reason(crashes, item, f"subject_report_{item.subject}")
            print(f"dmrimc-bids: error: {item.label}: the report failed{': ' + reason if reason else ''}",
                  file=sys.stderr)
            failed.append((item, 1, "report", reason or "no report was written"))
    if tmp_work is not None and not failed:  # keep the crash files of a failed run
        shutil.rmtree(tmp_work, ignore_errors=True)
    return failed


def _partial_reports(items, broken: dict, opts, wf_dir: Path) -> None:
    """A subject with a failed session gets its report all the same (the graph skips the report node
    downstream of a failure): the finished sessions' fragments plus one section per failed session."""
    import json

    from ..reports.subject import render_subject
    from ..workflows.participant import subject_wf_name
    by_subject: dict = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    for subject, its in by_subject.items():
        if not any(id(i) in broken for i in its) or all(id(i) in broken for i in its):
            continue
        frags = []
        for i in its:
            frag = wf_dir / subject_wf_name(i) / "session_report" / "fragment.json"
            if id(i) in broken or not frag.is_file():
                frags.append({"session": i.session or "", "title": f"ses-{i.session}" if i.session else i.label,
                              "n_volumes": 0, "n_mask": 0, "shells": [], "models": [],
                              "warnings": [f"processing failed: {broken.get(id(i), 'no report fragment')}"]})
            else:
                frags.append(json.loads(frag.read_text()))
        render_subject(subject, frags, Path(opts.out_dir) / f"sub-{subject}.html", opts.report_options())


def _crash_reason(crash_files, item, tag=None) -> str:
    from ..workflows.participant import subject_wf_name
    tag = tag or subject_wf_name(item)
    for f in crash_files:
        text = f.read_text(errors="replace")
        if tag in text or tag in f.name:
            for line in reversed(text.splitlines()):
                if "InputError" in line or "Error" in line:
                    return line.split(":", 1)[-1].strip() + f" (crash file {f})"
            return f"see {f}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
