"""Every option of the BIDS App, declared once: its name, section, type, default, help, the model keyword it
feeds and whether it changes the maps. The command line (cli/parser.py), the Config and its sections
(workflows/config.py), the fitting interface's traits (interfaces/fitting.py), the sidecars' RunOptions
(Config.result_options) and the options table of docs/usage.md are generated from OPTIONS.

Pure data and the helpers that read it: imports only core constants (no nipype, no argparse at import)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .core.dictionary_default import SIMULATE_D0, SIMULATE_KAPPA
from .core.fitting.ivim import B_MAX, B_SPLIT, IVIM_ESTIMATORS
from .core.fitting.joint import TISSUE_B_MIN
from .core.preprocess import DEFAULT_SHELL_TOLERANCE
from .core.protocol import B0_THRESHOLD
from .core.simulate.flow.dictionary import DEFAULT_SPINS

#: Config sections, in the order of the command line's help and of logs/config-<run>.json.
SECTIONS = {
    "run": "the run itself (positional arguments and provenance)",
    "inputs": "selecting inputs",
    "preprocessing": "preprocessing (b=0 normalisation, shells, vascular-threshold filter)",
    "tissue": "tissue model (Histo-μSim)",
    "vascular": "vascular branch (IVIM and SpinFlowSim)",
    "execution": "execution",
}

#: The model roles an option can feed: the tissue estimators by family, the joint fit, IVIM, and the flow fit
#: by family (core.fitting.registry.model_kind).
ROLES = ("posterior", "ml", "joint", "ivim", "flow-posterior", "flow-ml")

#: Model keywords the pipeline sets to a constant for a role: S_V is a difference of magnitudes (no noise
#: floor), and the published flow fit uses the global surrogate.
FIXED_MODEL_OPTIONS = {"flow-posterior": {"noise": "gaussian"}, "flow-ml": {"surrogate": "global"}}

#: The prior of each tissue parameter's point estimate and SD (posterior.PosteriorModel point_prior; the others
#: follow --prior), chosen on the leave-one-out folds of the published real-histology substrates 1-12 at SNR 50
#: and 20 (benchmarks/point_prior_choice.py, docs/benchmarks.md block point-prior-choice): the design prior
#: lowers the median errors of fin, vCS and kappa at both SNRs; D0in and D0ex keep the entries' prior.
DEFAULT_POINT_PRIOR: dict = {"fin": "design", "vCS_cyl": "design", "kappa": "design"}


@dataclass(frozen=True)
class Option:
    """One option. ``flags`` empty: set by the pipeline, not on the command line (still in the Config).
    ``type`` is argparse's (a string names a value type of cli/argtypes.py); ``parse`` converts the command
    line's value to the Config's (a string names one the command line resolves); ``feeds``
    {role: model keyword} says which models take it and under which name; ``trait`` the interface trait
    kind where the default's type does not say it; ``minimum``/``maximum`` usage-error bounds; ``ml_only``: a
    usage error unless --estimator ml."""
    name: str
    section: str
    default: Any
    help: str = ""
    flags: tuple = ()
    type: Callable | str | None = None
    choices: tuple | None = None
    nargs: Any = None
    metavar: Any = None
    action: str | None = None
    parse: Callable | str | None = None
    feeds: dict = field(default_factory=dict)
    changes_maps: bool = False
    trait: str = ""
    minimum: float | None = None
    maximum: float | None = None
    ml_only: bool = False

    @property
    def flag(self) -> str:
        """The option's main flag (the positional's name)."""
        return self.flags[0] if self.flags else ""

    def fresh_default(self):
        """A copy of the default (lists and dicts are never shared between Configs)."""
        return copy.deepcopy(self.default)


def _text(value) -> str:
    return str(value) if value else ""


def _texts(values) -> list:
    return [str(v) for v in values or []]


def _regularisation(values) -> list:
    """--reg NORM WEIGHT -> [norm (1 or 2), weight >= 0]; ValueError otherwise."""
    norm, weight = int(values[0]), float(values[1])
    if norm not in (1, 2) or weight < 0:
        raise ValueError("give --reg 1|2 WEIGHT>=0")
    return [norm, weight]


_MAPS = True
_TISSUE = ("posterior", "ml", "joint")
_FITS = ("posterior", "ml", "joint", "flow-posterior", "flow-ml")

OPTIONS: tuple[Option, ...] = (
    # ---- run: the positional arguments and what the run records -------------------------------------------
    Option("bids_dir", "run", "", "BIDS dataset (raw)", flags=("bids_dir",), type=Path, parse=_text),
    Option("out_dir", "run", "", "where the derivatives go", flags=("output_dir",), type=Path, parse=_text),
    Option("analysis_level", "run", "participant",
           "participant: maps and a report per subject/session; group: tables and a report over them",
           flags=("analysis_level",), choices=("participant", "group")),
    Option("command", "run", "", "the command line that started the run (recorded)"),
    Option("dataset_links", "run", {}, "the input datasets' names and URIs (recorded in the sidecars)"),
    # ---- inputs -------------------------------------------------------------------------------------------
    Option("participant_label", "inputs", [], "subjects to process, with or without 'sub-' (default: every subject)",
           flags=("--participant-label", "--participant_label"), nargs="+", metavar="LABEL", parse=list),
    Option("session_label", "inputs", [], "sessions to process, with or without 'ses-' (default: every session)",
           flags=("--session-label", "--session-id", "--session_label"), nargs="+", metavar="LABEL", parse=list),
    Option("bids_filter_file", "inputs", "", 'JSON {"dwi": {entity: value}}', flags=("--bids-filter-file",),
           type=Path, metavar="FILE", parse=_text),
    Option("derivatives", "inputs", [], "derivative datasets with preprocessed DWI (desc-preproc_dwi), masks, σ maps",
           flags=("--derivatives",), nargs="+", type=Path, metavar="DIR", parse=_texts),
    Option("skip_bids_validation", "inputs", False,
           "do not check that bids_dir is a BIDS dataset (dataset_description.json, layout)",
           flags=("--skip-bids-validation", "--skip_bids_validation"), action="store_true"),
    Option("mask", "inputs", "", "mask on the DWI grid (all subjects)", flags=("--mask",), type=Path, metavar="FILE",
           parse=_text),
    Option("mask_label", "inputs", "", "use the desc-LABEL_mask of the --derivatives folders (default: the only one, "
           "else tumour > tumor > lesion > roi > brain; none: built from the b=0 intensity)", flags=("--mask-label",),
           metavar="LABEL"),
    Option("noise_map", "inputs", "", "noise σ map of one acquired volume, signal units (default: derivative "
           "desc-sigma)", flags=("--noise-map",), type=Path, metavar="FILE", parse=_text),
    Option("atlas", "inputs", "", "group level: TemplateFlow atlas ROIs for template-space inputs (from "
           "TEMPLATEFLOW_HOME)", flags=("--atlas",), metavar="TPL:ATLAS[:DESC[:RES]]"),
    Option("group_column", "inputs", "", "group level: participants.tsv column splitting the cohort distributions",
           flags=("--group-column",), metavar="COLUMN"),
    Option("small_delta_ms", "inputs", None, "gradient duration δ [ms] for every volume", flags=("--small-delta",),
           type=float, metavar="MS", changes_maps=_MAPS),
    Option("big_delta_ms", "inputs", None, "gradient separation Δ [ms] for every volume", flags=("--big-delta",),
           type=float, metavar="MS", changes_maps=_MAPS),
    Option("timing", "inputs", [], "per-run gradient timing [ms], e.g. --timing run-1:10,25 run-2:15,45 (RUN: an "
           "entity or the file name of the DWI), or a TSV with columns run, small_delta, big_delta; wins over the "
           "sidecars and --small-delta/--big-delta", flags=("--timing",), nargs="+", metavar="RUN:δ,Δ|TSV",
           parse=list, changes_maps=_MAPS),
    # ---- preprocessing ------------------------------------------------------------------------------------
    Option("b0_threshold", "preprocessing", B0_THRESHOLD,
           "b <= B is b=0 [s/mm²] (2: b ≈ 0 as acquired; low b such as 5-20 are IVIM data)",
           flags=("--b0-threshold",), type=float, metavar="B", feeds={"ivim": "b0_threshold"}, changes_maps=_MAPS),
    Option("b0_per_series", "preprocessing", False, "normalise each series (run) by its own b=0 only; default: pool "
           "the b=0 of every series with the same TE, after matching each series' global scale (less noise)",
           flags=("--b0-per-series",), action="store_true", changes_maps=_MAPS),
    Option("vasc_threshold", "preprocessing", TISSUE_B_MIN,
           "--model separate: drop non-zero b below B from the tissue fit; --model joint: the smallest b of the "
           "tissue posterior after the vascular compartment is removed [s/mm²]", flags=("--vasc-threshold",),
           type=float, metavar="B", feeds={"joint": "tissue_b_min"}, changes_maps=_MAPS),
    Option("shell_tolerance", "preprocessing", DEFAULT_SHELL_TOLERANCE, "b within B is one shell [s/mm²]",
           flags=("--shell-tolerance",), type=float, metavar="B", changes_maps=_MAPS),
    # ---- tissue model -------------------------------------------------------------------------------------
    Option("dictionary", "tissue", "", "dictionary (default: the embedded Monte Carlo one, see dmrimc-sim "
           "default-dictionary)", flags=("--dictionary",), type=Path, metavar="NPZ", parse=_text, changes_maps=_MAPS),
    Option("dictionary_source", "tissue", "match", "match: the dictionary's measurements nearest the protocol "
           "(default); simulate: run the Monte Carlo simulator for each subject's own protocol (cached in the work "
           "dir)", flags=("--dictionary-source",), choices=("match", "simulate"), changes_maps=_MAPS),
    Option("sim_substrates", "tissue", [], "--dictionary-source simulate: the substrates simulated (from "
           "--substrate-svg with --substrate-width-um or --substrate-scale; default: the generated ones)",
           changes_maps=_MAPS),
    Option("sim_walkers", "tissue", 2000, "walkers per simulated entry", flags=("--sim-walkers",), type=int,
           metavar="N", minimum=1, changes_maps=_MAPS),
    Option("sim_d0", "tissue", list(SIMULATE_D0), "D0in and D0ex values [µm²/ms] of a simulated dictionary",
           flags=("--sim-d0",), nargs="+", type=float, metavar="D", parse=list, changes_maps=_MAPS),
    Option("sim_kappa", "tissue", list(SIMULATE_KAPPA), "permeabilities [µm/s] of a simulated dictionary",
           flags=("--sim-kappa",), nargs="+", type=float, metavar="K", parse=list, changes_maps=_MAPS),
    Option("params", "tissue", [], "parameters to estimate (D0in, D0ex, kappa added; default: every one)",
           flags=("--params",), nargs="+", metavar="NAME", parse=list, changes_maps=_MAPS),
    Option("fix", "tissue", {}, "fix at a grid value", flags=("--fix",), nargs="+", type="fix",
           metavar="NAME=VALUE", parse=dict, changes_maps=_MAPS),
    Option("bounds", "tissue", {}, "keep only dictionary entries with NAME in [LO, HI] (units of the maps), e.g. "
           "kappa=0,30", flags=("--bounds",), nargs="+", type="bound", metavar="NAME=LO,HI",
           parse=lambda v: {k: list(b) for k, b in dict(v).items()}, feeds={r: "bounds" for r in _TISSUE},
           trait="bounds", changes_maps=_MAPS),
    Option("match_tol_b", "tissue", 100.0, "largest b difference [s/mm²] between a measurement and its dictionary "
           "column", flags=("--match-tolerance-b",), type=float, metavar="B", changes_maps=_MAPS),
    Option("match_tol_ms", "tissue", 2.5, "largest δ and Δ difference [ms] between a measurement and its dictionary "
           "column", flags=("--match-tolerance-ms",), type=float, metavar="MS", changes_maps=_MAPS),
    Option("estimator", "tissue", "posterior", "posterior (default): posterior median with calibrated 95 % intervals "
           "and identifiability maps (docs/benchmarks.md); posterior-mean: its mean; ml: maximum likelihood by grid "
           "search + Levenberg-Marquardt on a spline surrogate (the published method; the ml options apply to it). "
           "posterior-median and fit are the former names of posterior and ml", flags=("--estimator",),
           choices=("posterior", "posterior-mean", "ml", "posterior-median", "fit"), changes_maps=_MAPS),
    Option("prior", "tissue", "entries", "prior of the posterior estimators' tissue fit: entries (default): flat over "
           "the dictionary's entries; design: flat over its design axes (D0in, D0ex, kappa), each entry weighted to "
           "even out the dictionary's sampling (docs/benchmarks.md, 'Prior')", flags=("--prior",),
           choices=("entries", "design"), feeds={"posterior": "prior", "joint": "prior"}, changes_maps=_MAPS),
    Option("point_prior", "tissue", dict(DEFAULT_POINT_PRIOR), "the prior of one parameter's estimate and SD, e.g. "
           "kappa=entries (the parameters not named follow --prior)", flags=("--point-prior",), nargs="+",
           type="point_prior", metavar="NAME=PRIOR", parse=dict,
           feeds={"posterior": "point_prior", "joint": "point_prior"}, trait="point_prior", changes_maps=_MAPS),
    Option("n_averages", "tissue", 1.0, "the σ map refers to data magnitude-averaged over N volumes",
           flags=("--n-averages",), type=float, metavar="N", feeds={r: "n_averages" for r in _TISSUE + ("flow-ml",)},
           changes_maps=_MAPS),
    Option("regularisation", "tissue", [2, 0.0], "--estimator ml: L1/L2 regularisation towards the range centre, "
           "e.g. --reg 2 0.0025 (default: none)", flags=("--reg",), nargs=2, metavar=("NORM", "WEIGHT"),
           parse=_regularisation, feeds={"ml": "regularisation"}, trait="regularisation", ml_only=True,
           changes_maps=_MAPS),
    Option("smoothing", "tissue", 1e-3, "--estimator ml: smoothing of the thin-plate-spline surrogate",
           flags=("--surrogate-smoothing",), type=float, metavar="LAMBDA", feeds={"ml": "smoothing",
                                                                                 "flow-ml": "smoothing"},
           ml_only=True, changes_maps=_MAPS),
    Option("surrogate", "tissue", "local", "--estimator ml: thin-plate-spline surrogate, local (fast) or global (the "
           "published reference)", flags=("--surrogate",), choices=("local", "global"), feeds={"ml": "surrogate"},
           ml_only=True, changes_maps=_MAPS),
    Option("n_neighbours", "tissue", 32, "--estimator ml: dictionary entries per local surrogate model",
           flags=("--surrogate-neighbours",), type=int, metavar="K", minimum=2, feeds={"ml": "n_neighbours"},
           ml_only=True, changes_maps=_MAPS),
    Option("noise_model", "tissue", "offset-gaussian", "--estimator ml: offset-Gaussian (as published) or Rician "
           "likelihood; voxels without a noise map use least squares", flags=("--noise-model",),
           choices=("offset-gaussian", "rician"), feeds={"ml": "noise", "flow-ml": "noise"}, ml_only=True,
           changes_maps=_MAPS),
    # ---- vascular branch ----------------------------------------------------------------------------------
    Option("vascular", "vascular", "auto", "auto: run it when a TE group has IVIM b-values (default); on: require "
           "it; off: skip", flags=("--vascular",), choices=("auto", "on", "off"), changes_maps=_MAPS),
    Option("ivim_estimator", "vascular", "bayes", "bayes (default; best in benchmarks/ivim_peers.py): posterior of "
           "fV, D, D* with SDs, 95 % intervals and contraction; segmented: the OSIPI segmented fit (D from b >= the "
           "split)", flags=("--ivim-estimator",), choices=IVIM_ESTIMATORS, feeds={"ivim": "method"},
           changes_maps=_MAPS),
    Option("ivim_b_split", "vascular", B_SPLIT, "segmented IVIM: D from b >= the acquired b nearest B; vascular "
           "signal on b <= it [s/mm²]", flags=("--ivim-b-split",), type=float, metavar="B",
           feeds={"ivim": "b_split"}, changes_maps=_MAPS),
    Option("ivim_b_max", "vascular", B_MAX, "largest b of the IVIM fit [s/mm²]", flags=("--ivim-b-max",),
           type=float, metavar="B", feeds={"ivim": "b_max"}, changes_maps=_MAPS),
    Option("flow_dictionary", "vascular", "", "flow dictionary (dmrimc-sim flow); default: simulated for each "
           "protocol (cached)", flags=("--flow-dictionary",), type=Path, metavar="NPZ", parse=_text,
           changes_maps=_MAPS),
    Option("flow_networks", "vascular", [], "networks (.json/.npz) for the simulated flow dictionary (default: "
           "generated ones)", flags=("--flow-networks",), nargs="+", type=Path, metavar="FILE", parse=_texts,
           changes_maps=_MAPS),
    Option("flow_spins", "vascular", DEFAULT_SPINS, "spins per realisation of a simulated flow dictionary",
           flags=("--flow-spins",), type=int, metavar="N", minimum=1, changes_maps=_MAPS),
    Option("flow_params", "vascular", [], "flow parameters to estimate (default vm vs anb)", flags=("--flow-params",),
           nargs="+", metavar="NAME", parse=list, changes_maps=_MAPS),
    Option("flow_match_tol_b", "vascular", 5.0, "largest b difference [s/mm²] between a low-b measurement and its "
           "flow dictionary column", changes_maps=_MAPS),
    Option("flow_estimator", "vascular", "posterior-mean", "posterior-mean (default; best in the "
           "leave-one-network-out benchmark) or posterior (median): the tissue's posterior estimator with a "
           "Gaussian likelihood; ml (alias fit): grid search + Levenberg-Marquardt", flags=("--flow-estimator",),
           choices=("posterior", "posterior-mean", "ml", "fit"), changes_maps=_MAPS),
    Option("model", "vascular", "joint", "joint (default): one posterior of (1 - fV) S_tissue + fV S_flow on every "
           "b > 0 (core/fitting/joint.py; writes the histousim and spinflowsim maps, fV among the latter, and the "
           "IVIM maps); sessions without IVIM b-values get the tissue fit alone, and --estimator ml, "
           "--dictionary-source simulate or --vascular off select separate; separate: tissue fit on b >= "
           "--vasc-threshold, IVIM and the flow fit of its vascular signal", flags=("--model",),
           choices=("separate", "joint"), changes_maps=_MAPS),
    Option("t2_tissue_ms", "vascular", None, "--model joint: tissue T2 [ms]; with --t2-blood-ms, fV is the blood "
           "volume fraction corrected for the T2 difference at each TE (default: none, fV is the signal fraction)",
           flags=("--t2-tissue-ms",), type=float, metavar="MS", feeds={"joint": "t2_tissue_ms"}, changes_maps=_MAPS),
    Option("t2_blood_ms", "vascular", None, "--model joint: blood T2 [ms]", flags=("--t2-blood-ms",), type=float,
           metavar="MS", feeds={"joint": "t2_blood_ms"}, changes_maps=_MAPS),
    # ---- execution ----------------------------------------------------------------------------------------
    Option("work_dir", "execution", "", "Nipype work dir; reruns reuse finished nodes", flags=("-w", "--work-dir"),
           type=Path, parse=_text),
    Option("nprocs", "execution", 1, "processes on this machine (MultiProc); 1: Linear",
           flags=("--nprocs", "--nthreads", "--n-cpus"), type=int, minimum=1),
    Option("plugin", "execution", "", "Nipype execution plugin: Linear, MultiProc or a cluster one (SLURM, "
           "SGE, ...: docs/cluster.md lists them; default: Linear, or MultiProc with --nprocs > 1); cluster plugins "
           "need -w on a shared file system", flags=("--plugin",), metavar="NAME"),
    Option("plugin_args", "execution", {}, """the plugin's arguments, a JSON object or file, e.g. '{"sbatch_args": \
"-p short"}'""", flags=("--plugin-args",), metavar="JSON", parse="plugin_args"),
    Option("omp_nthreads", "execution", 1, "threads per fitting process", flags=("--omp-nthreads",), type=int,
           minimum=1),
    Option("seed", "execution", 0, "seed of the Monte Carlo simulations a run makes (--dictionary-source simulate, "
           "and a flow dictionary for the protocol when none is cached: its networks' spins); recorded in the "
           "sidecars. The fits are deterministic, and the default maps of two seeds differ by far less than their "
           "posterior SDs (benchmarks/seed_stability.py)", flags=("--seed", "--random-seed"), type=int,
           changes_maps=_MAPS),
    Option("chunk_size", "execution", 10000, "voxels per fitting batch (memory)", flags=("--chunk-size",), type=int,
           minimum=1, feeds={r: "chunk_size" for r in _FITS}),
    Option("mem_gb", "execution", None, "memory for the whole run, e.g. 8G or 8000M (a bare number is GB): Nipype "
           "schedules nodes within it and the fitting batches shrink to fit", flags=("--mem", "--mem-gb"),
           type="memory_gb", metavar="MEM"),
    Option("device", "execution", "auto", "fitting device; auto: a CUDA GPU (the [gpu] extra) only for the steps "
           "measured faster there (the simulators; not the fits yet: docs/benchmarks.md); if CUDA fails, the CPU "
           "with one warning; gpu: every step with a GPU kernel", flags=("--device",), choices=("auto", "cpu", "gpu"),
           feeds={r: "device" for r in _FITS}),
    Option("max_failed_fraction", "execution", 0.05, "a session whose fit failed in more than this fraction of any "
           "model's fitted voxels (histousim, ivim, spinflowsim: each counted) is marked failed",
           flags=("--max-failed-fraction",), type=float, metavar="F", minimum=0, maximum=1),
    Option("allow_incomplete", "execution", False, "group: exit 0 although some subject/sessions' participant runs "
           "failed, were interrupted or are incomplete (they are listed in group.html and on the terminal, and left "
           "out of the tables)", flags=("--allow-incomplete",), action="store_true"),
    Option("allow_mixed_runs", "execution", False, "group level: pool maps written by different versions or options "
           "(refused by default)", flags=("--allow-mixed-runs",), action="store_true"),
    Option("verbose", "execution", 0, "-v: Nipype's node messages on the terminal too (they always go to logs/); "
           "-vv: debug", flags=("-v", "--verbose"), action="count"),
    Option("sim_cache_dir", "execution", "", "where simulated dictionaries are cached (default: <work dir>/"
           "dictionary_cache)"),
)

