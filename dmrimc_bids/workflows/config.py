"""The run's one configuration object: built by the command-line parser (cli/parser.py), validated once
(every path absolute, every named file checked), written to ``logs/config-<run>.json`` and read by the
workflows, the sidecars, the reports and the methods text (fMRIPrep's single serialisable config)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..core.fitting.registry import model_kind
from ..core import preprocess
from ..core.errors import EX_NOINPUT, InputError
from ..core.protocol import B0_THRESHOLD
from ..core.simulate.flow.dictionary import DEFAULT_SPINS

#: The prior of each tissue parameter's point estimate and SD (posterior.PosteriorModel point_prior; the others
#: follow --prior), chosen on the leave-one-out folds of the published real-histology substrates 1-12 at SNR 50
#: and 20 (benchmarks/point_prior_choice.py, docs/benchmarks.md block point-prior-choice): the design prior
#: lowers the median errors of fin, vCS and kappa at both SNRs; D0in and D0ex keep the entries' prior.
DEFAULT_POINT_PRIOR: dict = {"fin": "design", "vCS_cyl": "design", "kappa": "design"}


@dataclass
class Config:
    """Everything that changes the results or how they are computed. Paths are absolute strings after
    ``validate()`` ("" or [] when not given); units as on the command line (b in s/mm², δ/Δ in ms)."""

    out_dir: str
    bids_dir: str = ""
    analysis_level: str = "participant"
    derivatives: list = field(default_factory=list)
    participant_label: list = field(default_factory=list)
    session_label: list = field(default_factory=list)
    bids_filter_file: str = ""
    skip_bids_validation: bool = False
    mask: str = ""
    mask_label: str = ""
    noise_map: str = ""
    atlas: str = ""
    group_column: str = ""
    dictionary: str = ""
    params: list = field(default_factory=list)
    fix: dict = field(default_factory=dict)
    b0_threshold: float = B0_THRESHOLD
    b0_pool_series: bool = True
    vasc_threshold: float = 250.0
    shell_tolerance: float = preprocess.DEFAULT_SHELL_TOLERANCE
    small_delta_ms: float | None = None
    big_delta_ms: float | None = None
    timing: list = field(default_factory=list)
    match_tol_b: float = 100.0
    match_tol_ms: float = 2.5
    n_averages: float = 1.0
    reg_norm: int = 2
    reg_weight: float = 0.0
    bounds: dict = field(default_factory=dict)
    smoothing: float = 1e-3
    surrogate: str = "local"
    n_neighbours: int = 32
    noise_model: str = "offset-gaussian"
    estimator: str = "posterior"
    prior: str = "entries"
    point_prior: dict = field(default_factory=lambda: dict(DEFAULT_POINT_PRIOR))
    device: str = "auto"
    omp_nthreads: int = 1
    chunk_size: int = 10000
    seed: int = 0
    dictionary_source: str = "match"
    sim_substrates: list = field(default_factory=list)
    sim_walkers: int = 2000
    sim_d0: list = field(default_factory=list)
    sim_kappa: list = field(default_factory=list)
    sim_cache_dir: str = ""
    vascular: str = "auto"
    ivim_b_split: float = 200.0
    ivim_b_max: float = 1200.0
    ivim_estimator: str = "bayes"
    flow_dictionary: str = ""
    flow_networks: list = field(default_factory=list)
    flow_spins: int = DEFAULT_SPINS
    flow_params: list = field(default_factory=list)
    flow_match_tol_b: float = 5.0
    flow_estimator: str = "posterior-mean"
    model: str = "joint"
    t2_tissue_ms: float | None = None
    t2_blood_ms: float | None = None
    work_dir: str = ""
    nprocs: int = 1
    plugin: str = ""
    plugin_args: dict = field(default_factory=dict)
    mem_gb: float | None = None
    verbose: int = 0
    command: str = ""
    max_failed_fraction: float = 0.05
    allow_mixed_runs: bool = False
    allow_incomplete: bool = False
    dataset_links: dict = field(default_factory=dict)

    # ---- validation and serialisation -----------------------------------------------------------------
    def validate(self) -> "Config":
        """Resolve every path to an absolute one and check that every named input file exists (InputError
        naming the option otherwise); returns self. A relative ``--dictionary`` is read from where the
        command was started, never from a node's working directory."""
        for name, flag in (("dictionary", "--dictionary"), ("flow_dictionary", "--flow-dictionary"),
                           ("mask", "--mask"), ("noise_map", "--noise-map"), ("bids_filter_file", "--bids-filter-file")):
            setattr(self, name, _existing(getattr(self, name), flag))
        self.flow_networks = [_existing(f, "--flow-networks") for f in self.flow_networks]
        self.timing = [_absolute(t) if ":" not in str(t) and Path(t).is_file() else str(t) for t in self.timing]
        self.run_timing()  # a malformed --timing fails here (usage error)
        self.derivatives = [_absolute(d) for d in self.derivatives]
        for spec in self.sim_substrates:
            if spec.get("svg"):
                spec["svg"] = _existing(spec["svg"], "--substrate-svg")
        for name in ("out_dir", "bids_dir", "work_dir", "sim_cache_dir"):
            setattr(self, name, _absolute(getattr(self, name)))
        return self

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def write(self, run_id: str) -> Path:
        """logs/config-<run_id>.json in the output folder (atomic)."""
        from ..core.atomic import write_json as atomic_write_json
        path = Path(self.out_dir) / "logs" / f"config-{run_id}.json"
        atomic_write_json(path, {"dmrimc_bids_version": __version__, **self.to_dict()})
        return path

    def run_timing(self) -> dict:
        """--timing as {run key: (δ, Δ) [ms]} (bids.protocol.parse_run_timing)."""
        from ..bids.protocol import parse_run_timing
        return parse_run_timing(self.timing)

    #: Fields that change the maps; two runs whose fingerprints differ cannot be pooled by the group level.
    RESULT_FIELDS = ("dictionary", "params", "fix", "b0_threshold", "b0_pool_series", "vasc_threshold",
                     "shell_tolerance", "small_delta_ms", "big_delta_ms", "timing", "match_tol_b", "match_tol_ms",
                     "n_averages", "reg_norm", "reg_weight", "bounds", "smoothing", "surrogate", "n_neighbours",
                     "noise_model", "estimator", "prior", "point_prior", "dictionary_source", "sim_substrates", "sim_walkers", "sim_d0",
                     "sim_kappa", "vascular", "ivim_b_split", "ivim_b_max", "ivim_estimator", "flow_dictionary", "flow_networks",
                     "flow_spins", "flow_params", "flow_estimator", "model", "t2_tissue_ms", "t2_blood_ms", "seed")

    def result_options(self) -> dict:
        """Every option that changes the maps, by name (logs/options/<fingerprint>.json: the group level names
        the options in which two runs differ)."""
        return json.loads(json.dumps({"version": __version__, **{k: getattr(self, k) for k in self.RESULT_FIELDS}},
                                     sort_keys=True, default=str))

    def options_fingerprint(self) -> str:
        """12 hex digits identifying the software version and every option that changes the maps."""
        import hashlib
        values = {"version": __version__, **{k: getattr(self, k) for k in self.RESULT_FIELDS}}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]

    # ---- which model a session gets --------------------------------------------------------------------
    def joint_conflicts(self) -> list[str]:
        """The fixes for options the joint fit cannot take ([] when it can run)."""
        return [fix for bad, fix in (
            (model_kind(self.estimator) == "ml", "drop --estimator ml (the joint fit is a posterior)"),
            (self.dictionary_source == "simulate", "drop --dictionary-source simulate"),
            (self.vascular == "off", "drop --vascular off (the joint fit has the vascular compartment)")) if bad]

    def session_model(self, has_ivim: bool) -> str:
        """'joint' or 'separate' for a session: the joint fit (the default) needs a posterior tissue
        estimate from a matched dictionary and IVIM b-values in the session; otherwise the tissue fit alone
        (and the vascular branch where it runs), as --model separate."""
        if self.model == "joint" and has_ivim and not self.joint_conflicts():
            return "joint"
        return "separate"

    # ---- what the models are given (one place for the nodes and for the descriptions) -------------------
    def tissue_model_options(self) -> dict:
        """Options of the tissue estimator (interfaces.fitting.MODEL_OPTIONS)."""
        bounds = {k: list(v) for k, v in self.bounds.items()}
        if model_kind(self.estimator) == "posterior":
            return {"bounds": bounds, "chunk_size": self.chunk_size, "n_averages": self.n_averages, "device": self.device,
                    "prior": self.prior, "point_prior": dict(self.point_prior)}
        return {"n_averages": self.n_averages, "regularisation": (int(self.reg_norm), float(self.reg_weight)),
                "bounds": bounds, "smoothing": self.smoothing, "chunk_size": self.chunk_size,
                "surrogate": self.surrogate, "n_neighbours": self.n_neighbours, "noise": self.noise_model,
                "device": self.device}

    def flow_model_options(self) -> dict:
        """Options of the flow estimator (the published fit uses the global surrogate)."""
        if model_kind(self.flow_estimator) == "posterior":   # S_V is a difference of magnitudes: no noise floor
            return {"chunk_size": self.chunk_size, "noise": "gaussian", "device": self.device}
        return {"n_averages": self.n_averages, "smoothing": self.smoothing, "chunk_size": self.chunk_size,
                "surrogate": "global", "noise": self.noise_model, "device": self.device}

    def joint_model_options(self) -> dict:
        """JointModel options (core/fitting/joint.py) of --model joint; T2s only when given."""
        out = {"bounds": {k: list(v) for k, v in self.bounds.items()}, "chunk_size": self.chunk_size,
               "n_averages": self.n_averages, "tissue_b_min": self.vasc_threshold, "device": self.device,
               "prior": self.prior, "point_prior": dict(self.point_prior),
               "t2_tissue_ms": self.t2_tissue_ms, "t2_blood_ms": self.t2_blood_ms}
        return {k: v for k, v in out.items() if v is not None}

    def ivim_model_options(self) -> dict:
        return {"b_split": self.ivim_b_split, "b_max": self.ivim_b_max, "b0_threshold": self.b0_threshold,
                "method": self.ivim_estimator}

    # ---- sidecar fields of the pipeline (the model's own come from Model.describe()) ---------------------
    def sidecar_parameters(self, model: str) -> dict:
        """Model.Parameters fields set by the pipeline for the maps of ``model`` (histousim, ivim,
        spinflowsim), written after the model's own."""
        if model == "ivim":
            return {"ModelOfRun": self.model, "Seed": self.seed, "SoftwareVersion": __version__,
                    "RunOptions": self.options_fingerprint()}
        out = {"B0Threshold": self.b0_threshold, "VascularThreshold": self.vasc_threshold,
               "B0Normalisation": "b=0 of every series at the same TE, pooled after matching each series' "
                                  "global scale" if self.b0_pool_series else "b=0 of the measurement's own series",
               "ShellTolerance": self.shell_tolerance, "Fixed": self.fix, "ModelOfRun": self.model,
               "IvimEstimator": self.ivim_estimator, "Seed": self.seed,
               "SoftwareVersion": __version__, "RunOptions": self.options_fingerprint()}
        if self.model == "joint":
            out["VascularThreshold"] = "none: every b > 0 in the joint fit; the tissue posterior on b >= " \
                                       f"{self.vasc_threshold:g} s/mm² after the vascular compartment is removed"
        if model == "spinflowsim":
            out.pop("VascularThreshold")
            out["Signal"] = ("every measurement with b > 0, (1 - fV) S_tissue + fV S_flow (joint fit)" if self.model == "joint"
                             else f"vascular signal S_V/S_V(0) of the b <= b_split measurements ({self.ivim_estimator} IVIM)")
            out["FlowDictionary"] = self.flow_dictionary or ("simulated for this protocol from " + (
                "the given networks" if self.flow_networks else "the project's generated capillary networks"))
        return out

    def report_options(self) -> dict:
        """Pipeline options quoted in the reports' methods text."""
        return {"b0_threshold": self.b0_threshold, "vasc_threshold": self.vasc_threshold,
                "b0_pool_series": self.b0_pool_series, "ivim_b_split": self.ivim_b_split, "ivim_b_max": self.ivim_b_max,
                "ivim_estimator": self.ivim_estimator, "model": self.model, "params": list(self.params),
                "fix": dict(self.fix), "seed": self.seed}


def _absolute(path) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def _existing(path, flag: str) -> str:
    if not path:
        return ""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{flag} {path}: file not found", path=p.resolve(), exit_code=EX_NOINPUT,
                         fix=f"check the path given to {flag} (relative paths are read from the folder the command "
                             "was started in)")
    return str(p.resolve())
