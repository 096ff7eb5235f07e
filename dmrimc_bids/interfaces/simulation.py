"""Nipype interfaces around core.simulate: one Monte Carlo job, and the assembly of a dictionary."""

from __future__ import annotations

import json

import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from ..core.dictionary import cached_dictionary
from ..core.protocol import B0_THRESHOLD, Protocol, unique_measurements
from .io import cwd_path


class _SimIn(BaseInterfaceInputSpec):
    substrate = traits.Dict(mandatory=True, desc="substrate spec (core.simulate.histo.load_substrate)")
    substrate_index = traits.Int(0, usedefault=True, desc="position of the substrate (seeds its walkers)")
    config_offset = traits.Int(0, usedefault=True, desc="position of the first configuration in the full grid")
    configs = traits.List(traits.List(traits.Float), mandatory=True,
                          desc="[[D0in µm²/ms, D0ex µm²/ms, kappa µm/s], ...]")
    protocol_file = File(exists=True, mandatory=True, desc="protocol JSON (core.waveforms.protocol_to_json)")
    n_walkers = traits.Int(20000, usedefault=True, desc="walkers per configuration")
    dt_ms = traits.Float(110.0 / 2370.0, usedefault=True, desc="time step [ms]")
    grid_um = traits.Float(1.0, usedefault=True, desc="membrane look-up grid spacing [µm]")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")
    device = traits.Enum("cpu", "gpu", "auto", usedefault=True, desc="cpu, gpu or auto (the GPU when one is visible)")
    area = traits.Enum("polygon", "hull", usedefault=True, desc="cell areas of the metrics")
    n_threads = traits.Int(0, usedefault=True, desc="numba threads (0: all)")
    track_substrate = traits.Int(-1, usedefault=True, desc="substrate index whose walkers are recorded (-1: none)")
    track_config = traits.Int(-1, usedefault=True, desc="index (full grid) of the configuration recorded")
    track_walkers = traits.Int(0, usedefault=True, desc="walkers recorded at every step (for a video)")


class _SimOut(TraitedSpec):
    out_file = File(exists=True, desc="npz: signals [n, M], params [n, P], facts (JSON) [, track_* arrays]")


def substrate_job(inputs):
    """(Substrate, Protocol) of a simulation job, with its numba threads set (n_threads > 0)."""
    import numba

    from ..core.simulate.histo import load_substrate
    from ..core.waveforms import protocol_from_json

    if inputs.n_threads > 0:
        numba.set_num_threads(min(inputs.n_threads, numba.config.NUMBA_NUM_THREADS))
    return load_substrate(inputs.substrate), protocol_from_json(json.loads(open(inputs.protocol_file).read()))


class SimulateHisto(SimpleInterface):
    """Monte Carlo signals of one substrate for a list of (D0in, D0ex, κ) configurations."""

    input_spec = _SimIn
    output_spec = _SimOut

    def _run_interface(self, runtime):
        from ..core.simulate.histo import run_facts, simulate_substrate
        from ..core.simulate.tracks import to_arrays

        i = self.inputs
        sub, prot = substrate_job(i)
        track = {}
        local = i.track_config - i.config_offset
        if i.track_walkers > 0 and i.track_substrate == i.substrate_index and 0 <= local < len(i.configs):
            track = {"track_walkers": i.track_walkers, "track_config": local}
        signals, params, res = simulate_substrate(sub, prot, np.asarray(i.configs, float), seed=i.seed,
                                                  index=i.substrate_index, config_offset=i.config_offset,
                                                  area=i.area, n_walkers=i.n_walkers,
                                                  dt_ms=i.dt_ms, grid_um=i.grid_um, device=i.device, progress=True,
                                                  **track)
        out = cwd_path(runtime, f"mc_{i.substrate_index:03d}_{i.config_offset:05d}.npz")
        facts = run_facts(sub, res)
        facts["spec"] = i.substrate
        np.savez(out, signals=signals, params=params, facts=json.dumps(facts),
                 **(to_arrays(res.track) if res.track is not None else {}))
        self._results["out_file"] = out
        return runtime