BY_NAME = {o.name: o for o in OPTIONS}
assert len(BY_NAME) == len(OPTIONS), "an option is declared twice"
assert all(o.section in SECTIONS for o in OPTIONS)
assert all(role in ROLES for o in OPTIONS for role in o.feeds)


def section_of(name: str) -> str:
    """The Config section of option ``name`` (KeyError for an unknown one)."""
    return BY_NAME[name].section


def model_keywords(role: str) -> dict:
    """{model keyword: option name} of the options feeding ``role`` (the fixed ones not included)."""
    return {o.feeds[role]: o.name for o in OPTIONS if role in o.feeds}


def result_names() -> tuple:
    """The options that change the maps (two runs differing in one cannot be pooled by the group level)."""
    return tuple(o.name for o in OPTIONS if o.changes_maps)


def default_text(option: Option) -> str:
    """The default as the command line is written ('' when there is none to show)."""
    value = option.default
    if value in (None, "", [], {}, False) or option.action == "count" or not option.flag.startswith("-"):
        return ""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(option: Option) -> str:
    """The help of ``option`` with its default, unless the help already says which it is."""
    shown = default_text(option)
    if not shown or "default" in option.help:
        return option.help
    return f"{option.help} (default: {shown})"


def markdown_table() -> str:
    """The options table of docs/usage.md (generated: python -m dmrimc_bids.options docs/usage.md)."""
    lines = []
    for section, title in SECTIONS.items():
        rows = [o for o in OPTIONS if o.section == section and (o.flag.startswith("-") or
                                                               (not o.flags and section != "run"))]
        if not rows:
            continue
        lines += [f"**{title[0].upper() + title[1:]}**", "", "| option | default | meaning | changes the maps | "
                  "feeds |", "|---|---|---|---|---|"]
        for o in rows:
            flags = ", ".join(f"`{f}`" for f in o.flags) or f"`{o.name}` (no flag: set by the pipeline)"
            meaning = o.help.replace("|", "\\|")
            feeds = ", ".join(f"{role}: `{kw}`" for role, kw in o.feeds.items())
            default = default_text(o).replace("|", "\\|")
            lines.append(f"| {flags} | {f'`{default}`' if default else ''} | {meaning} | "
                         f"{'yes' if o.changes_maps else ''} | {feeds} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


DOCS_START, DOCS_END = "<!-- options table: generated by python -m dmrimc_bids.options docs/usage.md -->", \
    "<!-- end of the options table -->"


def write_docs(path) -> bool:
    """Rewrite the generated options table between the markers of ``path``; True when it changed."""
    from .core.atomic import write_text
    text = Path(path).read_text()
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    new = f"{head}{DOCS_START}\n\n{markdown_table()}\n{DOCS_END}{tail}"
    if new != text:
        write_text(path, new)
    return new != text


if __name__ == "__main__":   # pragma: no cover
    import sys
    for doc in sys.argv[1:] or ["docs/usage.md"]:
        print(f"{doc}: {'rewritten' if write_docs(doc) else 'up to date'}")
