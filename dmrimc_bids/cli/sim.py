"""`dmrimc-sim`: build dictionaries with the simulators for the user's own protocol and histology.

    dmrimc-sim histo --svg cells.svg --width-um 121.8 --protocol dwi.json --out dict.npz
    dmrimc-sim default-dictionary            # rebuild the embedded default dictionary
    dmrimc-sim flow --network net.json --qin 1e-3 5e-3 --protocol dwi.json --out flow.npz
    dmrimc-sim flow --protocol dwi.json --out flow.npz --plot --video spins.gif   # pictures and a video
    dmrimc-sim plot --dictionary dict.npz --entry 12 --out signals.png
    dmrimc-sim design --protocol dwi.tsv --snr 20 50   # expected identifiability before scanning

The Monte Carlo jobs run as a Nipype graph (workflows/simulation.py): ``--nprocs`` for MultiProc,
``--plugin SLURM --plugin-args '{"sbatch_args": "..."}'`` on a cluster.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from . import quiet_environment
from ..core.errors import EX_USAGE, InputError
from .sim_parser import apply_preset, build_parser

LOG = logging.getLogger("dmrimc_sim")


def _run_default(args, device, run) -> int:
    """dmrimc-sim default-dictionary: the generated population by diffusion-time scaling."""
    from ..core import dictionary_default as dd
    from ..workflows.simulation import build_default_dictionary

    out = Path(args.out or dd.default_dictionary_path())
    recipe = dd.RECIPES[args.recipe]
    n_substrates = args.substrates or recipe.n_substrates
    dic = build_default_dictionary(out, run, recipe=recipe, n_substrates=n_substrates, n_walkers=args.walkers,
                                   step_um=args.step_um, seed=args.seed, device=device)
    if dic is None:
        return _submitted(args, out, run)
    if args.plot:
        from ..core.simulate.histo import load_substrate
        from ..reports.simulation import plot_histo
        plot_histo([load_substrate(s) for s in dd.default_substrate_specs(n_substrates, args.seed)[:3]], dic,
                   out.with_suffix(".png"))
    print(f"dmrimc-sim: wrote {out.with_suffix('.npz')} ({len(dic)} entries x {len(dic.protocol)} measurements)")
    return 0


PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


def _run_plot(args) -> int:
    """`dmrimc-sim plot`: signal plot of a dictionary entry, or a network map / interactive view."""
    from ..reports import simulation as pictures

    out = Path(args.out)
    allowed = PICTURE_SUFFIXES + ((".html",) if args.network else ())
    if out.suffix.lower() not in allowed:
        raise InputError(f"{out}: cannot draw a {out.suffix or 'suffix-less'} file", exit_code=EX_USAGE,
                         fix=f"name the output with one of {', '.join(allowed)}")
    if not out.parent.is_dir():
        raise InputError(f"{out}: its folder does not exist", exit_code=EX_USAGE, fix=f"mkdir -p {out.parent}")
    if args.dictionary:
        from ..core.dictionary import Dictionary
        dic = Dictionary.load(args.dictionary)
        pictures.plot_signals(dic, args.entry, out)
    else:
        from ..core.simulate.flow.network import read_network
        from ..core.simulate.flow.resolve import solve_flow
        sol = solve_flow(read_network(args.network, args.inlet, args.outlet, args.qin), source=args.network)
        if out.suffix.lower() == ".html":
            pictures.network_html(sol, out)
        else:
            pictures.plot_network(sol, out)
    print(f"dmrimc-sim: wrote {out}")
    return 0


def main(argv=None) -> int:
    quiet_environment("dmrimc-sim")
    args = build_parser().parse_args(argv)
    if argv is None:  # the console command: Ctrl-C stops every worker and exits at once
        from ..workflows.execution import exit_on_interrupt
        exit_on_interrupt("dmrimc-sim", "no dictionary written")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return _run(args)
    except InputError as exc:
        print(f"dmrimc-sim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        from .run import interrupted
        return interrupted("dmrimc-sim", "no dictionary written")


def _run_flow(args, run) -> int:
    from ..core.simulate.flow.generate import default_realisations
    from ..core.simulate.flow.network import read_network
    from ..core.simulate.flow.resolve import solve_flow
    from ..bids.protocol import read_simulation_protocol
    from ..reports.video import write_flow_video
    from ..workflows.simulation import VIDEO_TRACK, simulate_flow

    prot = read_simulation_protocol(args.protocol, args.bval)
    if args.network:
        nets, sources = [], []
        for path in args.network:
            qins = args.qin or [None]
            first = read_network(path, args.inlet, args.outlet, qins[0])
            nets += [first] + [first.with_flow(q) for q in qins[1:]]
            sources += [path] * len(qins)
    else:
        nets = default_realisations()
        if args.qin:
            nets = [n.with_flow(q) for n in nets[::8] for q in args.qin]
        sources = [n.name for n in nets]
    # fail early, one clear line per bad network
    solutions = [solve_flow(n, backend=args.backend, source=src) for n, src in zip(nets, sources)]
    entry, video = _pictures_asked(args, len(nets), prot)
    shown = solutions[entry]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    track = None
    if video is not None:
        times = np.linspace(0.0, video["waveform"].duration_ms, args.video_frames)
        track = {"realisation": entry, "spins": args.video_count, "times_ms": times.tolist()}
    dic = simulate_flow(nets, prot, out, run, n_spins=args.spins, seed=args.seed,
                        per_job=args.realisations_per_job, backend=args.backend, published_anb=args.published_anb,
                        track=track, after=video and (lambda work: _video(args, video, write_flow_video, shown,
                                                                         work / VIDEO_TRACK)))
    if dic is None:
        return _submitted(args, out, run)
    if args.plot:
        from ..reports.simulation import plot_network, plot_signals
        plot_network(shown, out.with_suffix(".png"))
        plot_signals(dic, entry, out.with_name(out.stem + "_signals.png"), planar=shown.network.is_planar)
        if not shown.network.is_planar:
            _network_html(shown, out.with_name(out.stem + "_network.html"))
    print(f"dmrimc-sim: wrote {out.with_suffix('.npz')} ({len(dic)} realisations x {len(dic.protocol)} measurements)")
    return 0


def _pictures_asked(args, n_entries: int, prot) -> tuple:
    """(entry, video settings or None), checked before anything is simulated: one clear error for an
    entry out of range, a bad video name, a missing ffmpeg or a measurement without gradient."""
    entry = args.show_entry
    if not 0 <= entry < n_entries:
        raise InputError(f"--show-entry {entry}: the dictionary has {n_entries} entries", exit_code=EX_USAGE,
                         fix=f"give --show-entry between 0 and {n_entries - 1}")
    if args.video is None:
        return entry, None
    from ..core.waveforms import protocol_waveforms
    from ..reports.video import check_video_path

    check_video_path(args.video)
    waves = protocol_waveforms(prot)
    m = args.video_measurement
    if m is None:
        m = max(range(len(prot)), key=lambda k: (prot.b[k], waves[k].duration_ms if waves[k] else 0.0))
    if not 0 <= m < len(prot) or waves[m] is None or prot.b[m] <= 0:
        raise InputError(f"--video-measurement {m}: not a diffusion-weighted row of the protocol ({len(prot)} rows)",
                         exit_code=EX_USAGE, fix="give the row of a measurement with b > 0, or leave it out")
    return entry, {"waveform": waves[m], "b": float(prot.b[m]), "measurement": m}


def _video(args, video, write, shown, track_file) -> None:
    """Write --video of the recorded track (reports.video.write_flow_video or write_walker_video)."""
    extra = {"frames": args.video_frames, "phase": args.video_phase} if args.command == "histo" else {}
    n = write(args.video, shown, track_file, video["waveform"], video["b"], fps=args.video_fps, dpi=args.video_dpi,
              **extra)
    print(f"dmrimc-sim: wrote {args.video} ({n} frames)")


def _network_html(solution, out):
    from ..reports.simulation import network_html
    try:
        network_html(solution, out)
    except InputError as exc:  # plotly is optional: the PNG is enough
        LOG.warning("dmrimc-sim: no interactive view: %s (%s)", exc, exc.fix)


def _submitted(args, out, run) -> int:
    print(f"dmrimc-sim: submitted the simulation jobs to {run.execution.plugin} (work dir "
          f"{args.work_dir}); "
          f"{out.with_suffix('.npz')} appears when the last one finishes"
          + ("; rerun with --plugin Linear to collect them and draw the pictures"
             if args.plot or args.video else ""), file=sys.stderr)
    return 0


def _run(args) -> int:
    if args.command == "plot":
        return _run_plot(args)
    if args.command == "design":
        from .design import run_design
        return run_design(args)
    run = _simulation_run(args)  # an unknown --plugin or bad --plugin-args fails here,
    run.threads()                # a bad --threads-per-job here
    if args.command == "flow":
        return _run_flow(args, run)
    from ..core.simulate.histo import config_grid, load_substrate
    from ..core.simulate.montecarlo import resolve_device
    from ..bids.protocol import read_simulation_protocol
    from ..reports.video import write_walker_video
    from ..workflows.simulation import VIDEO_TRACK, simulate_histo

    if args.device == "gpu" and resolve_device("auto") != "gpu":
        raise InputError("--device gpu: no CUDA GPU is visible", exit_code=EX_USAGE,
                         fix="install the [gpu] extra on a machine with an NVIDIA GPU, or use --device cpu")
    device = resolve_device(args.device)
    if args.command == "default-dictionary":
        return _run_default(args, device, run)
    if args.command == "histo":
        apply_preset(args)
        prot = read_simulation_protocol(args.protocol, args.bval)
        specs = [{"svg": str(p.resolve()), "scale_um_per_unit": args.scale, "width_um": args.width_um,
                  "tolerance_um": args.tolerance_um} for p in args.svg]
        substrates = [load_substrate(s) for s in specs]  # fail early, one clear line per bad SVG
        d0in, d0ex, kappa, area, out = args.d0in, args.d0ex, args.kappa, args.metrics_area, args.out
    for s in substrates:
        for note in s.notes:
            LOG.info("%s: %s", s.name, note)
    n_cfg = len(config_grid(d0in, d0ex, kappa))
    entry, video = _pictures_asked(args, len(substrates) * n_cfg, prot)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    track = None
    if video is not None:
        track = {"substrate": entry // n_cfg, "config": entry % n_cfg, "walkers": args.video_count}
    dic = simulate_histo(specs, prot, d0in, d0ex, kappa, out, run, n_walkers=args.walkers,
                         dt_ms=args.dt_ms, seed=args.seed, configs_per_job=args.configs_per_job, device=device,
                         grid_um=args.grid_um, area=area, track=track,
                         after=video and (lambda work: _video(args, video, write_walker_video,
                                                              substrates[entry // n_cfg], work / VIDEO_TRACK)))
    if dic is None:
        return _submitted(args, out, run)
    if args.plot:
        from ..reports.simulation import plot_histo, plot_signals
        plot_histo(substrates[:3], dic, out.with_suffix(".png"))
        plot_signals(dic, entry, out.with_name(out.stem + "_signals.png"))
    print(f"dmrimc-sim: wrote {out.with_suffix('.npz')} ({len(dic)} entries x {len(dic.protocol)} measurements)")
    return 0


def _simulation_run(args):
    """The SimulationRun of the command line: plugin, work dir, verbosity, threads per job."""
    from ..workflows import execution
    from ..workflows.simulation import SimulationRun

    return SimulationRun(execution.choose(args.plugin, execution.parse_plugin_args(args.plugin_args), args.nprocs,
                                          work_dir=args.work_dir),
                         args.work_dir, args.verbose, args.threads_per_job, args.nprocs)


if __name__ == "__main__":
    sys.exit(main())
