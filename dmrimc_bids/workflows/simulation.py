"""Dictionary synthesis graphs: Monte Carlo jobs over substrates x (D0in, D0ex, κ), then assembly.

Each job (a MapNode iteration) simulates one substrate for a chunk of configurations, so the graph
runs with any Nipype plugin: MultiProc on a workstation, SLURM/SGE on a cluster (one job per chunk).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nipype.pipeline import engine as pe

from ..core.errors import EX_USAGE, InputError
from ..core.simulate.histo import config_grid
from ..core.waveforms import protocol_to_json
from ..interfaces.simulation import AssembleDictionary, SimulateHisto, SimulateScaled

LOG = logging.getLogger("dmrimc_sim")


def protocol_file(work_dir: Path, name: str, protocol) -> Path:
    """Write the protocol JSON the simulation jobs read (only when it changed, so reruns hit the cache)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / name
    text = json.dumps(protocol_to_json(protocol))
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def job_processors(n_threads: int) -> int:
    """Processors a simulation job uses: n_threads, or every core for 0 ("all numba threads")."""
    import numba
    return n_threads if n_threads > 0 else numba.config.NUMBA_NUM_THREADS


def histo_jobs(substrates: list, configs: np.ndarray, configs_per_job: int = 0) -> list:
    """[(substrate spec, substrate index, configs chunk, offset of the chunk)]; configs_per_job 0 = all of
    a substrate's configurations in one job."""
    per = len(configs) if configs_per_job <= 0 else configs_per_job
    jobs = []
    for i, spec in enumerate(substrates):
        for lo in range(0, len(configs), per):
            jobs.append((spec, i, configs[lo:lo + per].tolist(), lo))
    return jobs


def init_histo_simulation_wf(substrates: list, protocol, d0in, d0ex, kappa, out_file, work_dir, *,
                             n_walkers: int = 20000, dt_ms: float = 110.0 / 2370.0, seed: int = 0,
                             configs_per_job: int = 0, device: str = "cpu", grid_um: float = 1.0,
                             area: str = "polygon", n_threads: int = 0, track: dict | None = None,
                             name: str = "histo_simulation_wf"):
    """Workflow: SimulateHisto over every (substrate, configuration chunk) -> AssembleDictionary.

    track {"substrate": i, "config": c, "walkers": N, "out": path}: the job simulating configuration c
    (index in the full grid) of substrate i records every step of its first N walkers, and the assembly
    writes them to path (`core.simulate.tracks`), for a video."""
    work_dir = Path(work_dir)
    prot_file = protocol_file(work_dir, "protocol.json", protocol)
    jobs = histo_jobs(substrates, config_grid(d0in, d0ex, kappa), configs_per_job)
    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    sim = pe.MapNode(SimulateHisto(protocol_file=str(prot_file), n_walkers=n_walkers, dt_ms=dt_ms, seed=seed,
                                   device=device, grid_um=grid_um, area=area, n_threads=n_threads,
                                   **({"track_substrate": track["substrate"], "track_config": track["config"],
                                       "track_walkers": track["walkers"]} if track else {})),
                     iterfield=["substrate", "substrate_index", "configs", "config_offset"], name="simulate",
                     mem_gb=2.0, n_procs=job_processors(n_threads))
    sim.inputs.substrate = [j[0] for j in jobs]
    sim.inputs.substrate_index = [j[1] for j in jobs]
    sim.inputs.configs = [j[2] for j in jobs]
    sim.inputs.config_offset = [j[3] for j in jobs]
    asm = pe.Node(AssembleDictionary(protocol_file=str(prot_file), seed=seed, area=area,
                                     out_file=str(Path(out_file).resolve()),
                                     **({"track_out": str(Path(track["out"]).resolve())} if track else {})),
                  name="assemble")
    wf.connect(sim, "out_file", asm, "parts")
    return wf


