"""The run's one configuration object: built by the command-line parser (cli/parser.py), validated once
(every path absolute, every named file checked), written to ``logs/config-<run>.json`` and read by the
workflows, the sidecars, the reports and the methods text (fMRIPrep's single serialisable config)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .. import __version__
from ..core.errors import EX_NOINPUT, InputError
from ..core.fitting.registry import model_kind
from ..options import BY_NAME, FIXED_MODEL_OPTIONS, OPTIONS, SECTIONS, result_names, section_of

def _section_class(section: str):
    """The frozen dataclass of one Config section, its fields the OPTIONS of that section (options.py)."""
    fields = [(o.name, object, dataclasses.field(default_factory=o.fresh_default))
              for o in OPTIONS if o.section == section]
    cls = dataclasses.make_dataclass(f"{section.title()}Options", fields, frozen=True)
    cls.__doc__ = f"Config section '{section}': {SECTIONS[section]} (fields declared in dmrimc_bids/options.py)."
    cls.__module__ = __name__
    return cls


RunOptions, InputsOptions, PreprocessingOptions, TissueOptions, VascularOptions, ExecutionOptions = (
    _section_class(s) for s in SECTIONS)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that changes the results or how they are computed, in the sections of options.SECTIONS
    (``config.tissue.estimator``, ``config.execution.seed``, ...), frozen: a changed value is a new Config
    (``replace``). Paths are absolute strings after ``validate()`` ("" or [] when not given); units as on
    the command line (b in s/mm², δ/Δ in ms). Built by ``Config.from_dict`` from option names."""

    run: RunOptions = dataclasses.field(default_factory=RunOptions)
    inputs: InputsOptions = dataclasses.field(default_factory=InputsOptions)
    preprocessing: PreprocessingOptions = dataclasses.field(default_factory=PreprocessingOptions)
    tissue: TissueOptions = dataclasses.field(default_factory=TissueOptions)
    vascular: VascularOptions = dataclasses.field(default_factory=VascularOptions)
    execution: ExecutionOptions = dataclasses.field(default_factory=ExecutionOptions)

    @classmethod
    def from_dict(cls, values: dict | None = None, **more) -> "Config":
        """A Config from option names ({"seed": 7, "model": "separate"}) or a sectioned dict as written to
        logs/config-<run>.json ({"execution": {"seed": 7}}); ValueError naming an unknown option."""
        return cls().replace(**_flatten({**(values or {}), **more}))

    def replace(self, **values) -> "Config":
        """A copy with the options named in ``values`` changed (ValueError naming an unknown option)."""
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}: the options are the fields of "
                             "dmrimc_bids/options.py (docs/usage.md)")
        by_section: dict = {}
        for name, value in values.items():
            by_section.setdefault(section_of(name), {})[name] = value
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **v)
                                            for s, v in by_section.items()})

    def get(self, name: str):
        """The value of option ``name``, whatever its section."""
        return getattr(getattr(self, section_of(name)), name)

    # ---- validation and serialisation -----------------------------------------------------------------
    def validate(self) -> "Config":
        """A Config with every path absolute, after checking that every named input file exists (InputError
        naming the option otherwise). A relative ``--dictionary`` is read from where the command was
        started, never from a node's working directory."""
        changes = {name: _existing(self.get(name), BY_NAME[name].flag) for name in
                   ("dictionary", "flow_dictionary", "mask", "noise_map", "bids_filter_file")}
        changes["flow_networks"] = [_existing(f, "--flow-networks") for f in self.vascular.flow_networks]
        changes["timing"] = [_absolute(t) if ":" not in str(t) and Path(t).is_file() else str(t)
                             for t in self.inputs.timing]
        changes["derivatives"] = [_absolute(d) for d in self.inputs.derivatives]
        changes["sim_substrates"] = [{**spec, "svg": _existing(spec["svg"], "--substrate-svg")} if spec.get("svg")
                                     else spec for spec in self.tissue.sim_substrates]
        for name in ("out_dir", "bids_dir", "work_dir", "sim_cache_dir"):
            changes[name] = _absolute(self.get(name))
        config = self.replace(**changes)
        config.run_timing()  # a malformed --timing fails here (usage error)
        return config

    def to_dict(self) -> dict:
        """{section: {option: value}} (JSON types)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def flat(self) -> dict:
        """{option: value} over every section."""
        return {name: value for section in self.to_dict().values() for name, value in section.items()}

    def write(self, run_id: str) -> Path:
        """logs/config-<run_id>.json in the output folder (atomic)."""
        from ..core.atomic import write_json as atomic_write_json
        path = Path(self.run.out_dir) / "logs" / f"config-{run_id}.json"
        atomic_write_json(path, {"dmrimc_bids_version": __version__, **self.to_dict()})
        return path

    def run_timing(self) -> dict:
        """--timing as {run key: (δ, Δ) [ms]} (bids.protocol.parse_run_timing)."""
        from ..bids.protocol import parse_run_timing
        return parse_run_timing(self.inputs.timing)

    def result_options(self) -> dict:
        """Every option that changes the maps (options.Option.changes_maps), by name
        (logs/options/<fingerprint>.json: the group level names the options in which two runs differ)."""
        return json.loads(json.dumps({"version": __version__, **{k: self.get(k) for k in result_names()}},
                                     sort_keys=True, default=str))

    def options_fingerprint(self) -> str:
        """12 hex digits identifying the software version and every option that changes the maps (the
        sidecars' RunOptions)."""
        import hashlib
        return hashlib.sha256(json.dumps(self.result_options(), sort_keys=True).encode()).hexdigest()[:12]

    # ---- which model a session gets --------------------------------------------------------------------
    def joint_conflicts(self) -> list[str]:
        """The fixes for options the joint fit cannot take ([] when it can run)."""
        return [fix for bad, fix in (
            (model_kind(self.tissue.estimator) == "ml", "drop --estimator ml (the joint fit is a posterior)"),
            (self.tissue.dictionary_source == "simulate", "drop --dictionary-source simulate"),
            (self.vascular.vascular == "off", "drop --vascular off (the joint fit has the vascular compartment)"))
            if bad]

    def session_model(self, has_ivim: bool) -> str:
        """'joint' or 'separate' for a session: the joint fit (the default) needs a posterior tissue
        estimate from a matched dictionary and IVIM b-values in the session; otherwise the tissue fit alone
        (and the vascular branch where it runs), as --model separate."""
        if self.vascular.model == "joint" and has_ivim and not self.joint_conflicts():
            return "joint"
        return "separate"

    # ---- what the models are given (one place for the nodes and for the descriptions) -------------------
    def model_role(self, branch: str) -> str:
        """The options.ROLES entry of a branch: 'tissue' (posterior or ml, --estimator), 'flow' (flow-posterior
        or flow-ml, --flow-estimator), 'joint' or 'ivim'."""
        if branch == "tissue":
            return model_kind(self.tissue.estimator)
        if branch == "flow":
            return "flow-" + model_kind(self.vascular.flow_estimator)
        return branch

    def model_options(self, branch: str) -> dict:
        """The keyword options of a branch's model (registry.build_model), from the options that feed its role
        (options.Option.feeds) and the role's fixed ones; an unset one (None) keeps the model's default."""
        role = self.model_role(branch)
        out = {o.feeds[role]: tuple(self.get(o.name)) if o.trait == "regularisation" else self.get(o.name)
               for o in OPTIONS if role in o.feeds}
        out.update(FIXED_MODEL_OPTIONS.get(role, {}))
        return {k: v for k, v in out.items() if v is not None}

    def report_options(self) -> dict:
        """Pipeline options quoted in the reports' methods text."""
        return {name: self.get(name) for name in ("b0_threshold", "vasc_threshold", "b0_per_series", "ivim_b_split",
                                                  "ivim_b_max", "ivim_estimator", "model", "params", "fix", "seed")}


def _flatten(values: dict) -> dict:
    """Option names -> values from a flat or a sectioned dict (sections as written by Config.to_dict)."""
    out = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):   # a section (the option "vascular" is a string)
            out.update(value)
        else:
            out[key] = value
    return out


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
