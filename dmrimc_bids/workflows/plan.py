"""The plan of a session, made once from its headers and metadata (no voxel data read): every input check,
the protocol, the branches, the dictionaries' summaries, the nodes' memory and the sidecars' input record.
The preflight is the planning: ``plan_session`` raises InputError on bad input, and the graph builders
(participant.py and the stage modules) only read the SessionPlan it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..bids.images import prepare_mask, verify_image
from ..bids.layout import SessionInputs
from ..bids.protocol import session_protocols
from ..bids.provenance import input_record
from ..core import preprocess
from ..core.dictionary_default import load_selected
from ..core.errors import InputError
from ..core.protocol import Protocol
from .config import Config

#: Upper bound of the fitting memory per voxel of a batch [bytes]: grid-search and LM work arrays, and the
#: posterior estimator's voxel x entry matrices for flow dictionaries of ~600 entries.
BYTES_PER_BATCH_VOXEL = 40e3

#: Peak memory of a node that holds images, in float64 copies of the session's 4D DWI, and the interpreter
#: with numpy/nibabel/Nipype (~0.08 GB measured): benchmarks/node_memory.py measures each node alone.
IMAGE_NODE_COPIES = {"spherical_mean": 1.5, "normalise_b0": 1.5, "vascular_filter": 1.0, "session_report": 1.0,
                     "fit_ivim": 2.5}
INTERPRETER_GB = 0.15


def chunk_for_memory(mem_gb_per_process: float, chunk_size: int) -> int:
    """Largest batch (<= chunk_size, >= 100) whose work arrays use at most half of the memory budget."""
    return int(max(100, min(chunk_size, 0.5 * mem_gb_per_process * 1e9 / BYTES_PER_BATCH_VOXEL)))


def dwi_size(item: SessionInputs) -> tuple[int, int]:
    """(voxels, volumes of all runs) of a session's DWI, from the headers."""
    import nibabel as nib
    shapes = [nib.load(f).shape for f in item.dwi_files]
    return int(np.prod(shapes[0][:3])), sum(s[3] if len(s) > 3 else 1 for s in shapes)


def fit_memory_gb(n_vox: int, config: Config, n_meas: int) -> float:
    """Honest mem_gb of a fit node: the float64 copies of the data and σ (4 arrays of voxels x
    measurements), the maps, and one batch's work arrays, plus the interpreter (~0.4 GB)."""
    data = 4 * n_vox * n_meas * 8 + 40 * n_vox * 4
    return round(0.4 + (data + min(config.execution.chunk_size, n_vox) * BYTES_PER_BATCH_VOXEL) / 1e9, 2)


def session_memory_gb(item: SessionInputs, config: Config, n_meas: int) -> dict:
    """Honest mem_gb of a session's nodes, {node: GB} (headers read once): the image nodes hold the
    interpreter plus IMAGE_NODE_COPIES[node] float64 copies of the DWI (all runs); "fit" is fit_memory_gb."""
    n_vox, n_vol = dwi_size(item)
    dwi_gb = n_vox * n_vol * 8 / 1e9
    mem = {node: round(INTERPRETER_GB + copies * dwi_gb, 2) for node, copies in IMAGE_NODE_COPIES.items()}
    mem["fit"] = fit_memory_gb(n_vox, config, n_meas)
    return mem


@dataclass
class SessionPlan:
    """What a session's graph is, decided once (plan_session) or given (example_plan, a graph without data):
    the session's inputs and Config (its model), its per-volume protocol and shells, whether the vascular
    branch runs, the nodes' memory {node: GB}, the sidecars' input record, the preflight's warnings and the
    matched tissue dictionary's largest b and description (None with --dictionary-source simulate)."""
    item: SessionInputs
    config: Config
    vascular: bool
    mem: dict
    records: dict = field(default_factory=dict)
    protocol: Protocol | None = None
    shells: Protocol | None = None
    fitted: int = 0
    warnings: list = field(default_factory=list)
    max_b: float | None = None
    dictionary_description: dict | None = None

    @property
    def label(self) -> str:
        return self.item.label

    @property
    def model(self) -> str:
        """'joint' or 'separate': the session's model."""
        return self.config.vascular.model

    def summary(self) -> str:
        """The terminal's line for the session."""
        return (f"{len(self.protocol)} volumes -> {len(self.shells)} shells, {self.fitted} fitted measurements, "
                f"--model {self.model}; {mask_sentence(self.item)}")