def init_default_dictionary_wf(substrates: list, protocol, design: dict, out_file, work_dir, *,
                               n_walkers: int, step_um: float, seed: int, device: str = "cpu", area: str = "hull",
                               n_threads: int = 0, name: str = "default_dictionary_wf"):
    """Workflow: SimulateScaled per substrate (one job each; an interrupted build resumes from the
    finished ones through the work dir) -> AssembleDictionary."""
    work_dir = Path(work_dir)
    prot_file = protocol_file(work_dir, "protocol.json", protocol)
    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    sim = pe.MapNode(SimulateScaled(protocol_file=str(prot_file), design=design, n_walkers=n_walkers,
                                    step_um=step_um, seed=seed, device=device, area=area, n_threads=n_threads),
                     iterfield=["substrate", "substrate_index"], name="simulate", mem_gb=2.0,
                     n_procs=job_processors(n_threads))
    sim.inputs.substrate = list(substrates)
    sim.inputs.substrate_index = list(range(len(substrates)))
    asm = pe.Node(AssembleDictionary(protocol_file=str(prot_file), seed=seed, area=area,
                                     out_file=str(Path(out_file).resolve())), name="assemble")
    wf.connect(sim, "out_file", asm, "parts")
    return wf


def init_flow_simulation_wf(networks: list, protocol, out_file, work_dir, *, n_spins: int = 2000, seed: int = 0,
                            per_job: int = 100, backend: str = "scipy", published_anb: bool = False,
                            n_threads: int = 1, track: dict | None = None, name: str = "flow_simulation_wf"):
    """Workflow: SimulateFlow over chunks of network realisations -> AssembleFlowDictionary.

    track {"realisation": k, "spins": R, "times_ms": [...], "out": path}: the job simulating realisation k
    records its first R spins at those times, and the assembly writes them to path, for a video."""
    from ..interfaces.simulation import AssembleFlowDictionary, SimulateFlow

    work_dir = Path(work_dir)
    prot_file = protocol_file(work_dir, "flow_protocol.json", protocol)
    specs = [n.to_json() for n in networks]
    per = max(1, per_job)
    chunks = [(specs[lo:lo + per], lo) for lo in range(0, len(specs), per)]
    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    sim = pe.MapNode(SimulateFlow(protocol_file=str(prot_file), n_spins=n_spins, seed=seed, backend=backend,
                                  published_anb=published_anb, n_threads=n_threads,
                                  **({"track_realisation": track["realisation"], "track_spins": track["spins"],
                                      "track_times_ms": [float(t) for t in track["times_ms"]]} if track else {})),
                     iterfield=["realisations", "offset"], name="simulate", mem_gb=1.0,
                     n_procs=job_processors(n_threads))
    sim.inputs.realisations = [c[0] for c in chunks]
    sim.inputs.offset = [c[1] for c in chunks]
    asm = pe.Node(AssembleFlowDictionary(protocol_file=str(prot_file), realisations=specs, n_spins=n_spins,
                                         seed=seed, backend=backend, out_file=str(Path(out_file).resolve()),
                                         **({"track_out": str(Path(track["out"]).resolve())} if track else {})),
                  name="assemble")
    wf.connect(sim, "out_file", asm, "parts")
    return wf


# ---- running a simulator graph (dmrimc-sim and the library) ----------------------------------------------------
#: Name of the recorded spins/walkers file in the work dir (core.simulate.tracks), for videos.
VIDEO_TRACK = "video_track.npz"


@dataclass
class SimulationRun:
    """How a simulator graph runs: the Nipype plugin (execution.choose), the work dir (None: a temporary one,
    removed afterwards), Nipype's verbosity, and numba threads per job (None: every core with one local
    process, else 1)."""
    execution: object
    work_dir: Path | None = None
    verbose: int = 0
    threads_per_job: int | None = None
    nprocs: int = 1

    def threads(self) -> int:
        """numba threads of each simulation job (0: all cores)."""
        if self.threads_per_job is not None:
            if self.threads_per_job < 1:
                raise InputError(f"--threads-per-job {self.threads_per_job}", exit_code=EX_USAGE,
                                 fix="give --threads-per-job >= 1")
            return self.threads_per_job
        return 0 if self.execution.plugin == "Linear" else 1


