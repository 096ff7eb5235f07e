"""`dmrimc-sim`'s command line: the subcommands histo, flow, default-dictionary, design and plot, and their
options (cli/sim.py runs them)."""

from __future__ import annotations

from pathlib import Path

from . import add_version
from .argtypes import UsageParser, nonnegative, positive

DESCRIPTION = "dmrimc-sim: build dictionaries with the simulators for your own protocol and histology"

class _Parser(UsageParser):
    show_usage = False


DEVICE_HELP = "walk on a CUDA GPU (gpu; needs the [gpu] extra), the CPU, or a GPU when one is present (auto)"
VERBOSE_HELP = "-v: progress and Nipype's node messages; -vv: debug"

def _common(p):
    from ..core.simulate.montecarlo import DEFAULT_DT_MS, HISTOUSIM_WALKERS
    p.add_argument("--walkers", type=positive(int), default=None,
                   help=f"walkers per configuration (--preset quick: {PRESETS['quick']['walkers']}, histousim: "
                        f"{HISTOUSIM_WALKERS})")
    p.add_argument("--dt-ms", type=positive(float), default=DEFAULT_DT_MS, help="time step [ms] (110/2370)")
    p.add_argument("--grid-um", type=positive(float), default=1.0, help="membrane look-up grid [µm] (1)")
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
    d.add_argument("--recipe", choices=sorted(dd.RECIPES), default=dd.SHIPPED_RECIPE,
                   help=f"population, protocol grid and design (core/dictionary_default.RECIPES; {dd.SHIPPED_RECIPE}: "
                        "the shipped one)")
    d.add_argument("--substrates", type=positive(int), default=None,
                   help="generated substrates (the recipe's: v1 128, v2 256)")
    d.add_argument("--walkers", type=positive(int), default=dd.DICTIONARY_WALKERS,
                   help=f"walkers per walk ({dd.DICTIONARY_WALKERS}; fewer on a CPU, e.g. 2000)")
    d.add_argument("--step-um", type=positive(float), default=DEFAULT_STEP_UM,
                   help=f"walker step length [µm] ({DEFAULT_STEP_UM})")
    d.add_argument("--seed", type=int, default=dd.DEFAULT_SEED, help=f"population and walker seed ({dd.DEFAULT_SEED})")
    d.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto", help=DEVICE_HELP)
    _execution_flags(d)
    d.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="Nipype work dir (kept; an interrupted build rerun with it resumes from the finished "
                        "substrates)")
    d.add_argument("--plot", action="store_true", help="write <out>.png (substrates and example signals)")
    d.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)


def _picture_flags(p, movers: str, plots: str):
    p.add_argument("--plot", action="store_true", help=f"write {plots}")
    p.add_argument("--show-entry", type=int, default=0, metavar="K",
                   help="dictionary entry (substrate-major for histo) the signal plot and the video show (0)")
    p.add_argument("--video", type=Path, default=None, metavar="OUT.gif|OUT.mp4",
                   help=f"write a video of --show-entry's {movers} as the simulation moved them (GIF: Pillow; "
                        "MP4: needs ffmpeg)")
    p.add_argument(f"--video-{movers}", dest="video_count", type=positive(int), default=300, metavar="N",
                   help=f"{movers} shown in the video (300)")
    p.add_argument("--video-frames", type=positive(int), default=120, metavar="N", help="frames (120)")
    p.add_argument("--video-fps", type=positive(float), default=20.0, metavar="F", help="frames per second (20)")
    p.add_argument("--video-dpi", type=positive(int), default=100, metavar="DPI",
                   help="resolution (100: about 720 pixels wide)")
    p.add_argument("--video-measurement", type=int, default=None, metavar="M",
                   help="protocol row whose gradient waveform the video draws (default: the largest b)")