def session_protocol(item: SessionInputs, config: Config) -> tuple[Protocol, Protocol]:
    """(per-volume protocol, directionally averaged shells) of a session, from headers and metadata only."""
    protos = session_protocols(item.runs, config.inputs.small_delta_ms, config.inputs.big_delta_ms,
                               config.run_timing(), config.preprocessing.b0_threshold)
    proto = Protocol.concatenate(protos)
    shells, _ = preprocess.shell_assignment(proto, config.preprocessing.b0_threshold,
                                            config.preprocessing.shell_tolerance)
    return proto, shells


def has_ivim_data(shells: Protocol, config: Config) -> bool:
    """True when some TE group of the shells has the b-values IVIM needs."""
    from ..core.fitting.ivim import ivim_groups
    v = config.vascular
    usable, _ = ivim_groups(shells, v.ivim_b_split, v.ivim_b_max, config.preprocessing.b0_threshold)
    return bool(usable)


def plan_session(item: SessionInputs, config: Config, dictionary=None) -> SessionPlan:
    """The preflight and the plan of a session: every input check of the graph on headers and metadata only
    (InputError on bad input), then what the graph is. dictionary: the run's selected tissue dictionary
    (loaded here when not given)."""
    for f, what in [(f, "DWI") for f in item.dwi_files] + [(item.mask_file, "mask"), (item.sigma_file, "noise σ map")]:
        if f:
            verify_image(f, what)  # a corrupt or truncated file stops here, never in a fit
    proto, shells = session_protocol(item, config)
    vascular = config.vascular.vascular != "off" and has_ivim_data(shells, config)
    model = config.session_model(vascular)
    config = config if model == config.vascular.model else config.replace(model=model)
    prepare_mask(item.dwi_files[0], item.mask_file or None, item.sigma_file or None)
    source, pre, t = item.dwi_files[0], config.preprocessing, config.tissue
    norm = preprocess.normalisation_plan(shells, pre.b0_threshold, source, not pre.b0_per_series)
    simulate = t.dictionary_source == "simulate"
    dic = dictionary if dictionary is not None else load_selected(t.dictionary, t.params, t.fix)
    max_b = float("inf") if simulate else dic.max_b
    threshold = 0.0 if model == "joint" else pre.vasc_threshold   # joint: every b > 0
    filt = preprocess.vascular_filter(shells, threshold, max_b, pre.b0_threshold)
    if filt.keep.size == 0:
        raise InputError("no measurement left for the tissue fit", path=source,
                         fix=f"acquire b between --vasc-threshold ({pre.vasc_threshold:g}) and the dictionary's "
                             f"largest b ({dic.max_b:g} s/mm²)")
    if not simulate:  # a simulated dictionary matches by construction
        dic.match(shells.subset(filt.keep), t.match_tol_b, t.match_tol_ms, pre.b0_threshold, source)
    v = config.vascular
    if v.vascular == "on" and not vascular:
        raise InputError("--vascular on: no TE group has the b-values segmented IVIM needs", path=source,
                         fix=f"acquire a b=0, a b in ({pre.b0_threshold:g}, {v.ivim_b_split:g}] and two b in "
                             f"({v.ivim_b_split:g}, {v.ivim_b_max:g}] s/mm² at one TE, or use --vascular off")
    return SessionPlan(item, config, vascular, session_memory_gb(item, config, len(shells)),
                       input_record(item, config.run.dataset_links), proto, shells, int(filt.keep.size),
                       filt.warnings() + norm.notes, None if simulate else dic.max_b,
                       None if simulate else dic.describe())


def example_plan(config: Config, model: str = "joint", vascular: bool = True) -> SessionPlan:
    """A nominal SessionPlan of a subject with no files: the graph of ``model`` with or without the vascular
    branch, built without data, to be drawn (workflow.write_graph) or inspected."""
    item = SessionInputs(subject="example", session=None)
    mem = {node: INTERPRETER_GB for node in IMAGE_NODE_COPIES} | {"fit": 1.0}
    return SessionPlan(item, config.replace(model=model), vascular, mem)


def mask_sentence(item: SessionInputs) -> str:
    """Which mask the session is fitted in, for the terminal: the file and how it was found, or that none was
    given and one is built from the b=0 (the report's Inputs table gives its voxel count)."""
    if item.mask_file:
        return f"mask {item.mask_file} ({item.mask_origin})"
    return (f"no mask given: built from the mean b=0 intensity (voxels above {100 * preprocess.B0_MASK_FRACTION:g} % "
            "of its 98th percentile; --mask FILE or a desc-<label>_mask in --derivatives to give one)")