class _ScaledIn(BaseInterfaceInputSpec):
    substrate = traits.Dict(mandatory=True, desc="substrate spec (core.simulate.histo.load_substrate)")
    substrate_index = traits.Int(0, usedefault=True, desc="position of the substrate (seeds its walkers)")
    protocol_file = File(exists=True, mandatory=True, desc="protocol JSON (core.waveforms.protocol_to_json)")
    design = traits.Dict(mandatory=True, desc="configuration design (core.simulate.scaled.substrate_entries)")
    n_walkers = traits.Int(2000, usedefault=True, desc="walkers per walk")
    step_um = traits.Float(0.6, usedefault=True, desc="walker step length [µm]")
    seed = traits.Int(0, usedefault=True, desc="random seed of the whole dictionary")
    device = traits.Enum("cpu", "gpu", "auto", usedefault=True, desc="numba CPU or CUDA kernels")
    area = traits.Enum("polygon", "hull", usedefault=True, desc="cell areas of the metrics")
    n_threads = traits.Int(0, usedefault=True, desc="numba threads (0: all)")


class SimulateScaled(SimpleInterface):
    """Monte Carlo signals of one substrate for a configuration design, by diffusion-time scaling
    (core.simulate.scaled): the default dictionary's job."""

    input_spec = _ScaledIn
    output_spec = _SimOut

    def _run_interface(self, runtime):
        from ..core.simulate.histo import simulate_scaled_substrate
        from ..core.simulate.montecarlo import resolve_device

        i = self.inputs
        sub, prot = substrate_job(i)
        signals, params, facts = simulate_scaled_substrate(sub, prot, dict(i.design), n_walkers=i.n_walkers,
                                                           step_um=i.step_um, seed=i.seed, index=i.substrate_index,
                                                           area=i.area, device=resolve_device(i.device))
        facts["spec"] = i.substrate
        out = cwd_path(runtime, f"scaled_{i.substrate_index:03d}.npz")
        np.savez(out, signals=signals, params=params, facts=json.dumps(facts))
        self._results["out_file"] = out
        return runtime


class _AssembleIn(BaseInterfaceInputSpec):
    parts = traits.List(File(exists=True), mandatory=True, desc="SimulateHisto outputs, in order")
    protocol_file = File(exists=True, mandatory=True, desc="protocol JSON (core.waveforms.protocol_to_json)")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")
    area = traits.Enum("polygon", "hull", usedefault=True, desc="cell areas of the metrics (polygon or convex hull)")
    out_file = File(mandatory=True, desc="dictionary .npz to write (with its .json)")
    track_out = traits.Str(desc="where to write the recorded walkers/spins of a part, if one has them (.npz)")


def save_part_track(parts: list, track_out: str) -> None:
    """Write the track recorded by one of the simulation parts to track_out (atomically)."""
    from ..core.simulate.tracks import from_arrays, save_track

    for f in parts:
        with np.load(f) as z:
            track = from_arrays(z)
        if track is not None:
            save_track(track, track_out)
            return


class _AssembleOut(TraitedSpec):
    dictionary = File(exists=True, desc="the assembled dictionary .npz (+ .json)")


class AssembleDictionary(SimpleInterface):
    """Join the Monte Carlo parts into one Dictionary (.npz + .json), written atomically."""

    input_spec = _AssembleIn
    output_spec = _AssembleOut

    def _run_interface(self, runtime):
        from ..core.simulate.histo import assemble, provenance
        from ..core.waveforms import protocol_from_json

        i = self.inputs
        prot = protocol_from_json(json.loads(open(i.protocol_file).read()))
        parts, facts = [], []
        for f in i.parts:
            with np.load(f) as z:
                parts.append((z["signals"], z["params"]))
                facts.append(json.loads(str(z["facts"])))
        prov = provenance(facts, i.seed, i.area)
        dic = assemble(parts, prot, prov)
        self._results["dictionary"] = str(dic.save(i.out_file))
        if isdefined(i.track_out):
            save_part_track(i.parts, i.track_out)
        return runtime


class _ForProtocolIn(BaseInterfaceInputSpec):
    protocol = File(exists=True, mandatory=True, desc="protocol table of the measurements to fit")
    substrates = traits.List(traits.Dict, mandatory=True, desc="substrate specs")
    d0in = traits.List(traits.Float, mandatory=True, desc="µm²/ms")
    d0ex = traits.List(traits.Float, mandatory=True, desc="µm²/ms")
    kappa = traits.List(traits.Float, mandatory=True, desc="µm/s")
    n_walkers = traits.Int(2000, usedefault=True, desc="walkers per configuration")
    dt_ms = traits.Float(110.0 / 2370.0, usedefault=True, desc="time step [ms]")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")
    device = traits.Enum("cpu", "gpu", "auto", usedefault=True, desc="cpu, gpu or auto (the GPU when one is visible)")
    n_threads = traits.Int(1, usedefault=True, desc="numba threads")
    cache_dir = traits.Str(mandatory=True, desc="dictionaries are cached here, keyed by protocol and substrates")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")


