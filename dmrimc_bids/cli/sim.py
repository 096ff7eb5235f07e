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

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import run as _run_cli  # noqa: F401 - its environment settings (quiet resource tracker, no update check)
from . import add_version
from ..core.errors import EX_USAGE, InputError

LOG = logging.getLogger("dmrimc_sim")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)


DEVICE_HELP = "walk on a CUDA GPU (gpu; needs the [gpu] extra), the CPU, or a GPU when one is present (auto)"
VERBOSE_HELP = "-v: progress and Nipype's node messages; -vv: debug"

def _positive(kind):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return v
    return conv


def _nonnegative(text):
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def _common(p):
    from ..core.simulate.montecarlo import DEFAULT_DT_MS, DEFAULT_WALKERS
    p.add_argument("--walkers", type=_positive(int), default=None,
                   help=f"walkers per configuration (--preset quick: {PRESETS['quick']['walkers']}, histousim: "
                        f"{DEFAULT_WALKERS})")
    p.add_argument("--dt-ms", type=_positive(float), default=DEFAULT_DT_MS, help="time step [ms] (110/2370)")
    p.add_argument("--grid-um", type=_positive(float), default=1.0, help="membrane look-up grid [µm] (1)")
    p.add_argument("--seed", type=int, default=0, help="walker seed (0)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto", help=DEVICE_HELP)
    _execution_flags(p)
    p.add_argument("--configs-per-job", type=int, default=0, help="configurations per job (0: one job per substrate)")
    p.add_argument("-w", "--work-dir", type=Path, default=None, help="Nipype work dir (kept; reruns reuse it)")
    _picture_flags(p, "walkers", "<out>.png (substrates and example signals) and <out>_signals.png (signal vs b "
                                 "of --show-entry, with free diffusion)")
    p.add_argument("--video-phase", action="store_true",
                   help="colour the video's walkers by their phase for --video-measurement (cyclic map)")
    p.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)


def _default_flags(d):
    from ..core import dictionary_default as dd
    from ..core.simulate.scaled import DEFAULT_STEP_UM
    d.add_argument("--out", type=Path, default=None, help="default: the package's data folder")
    d.add_argument("--substrates", type=_positive(int), default=dd.DEFAULT_N_SUBSTRATES,
                   help=f"generated substrates ({dd.DEFAULT_N_SUBSTRATES})")
    d.add_argument("--walkers", type=_positive(int), default=dd.DEFAULT_WALKERS,
                   help=f"walkers per walk ({dd.DEFAULT_WALKERS})")
    d.add_argument("--step-um", type=_positive(float), default=DEFAULT_STEP_UM,
                   help=f"walker step length [µm] ({DEFAULT_STEP_UM})")
    d.add_argument("--seed", type=int, default=dd.DEFAULT_SEED, help=f"population and walker seed ({dd.DEFAULT_SEED})")
    d.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto", help=DEVICE_HELP)
    _execution_flags(d)
    d.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="Nipype work dir (kept; an interrupted build rerun with it resumes from the finished "
                        "substrates)")
    d.add_argument("--plot", action="store_true", help="write <out>.png (substrates and example signals)")
    d.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)