def run_simulation(build, out, run: SimulationRun, after=None):
    """Run the graph build(work_dir) with run's plugin; returns the Dictionary written to ``out``, or None when
    a graph plugin (SLURMGraph, ...) only submitted the jobs. after(work_dir), if given, runs once the graph
    has finished, before a temporary work dir is removed."""
    from ..core.dictionary import Dictionary
    from . import execution, nipype_logging

    tmp = None
    work = run.work_dir
    if work is None:
        tmp = work = Path(tempfile.mkdtemp(prefix="dmrimc_sim_"))
        execution.TEMPORARY_DIRS.append(tmp)
    work = Path(work).resolve()
    execution.configure(run.execution, work)
    nipype_logging.route(run.verbose, work / "nipype.log" if run.work_dir else None)
    wf = build(work)
    t0 = time.perf_counter()
    try:
        if execution.run(wf, run.execution) is None:
            return None
    except RuntimeError as exc:
        crashes = sorted((work / "crash").glob("crash-*.txt"))
        raise InputError(f"simulation failed ({exc})", fix=f"see {crashes[-1] if crashes else work}",
                         exit_code=1) from exc
    except KeyboardInterrupt:
        execution.stop_children()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("simulation finished in %.1f s", time.perf_counter() - t0)
    dic = Dictionary.load(out)
    try:
        if after:
            after(work)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return dic


def simulate_histo(specs: list, protocol, d0in, d0ex, kappa, out, run: SimulationRun, *, n_walkers: int,
                   dt_ms: float, seed: int, configs_per_job: int, device: str, grid_um: float, area: str,
                   track: dict | None = None, after=None):
    """The Monte Carlo dictionary of substrates ``specs`` (core.simulate.histo.load_substrate specs) for
    ``protocol`` at every (D0in, D0ex, κ), written to ``out``; the Dictionary (None: jobs submitted). track and
    after: as for init_histo_simulation_wf and run_simulation, the track written to the work dir's VIDEO_TRACK."""
    return run_simulation(lambda work: init_histo_simulation_wf(
        specs, protocol, d0in, d0ex, kappa, out, work, n_walkers=n_walkers, dt_ms=dt_ms, seed=seed,
        configs_per_job=configs_per_job, device=device, grid_um=grid_um, area=area, n_threads=run.threads(),
        track=track and {**track, "out": work / VIDEO_TRACK}), out, run, after=after)


def simulate_flow(networks: list, protocol, out, run: SimulationRun, *, n_spins: int, seed: int, per_job: int,
                  backend: str, published_anb: bool, track: dict | None = None, after=None):
    """The flow dictionary of ``networks`` for ``protocol``, written to ``out``; the Dictionary (None: jobs
    submitted); track and after as for simulate_histo."""
    return run_simulation(lambda work: init_flow_simulation_wf(
        networks, protocol, out, work, n_spins=n_spins, seed=seed, per_job=per_job, backend=backend,
        published_anb=published_anb, n_threads=run.threads(), track=track and {**track, "out": work / VIDEO_TRACK}),
        out, run, after=after)


def build_default_dictionary(out, run: SimulationRun, *, n_substrates: int, n_walkers: int, step_um: float,
                             seed: int, device: str, recipe=None):
    """Rebuild the embedded default dictionary (core.dictionary_default; recipe: a Recipe, default the shipped
    one) into ``out``: the generated population by diffusion-time scaling, with its provenance; the
    Dictionary (None: jobs submitted)."""
    from ..core import dictionary_default as dd

    recipe = recipe or dd.RECIPES[dd.SHIPPED_RECIPE]
    specs = dd.default_substrate_specs(n_substrates, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dic = run_simulation(lambda work: init_default_dictionary_wf(
        specs, recipe.timing_grid.protocol(), recipe.design, out, work, n_walkers=n_walkers, step_um=step_um,
        seed=seed, device=device, area=dd.DEFAULT_METRICS_AREA, n_threads=run.threads()), out, run)
    if dic is None:
        return None
    dic.provenance.update(timing_grid=recipe.timing_grid.describe(), design=recipe.design, recipe=recipe.name,
                          population={"n_substrates": n_substrates, "seed": seed,
                                      "generator": "core.dictionary_default.default_substrate_specs"},
                          build={"wall_seconds": round(time.perf_counter() - t0, 1),
                                 "nprocs": run.nprocs,
                                 "threads_per_job": run.threads(), "device": device})
    dd.finalise_default(dic, out, recipe.storage_rank)
    return dic