class _ForProtocolOut(TraitedSpec):
    dictionary = File(exists=True, desc="dictionary simulated for exactly this protocol")
    description = traits.Dict(desc="its summary (provenance, checksum)")
    cached = traits.Bool(desc="True when it came from the cache")


class SimulateForProtocol(SimpleInterface):
    """A Histo-μSim dictionary simulated for the subject's own protocol (``--dictionary-source simulate``).

    Cached in ``cache_dir`` under the sha256 of the protocol (b, δ, Δ of the fitted measurements), the
    substrates' geometry checksums, the configurations, walkers, time step, seed and software version,
    so subjects sharing a protocol share one simulation.
    """

    input_spec = _ForProtocolIn
    output_spec = _ForProtocolOut

    def _run_interface(self, runtime):
        import numba

        from ..core.simulate.histo import load_substrate, simulate_dictionary

        i = self.inputs
        rows, sim_prot = unique_measurements(Protocol.from_table(i.protocol), i.b0_threshold)
        subs = [load_substrate(s) for s in i.substrates]

        def build():
            numba.set_num_threads(max(1, min(i.n_threads, numba.config.NUMBA_NUM_THREADS)))
            return simulate_dictionary(subs, sim_prot, i.d0in, i.d0ex, i.kappa, seed=i.seed, n_walkers=i.n_walkers,
                                       dt_ms=i.dt_ms, device=i.device, progress=True)

        path, dic, cached = cached_dictionary(i.cache_dir, "histousim", {
            "protocol": rows.tolist(), "substrates": [s.checksum() for s in subs], "d0in": list(i.d0in),
            "d0ex": list(i.d0ex), "kappa": list(i.kappa), "walkers": i.n_walkers, "dt": i.dt_ms, "seed": i.seed},
            build)
        self._results["dictionary"] = str(path)
        self._results["description"] = dic.select().describe()
        self._results["cached"] = cached
        return runtime


# ---- capillary flow (SpinFlowSim) -----------------------------------------------------------------
class _FlowSimIn(BaseInterfaceInputSpec):
    realisations = traits.List(traits.Dict, mandatory=True, desc="networks as JSON (Network.to_json)")
    offset = traits.Int(0, usedefault=True, desc="index of the first realisation in the whole set (seeds)")
    protocol_file = File(exists=True, mandatory=True, desc="protocol JSON (core.waveforms.protocol_to_json)")
    n_spins = traits.Int(2000, usedefault=True, desc="spins per realisation")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")
    backend = traits.Enum("scipy", "spice", usedefault=True, desc="flow solver")
    published_anb = traits.Bool(False, usedefault=True, desc="add the published ANB rule as anb_published")
    n_threads = traits.Int(0, usedefault=True, desc="numba threads (0: all)")
    track_realisation = traits.Int(-1, usedefault=True, desc="realisation (global index) whose spins are recorded")
    track_spins = traits.Int(0, usedefault=True, desc="spins recorded (for a video)")
    track_times_ms = traits.List(traits.Float, desc="times the recorded spins' positions are taken at [ms]")


class SimulateFlow(SimpleInterface):
    """Vascular signals and metrics of a chunk of network realisations."""

    input_spec = _FlowSimIn
    output_spec = _SimOut

    def _run_interface(self, runtime):
        import numba

        from ..core.simulate.flow.dictionary import simulate_realisations
        from ..core.simulate.flow.network import from_json
        from ..core.simulate.tracks import to_arrays
        from ..core.waveforms import protocol_from_json

        i = self.inputs
        if i.n_threads > 0:
            numba.set_num_threads(min(i.n_threads, numba.config.NUMBA_NUM_THREADS))
        prot = protocol_from_json(json.loads(open(i.protocol_file).read()))
        nets = [from_json(r) for r in i.realisations]
        track = None
        if i.track_spins > 0 and i.track_realisation >= 0:
            track = {"realisation": i.track_realisation, "spins": i.track_spins,
                     "times_ms": list(i.track_times_ms) if isdefined(i.track_times_ms) else [0.0]}
        from tqdm.auto import tqdm
        with tqdm(total=len(nets), unit="network", desc=f"flow {i.offset}-{i.offset + len(nets) - 1}",
                  mininterval=1) as bar:
            sig, par, tracked = simulate_realisations(nets, prot, n_spins=i.n_spins, seed=i.seed, offset=i.offset,
                                                      backend=i.backend, published_anb=i.published_anb, track=track,
                                                      progress=bar.update)
        out = cwd_path(runtime, f"flow_{i.offset:06d}.npz")
        np.savez(out, signals=sig, params=par, names=json.dumps([n.name for n in nets]),
                 **(to_arrays(tracked) if tracked is not None else {}))
        self._results["out_file"] = out
        return runtime