def _run_default(args, device) -> int:
    """dmrimc-sim default-dictionary: the generated population by diffusion-time scaling."""
    from ..core import dictionary_default as dd
    from ..core.simulate.histo import load_substrate
    from ..workflows.simulation import init_default_dictionary_wf

    specs = dd.default_substrate_specs(args.substrates, args.seed)
    out = Path(args.out or dd.default_dictionary_path())
    out.parent.mkdir(parents=True, exist_ok=True)
    prot = dd.DEFAULT_TIMING_GRID.protocol()
    t0 = time.perf_counter()
    dic = run_workflow(lambda work: init_default_dictionary_wf(
        specs, prot, dd.DEFAULT_DESIGN, out, work, n_walkers=args.walkers, step_um=args.step_um, seed=args.seed,
        device=device, area=dd.DEFAULT_METRICS_AREA, n_threads=threads_per_job(args)), out, args)
    if dic is None:
        return _submitted(args, out)
    dic.provenance.update(timing_grid=dd.DEFAULT_TIMING_GRID.describe(), design=dd.DEFAULT_DESIGN,
                          population={"n_substrates": args.substrates, "seed": args.seed,
                                      "generator": "core.dictionary_default.default_substrate_specs"},
                          build={"wall_seconds": round(time.perf_counter() - t0, 1), "nprocs": args.nprocs,
                                 "threads_per_job": threads_per_job(args), "device": device})
    dd.finalise_default(dic, out)
    if args.plot:
        from ..reports.simulation import plot_histo
        plot_histo([load_substrate(s) for s in specs[:3]], dic, out.with_suffix(".png"))
    print(f"dmrimc-sim: wrote {out.with_suffix('.npz')} ({len(dic)} entries x {len(dic.protocol)} measurements)")
    return 0


def _picture_flags(p, movers: str, plots: str):
    p.add_argument("--plot", action="store_true", help=f"write {plots}")
    p.add_argument("--show-entry", type=int, default=0, metavar="K",
                   help="dictionary entry (substrate-major for histo) the signal plot and the video show (0)")
    p.add_argument("--video", type=Path, default=None, metavar="OUT.gif|OUT.mp4",
                   help=f"write a video of --show-entry's {movers} as the simulation moved them (GIF: Pillow; "
                        "MP4: needs ffmpeg)")
    p.add_argument(f"--video-{movers}", dest="video_count", type=_positive(int), default=300, metavar="N",
                   help=f"{movers} shown in the video (300)")
    p.add_argument("--video-frames", type=_positive(int), default=120, metavar="N", help="frames (120)")
    p.add_argument("--video-fps", type=_positive(float), default=20.0, metavar="F", help="frames per second (20)")
    p.add_argument("--video-dpi", type=_positive(int), default=100, metavar="DPI",
                   help="resolution (100: about 720 pixels wide)")
    p.add_argument("--video-measurement", type=int, default=None, metavar="M",
                   help="protocol row whose gradient waveform the video draws (default: the largest b)")


def _execution_flags(p):
    p.add_argument("--nprocs", type=_positive(int), default=1, help="parallel jobs on this machine (MultiProc)")
    from ..workflows.execution import PLUGINS
    p.add_argument("--plugin", default=None, metavar="NAME",
                   help=f"Nipype plugin, one of {', '.join(PLUGINS)}; cluster plugins need -w on a shared file "
                        "system (docs/cluster.md)")
    p.add_argument("--plugin-args", default=None, metavar="JSON", help="the plugin's arguments: JSON object or file")
    p.add_argument("--threads-per-job", type=int, default=None, metavar="N",
                   help="numba threads per simulation job, requested from the scheduler (default: all cores "
                        "with one local process, else 1)")


#: dmrimc-sim histo presets: D0in = D0ex values [µm²/ms], κ values [µm/s], walkers per configuration
#: (histousim: the published grid, core.simulate.histo.HISTOUSIM_D0/HISTOUSIM_KAPPA, and walkers).
PRESETS = {"quick": {"d0": [0.8, 1.9, 3.0], "kappa": [0.0, 20.0, 40.0], "walkers": 5000},
           "histousim": {"d0": "HISTOUSIM_D0", "kappa": "HISTOUSIM_KAPPA", "walkers": 20000}}


def apply_preset(args) -> None:
    """Fill --d0in/--d0ex/--kappa/--walkers left out from --preset."""
    from ..core.simulate import histo
    preset = {k: getattr(histo, v).tolist() if isinstance(v, str) else v for k, v in PRESETS[args.preset].items()}
    args.d0in = args.d0in or list(preset["d0"])
    args.d0ex = args.d0ex or list(preset["d0"])
    args.kappa = args.kappa if args.kappa is not None else list(preset["kappa"])
    args.walkers = args.walkers or preset["walkers"]


