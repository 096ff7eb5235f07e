"""Dictionary synthesis graphs: Monte Carlo jobs over substrates x (D0in, D0ex, κ), then assembly.

Each job (a MapNode iteration) simulates one substrate for a chunk of configurations, so the graph
runs with any Nipype plugin: MultiProc on a workstation, SLURM/SGE on a cluster (one job per chunk).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nipype.pipeline import engine as pe

from ..core.simulate.histo import config_grid
from ..core.waveforms import protocol_to_json
from ..interfaces.simulation import AssembleDictionary, SimulateHisto, SimulateScaled


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