class _FlowAsmIn(BaseInterfaceInputSpec):
    parts = traits.List(File(exists=True), mandatory=True, desc="SimulateFlow outputs, in order")
    realisations = traits.List(traits.Dict, mandatory=True, desc="realisation parts (.npz) to assemble")
    protocol_file = File(exists=True, mandatory=True, desc="protocol JSON (core.waveforms.protocol_to_json)")
    n_spins = traits.Int(2000, usedefault=True, desc="spins per realisation")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")
    backend = traits.Enum("scipy", "spice", usedefault=True, desc="flow solver backend (scipy or spice)")
    out_file = File(mandatory=True, desc="dictionary .npz to write (with its .json)")
    track_out = traits.Str(desc="where to write the recorded spins of a part, if one has them (.npz)")


class AssembleFlowDictionary(SimpleInterface):
    """Join SimulateFlow parts into one flow Dictionary, written atomically."""

    input_spec = _FlowAsmIn
    output_spec = _AssembleOut

    def _run_interface(self, runtime):
        from ..core.simulate.flow.dictionary import assemble_flow, flow_provenance, network_ids
        from ..core.simulate.flow.network import from_json
        from ..core.waveforms import protocol_from_json

        i = self.inputs
        prot = protocol_from_json(json.loads(open(i.protocol_file).read()))
        parts = []
        for f in i.parts:
            with np.load(f) as z:
                parts.append((z["signals"], z["params"]))
        nets = [from_json(r) for r in i.realisations]
        dic = assemble_flow(parts, prot, flow_provenance(nets, i.n_spins, i.seed, {"backend": i.backend}),
                            network_ids(nets))
        self._results["dictionary"] = str(dic.save(i.out_file))
        if isdefined(i.track_out):
            save_part_track(i.parts, i.track_out)
        return runtime


class _FlowForProtocolIn(BaseInterfaceInputSpec):
    protocol = File(exists=True, mandatory=True, desc="protocol table (TSV) of the vascular measurements")
    network_files = traits.List(traits.Str, desc="user networks (.json/.csv/.npz); empty: generated defaults")
    n_spins = traits.Int(2000, usedefault=True, desc="spins per realisation")
    seed = traits.Int(0, usedefault=True, desc="random seed (walker/spin streams)")
    cache_dir = traits.Str(mandatory=True, desc="dictionaries are cached here, keyed by protocol and networks")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b at or below this is b=0 [s/mm²]")
    n_threads = traits.Int(1, usedefault=True, desc="numba threads")


class SimulateFlowForProtocol(SimpleInterface):
    """A flow dictionary simulated for the subject's own vascular measurements (the default route:
    flow simulation is cheap, so there is no protocol matching to get wrong). Cached under the sha256
    of the protocol, the realisations, spins, seed and software version."""

    input_spec = _FlowForProtocolIn
    output_spec = _ForProtocolOut

    def _run_interface(self, runtime):
        from ..core.simulate.flow.dictionary import flow_dictionary_for_protocol

        i = self.inputs
        import numba
        numba.set_num_threads(max(1, min(i.n_threads, numba.config.NUMBA_NUM_THREADS)))
        from contextlib import ExitStack

        from .progress import progress as progress_bar

        with ExitStack() as bars:
            def progress(total):
                return bars.enter_context(progress_bar(total, "SpinFlowSim dictionary", "network"))

            path, dic, cached = flow_dictionary_for_protocol(Protocol.from_table(i.protocol), i.cache_dir,
                                                             list(i.network_files), i.n_spins, i.seed,
                                                             i.b0_threshold, progress)
        self._results["dictionary"] = str(path)
        self._results["description"] = dic.select().describe()
        self._results["cached"] = cached
        return runtime