def _histo_parser(sub) -> None:
    h = sub.add_parser("histo", help="Histo-μSim dictionary: Monte Carlo in traced cell substrates")
    h.add_argument("--svg", type=Path, nargs="+", required=True, help="SVG(s) of traced cells (one substrate each)")
    g = h.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", type=_positive(float), metavar="UM_PER_UNIT", help="µm per SVG user unit")
    g.add_argument("--width-um", type=_positive(float), metavar="W", help="width of the substrate tile [µm]")
    h.add_argument("--tolerance-um", type=_positive(float), default=0.01, help="curve flattening tolerance [µm]")
    h.add_argument("--protocol", type=Path, required=True,
                   help="TSV (b, small_delta, big_delta [, echo_time, waveform]) or DWI .json sidecar + .bval")
    h.add_argument("--bval", type=Path, default=None, help="the sidecar's .bval (default: beside it)")
    h.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick (default): 3 D0in x 3 D0ex x 3 kappa with 5000 walkers, about a minute for a small "
                        "protocol on 2 cores; histousim: the published 5 x 5 x 9 grid with 20000 walkers (about 20x "
                        "longer). --d0in/--d0ex/--kappa/--walkers override it")
    h.add_argument("--d0in", type=_positive(float), nargs="+", default=None, help="µm²/ms (from --preset)")
    h.add_argument("--d0ex", type=_positive(float), nargs="+", default=None, help="µm²/ms (from --preset)")
    h.add_argument("--kappa", type=_nonnegative, nargs="+", default=None, help="µm/s (from --preset)")
    h.add_argument("--metrics-area", choices=("polygon", "hull"), default="polygon",
                   help="cell areas for the metrics (hull: as the published scripts)")
    h.add_argument("--out", type=Path, required=True, help="dictionary .npz (its .json beside it)")
    _common(h)


def build_parser():
    parser = _Parser(prog="dmrimc-sim", description=__doc__.splitlines()[0])
    add_version(parser, "dmrimc-sim")
    sub = parser.add_subparsers(dest="command", required=True)
    _histo_parser(sub)
    f = sub.add_parser("flow", help="SpinFlowSim dictionary: blood flow in capillary networks")
    f.add_argument("--network", type=Path, nargs="+", default=None,
                   help="network file(s): .json, .csv (with --inlet/--outlet/--qin) or converted SpinFlowSim .npz; "
                        "default: the project's generated capillary networks")
    f.add_argument("--inlet", type=int, default=None, help="inlet node id (overrides the file)")
    f.add_argument("--outlet", type=int, default=None, help="outlet node id (overrides the file)")
    f.add_argument("--qin", type=_positive(float), nargs="+", default=None,
                   help="input flow(s) [mm³/s]: one realisation per network and value (default: the file's)")
    f.add_argument("--protocol", type=Path, required=True,
                   help="TSV (b, small_delta, big_delta [, waveform PGSE/TRSE/file]) or DWI .json sidecar + .bval")
    f.add_argument("--bval", type=Path, default=None, help="the sidecar's .bval (default: beside it)")
    f.add_argument("--spins", type=_positive(int), default=2000, help="spins per realisation (2000)")
    f.add_argument("--backend", choices=("scipy", "spice"), default="scipy",
                   help="flow solver: scipy.sparse (default) or PySpice/ngspice (extra [spice])")
    f.add_argument("--published-anb", action="store_true",
                   help="add anb_published: ANB by the published (time-step artefact) rule, for comparisons")
    f.add_argument("--realisations-per-job", type=_positive(int), default=100,
                   help="network realisations (flow rates) per job (100)")
    f.add_argument("--seed", type=int, default=0, help="spin seed (0)")
    _execution_flags(f)
    f.add_argument("-w", "--work-dir", type=Path, default=None, help="Nipype work dir (kept; reruns reuse it)")
    _picture_flags(f, "spins", "<out>.png (--show-entry's network coloured by velocity and by flow), "
                               "<out>_signals.png (its signal vs b) and, for a 3D network with plotly installed, "
                               "<out>_network.html (interactive)")
    f.add_argument("--out", type=Path, required=True, help="dictionary .npz (its .json beside it)")
    f.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    d = sub.add_parser("default-dictionary", help="rebuild the embedded default dictionary (generated substrates)")
    _default_flags(d)
    from .design import add_design_parser
    add_design_parser(sub, _positive)
    pl = sub.add_parser("plot", help="pictures of an existing dictionary or network, with no simulation")
    g = pl.add_mutually_exclusive_group(required=True)
    g.add_argument("--dictionary", type=Path, help="dictionary .npz: signal vs b of --entry per diffusion time")
    g.add_argument("--network", type=Path,
                   help="network file (.json/.csv/.npz): map by velocity and flow (.png/.svg/.pdf), or an "
                        "interactive 3D view (.html, extra [plots])")
    pl.add_argument("--entry", type=int, default=0, metavar="K", help="dictionary entry (0)")
    pl.add_argument("--inlet", type=int, default=None, help="inlet node id (overrides the file)")
    pl.add_argument("--outlet", type=int, default=None, help="outlet node id (overrides the file)")
    pl.add_argument("--qin", type=_positive(float), default=None, help="input flow [mm³/s] (default: the file's)")
    pl.add_argument("--out", type=Path, required=True, help="picture to write")
    pl.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    return parser


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