def _execution_flags(p):
    p.add_argument("--nprocs", type=positive(int), default=1, help="parallel jobs on this machine (MultiProc)")
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
    g.add_argument("--scale", type=positive(float), metavar="UM_PER_UNIT", help="µm per SVG user unit")
    g.add_argument("--width-um", type=positive(float), metavar="W", help="width of the substrate tile [µm]")
    h.add_argument("--tolerance-um", type=positive(float), default=0.01, help="curve flattening tolerance [µm]")
    h.add_argument("--protocol", type=Path, required=True,
                   help="TSV (b, small_delta, big_delta [, echo_time, waveform]) or DWI .json sidecar + .bval")
    h.add_argument("--bval", type=Path, default=None, help="the sidecar's .bval (default: beside it)")
    h.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick (default): 3 D0in x 3 D0ex x 3 kappa with 5000 walkers, about a minute for a small "
                        "protocol on 2 cores; histousim: the published 5 x 5 x 9 grid with 20000 walkers (about 20x "
                        "longer). --d0in/--d0ex/--kappa/--walkers override it")
    h.add_argument("--d0in", type=positive(float), nargs="+", default=None, help="µm²/ms (from --preset)")
    h.add_argument("--d0ex", type=positive(float), nargs="+", default=None, help="µm²/ms (from --preset)")
    h.add_argument("--kappa", type=nonnegative, nargs="+", default=None, help="µm/s (from --preset)")
    h.add_argument("--metrics-area", choices=("polygon", "hull"), default="polygon",
                   help="cell areas for the metrics (hull: as the published scripts)")
    h.add_argument("--out", type=Path, required=True, help="dictionary .npz (its .json beside it)")
    _common(h)


def build_parser():
    parser = _Parser(prog="dmrimc-sim", description=DESCRIPTION)
    add_version(parser, "dmrimc-sim")
    sub = parser.add_subparsers(dest="command", required=True)
    _histo_parser(sub)
    f = sub.add_parser("flow", help="SpinFlowSim dictionary: blood flow in capillary networks")
    f.add_argument("--network", type=Path, nargs="+", default=None,
                   help="network file(s): .json, .csv (with --inlet/--outlet/--qin) or converted SpinFlowSim .npz; "
                        "default: the project's generated capillary networks")
    f.add_argument("--inlet", type=int, default=None, help="inlet node id (overrides the file)")
    f.add_argument("--outlet", type=int, default=None, help="outlet node id (overrides the file)")
    f.add_argument("--qin", type=positive(float), nargs="+", default=None,
                   help="input flow(s) [mm³/s]: one realisation per network and value (default: the file's)")
    f.add_argument("--protocol", type=Path, required=True,
                   help="TSV (b, small_delta, big_delta [, waveform PGSE/TRSE/file]) or DWI .json sidecar + .bval")
    f.add_argument("--bval", type=Path, default=None, help="the sidecar's .bval (default: beside it)")
    f.add_argument("--spins", type=positive(int), default=2000, help="spins per realisation (2000)")
    f.add_argument("--backend", choices=("scipy", "spice"), default="scipy",
                   help="flow solver: scipy.sparse (default) or PySpice/ngspice (extra [spice])")
    f.add_argument("--published-anb", action="store_true",
                   help="add anb_published: ANB by the published (time-step artefact) rule, for comparisons")
    f.add_argument("--realisations-per-job", type=positive(int), default=100,
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
    add_design_parser(sub, positive)
    pl = sub.add_parser("plot", help="pictures of an existing dictionary or network, with no simulation")
    g = pl.add_mutually_exclusive_group(required=True)
    g.add_argument("--dictionary", type=Path, help="dictionary .npz: signal vs b of --entry per diffusion time")
    g.add_argument("--network", type=Path,
                   help="network file (.json/.csv/.npz): map by velocity and flow (.png/.svg/.pdf), or an "
                        "interactive 3D view (.html, extra [plots])")
    pl.add_argument("--entry", type=int, default=0, metavar="K", help="dictionary entry (0)")
    pl.add_argument("--inlet", type=int, default=None, help="inlet node id (overrides the file)")
    pl.add_argument("--outlet", type=int, default=None, help="outlet node id (overrides the file)")
    pl.add_argument("--qin", type=positive(float), default=None, help="input flow [mm³/s] (default: the file's)")
    pl.add_argument("--out", type=Path, required=True, help="picture to write")
    pl.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    return parser