def _run_flow(args) -> int:
    from ..core.simulate.flow.generate import default_realisations
    from ..core.simulate.flow.network import read_network
    from ..core.simulate.flow.resolve import solve_flow
    from ..bids.protocol import read_simulation_protocol
    from ..workflows.simulation import init_flow_simulation_wf

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
    wf_builder = lambda work: init_flow_simulation_wf(  # noqa: E731
        nets, prot, out, work, n_spins=args.spins, seed=args.seed, per_job=args.realisations_per_job,
        backend=args.backend, published_anb=args.published_anb, n_threads=threads_per_job(args),
        track=track and {**track, "out": work / VIDEO_TRACK})
    dic = run_workflow(wf_builder, out, args,
                       after=video and (lambda work: _flow_video(args, shown, work / VIDEO_TRACK, video)))
    if dic is None:
        return _submitted(args, out)
    if args.plot:
        from ..reports.simulation import plot_network, plot_signals
        plot_network(shown, out.with_suffix(".png"))
        plot_signals(dic, entry, out.with_name(out.stem + "_signals.png"), planar=shown.network.is_planar)
        if not shown.network.is_planar:
            _network_html(shown, out.with_name(out.stem + "_network.html"))
    print(f"dmrimc-sim: wrote {out.with_suffix('.npz')} ({len(dic)} realisations x {len(dic.protocol)} measurements)")
    return 0


#: Name of the recorded spins/walkers file in the work dir (core.simulate.tracks).
VIDEO_TRACK = "video_track.npz"


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


def _flow_video(args, solution, track_file, video):
    from ..core.simulate.tracks import load_track
    from ..reports.video import FlowAnimation, save_animation

    anim = FlowAnimation(solution, load_track(track_file), video["waveform"], video["b"], dpi=args.video_dpi)
    save_animation(anim, args.video, fps=args.video_fps)
    print(f"dmrimc-sim: wrote {args.video} ({anim.n_frames} frames)")


def _histo_video(args, substrate, track_file, video):
    from ..core.simulate.tracks import load_track
    from ..reports.video import WalkerAnimation, frame_indices, save_animation

    track = load_track(track_file)
    anim = WalkerAnimation(substrate, track, frame_indices(track.position_um.shape[1], args.video_frames),
                           waveform=video["waveform"], b=video["b"],
                           colour="phase" if args.video_phase else "compartment", dpi=args.video_dpi)
    save_animation(anim, args.video, fps=args.video_fps)
    print(f"dmrimc-sim: wrote {args.video} ({anim.n_frames} frames)")


def _network_html(solution, out):
    from ..reports.simulation import network_html
    try:
        network_html(solution, out)
    except InputError as exc:  # plotly is optional: the PNG is enough
        LOG.warning("dmrimc-sim: no interactive view: %s (%s)", exc, exc.fix)


def _submitted(args, out) -> int:
    print(f"dmrimc-sim: submitted the simulation jobs to {_execution(args).plugin} (work dir {args.work_dir}); "
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
    threads_per_job(args)  # an unknown --plugin or bad --plugin-args/--threads-per-job fails here
    if args.command == "flow":
        return _run_flow(args)
    from ..core.simulate.histo import config_grid, load_substrate
    from ..core.simulate.montecarlo import resolve_device
    from ..bids.protocol import read_simulation_protocol

    if args.device == "gpu" and resolve_device("auto") != "gpu":
        raise InputError("--device gpu: no CUDA GPU is visible", exit_code=EX_USAGE,
                         fix="install the [gpu] extra on a machine with an NVIDIA GPU, or use --device cpu")
    device = resolve_device(args.device)
    if args.command == "default-dictionary":
        return _run_default(args, device)
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
    dic = run_histo_workflow(specs, prot, d0in, d0ex, kappa, out, args, device, area, track=track,
                             after=video and (lambda work: _histo_video(args, substrates[entry // n_cfg],
                                                                         work / VIDEO_TRACK, video)))
    if dic is None:
        return _submitted(args, out)
    if args.plot:
        from ..reports.simulation import plot_histo, plot_signals
        plot_histo(substrates[:3], dic, out.with_suffix(".png"))
        plot_signals(dic, entry, out.with_name(out.stem + "_signals.png"))
    print(f"dmrimc-sim: wrote {out.with_suffix('.npz')} ({len(dic)} entries x {len(dic.protocol)} measurements)")
    return 0


def run_histo_workflow(specs, prot, d0in, d0ex, kappa, out, args, device, area, track=None, after=None):
    """Build and run the Monte Carlo graph; returns the Dictionary written to ``out`` (track, after: as
    for init_histo_simulation_wf and run_workflow, the track written to the work dir's VIDEO_TRACK)."""
    from ..workflows.simulation import init_histo_simulation_wf

    return run_workflow(lambda work: init_histo_simulation_wf(
        specs, prot, d0in, d0ex, kappa, out, work, n_walkers=args.walkers, dt_ms=args.dt_ms, seed=args.seed,
        configs_per_job=args.configs_per_job, device=device, grid_um=args.grid_um, area=area,
        n_threads=threads_per_job(args), track=track and {**track, "out": work / VIDEO_TRACK}), out, args,
        after=after)


def _execution(args):
    from ..workflows import execution
    return execution.choose(args.plugin, execution.parse_plugin_args(args.plugin_args), args.nprocs,
                            work_dir=args.work_dir)


def threads_per_job(args) -> int:
    """numba threads of each simulation job: --threads-per-job, else all cores (0) for one local process."""
    if args.threads_per_job is not None:
        if args.threads_per_job < 1:
            raise InputError(f"--threads-per-job {args.threads_per_job}", exit_code=EX_USAGE,
                             fix="give --threads-per-job >= 1")
        return args.threads_per_job
    return 0 if _execution(args).plugin == "Linear" else 1


def run_workflow(build, out, args, after=None):
    """Run the graph build(work_dir) with the chosen plugin; returns the Dictionary written to ``out``,
    or None when a graph plugin (SLURMGraph, ...) only submitted the jobs. after(work_dir), if given,
    runs once the graph has finished, before a temporary work dir is removed."""
    from ..core.dictionary import Dictionary
    from ..workflows import execution, nipype_logging

    run_with = _execution(args)
    tmp = None
    work = args.work_dir
    if work is None:
        tmp = work = Path(tempfile.mkdtemp(prefix="dmrimc_sim_"))
        execution.TEMPORARY_DIRS.append(tmp)
    work = Path(work).resolve()
    execution.configure(run_with, work)
    nipype_logging.route(args.verbose, work / "nipype.log" if args.work_dir else None)
    wf = build(work)
    t0 = time.perf_counter()
    try:
        if execution.run(wf, run_with) is None:
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


if __name__ == "__main__":
    sys.exit(main())
