"""Videos of simulations, drawn from the positions the simulation itself recorded (no second simulation).

- `FlowAnimation`: spins moving through a resolved network (`spins.SpinTrack`), the network copies of the
  periodic boundary drawn as the spins enter them, a time stamp, and the gradient waveform beneath with
  a cursor in sync;
- `WalkerAnimation`: Monte Carlo walkers (`montecarlo.WalkerTrack`) among the cell polygons of a
  substrate, intra- and extra-cellular in two colours, or coloured by their accumulated phase;
- `save_animation`: GIF through Pillow (no system tool needed) or MP4 through ffmpeg (Debian ``ffmpeg``,
  or the binary of the ``imageio-ffmpeg`` wheel, extra ``[video]``), written atomically.

Each animation's ``draw(k)`` sets frame k and is what the writer calls, so the tests can read back the
drawn positions. Units: µm, ms, G in mT/m, b in s/mm².
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..core.errors import EX_USAGE, InputError
from .figures import pyplot

#: Video formats and their writers.
VIDEO_SUFFIXES = {".gif": "pillow", ".mp4": "ffmpeg"}
INTRA_COLOUR, EXTRA_COLOUR, SPIN_COLOUR = "#e6550d", "#3182bd", "#d62728"


def find_ffmpeg() -> str | None:
    """Path of an ffmpeg executable: the system's (PATH) or the imageio-ffmpeg wheel's; None if neither."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def check_video_path(path) -> str:
    """The writer for a video path ('pillow' for .gif, 'ffmpeg' for .mp4), or one clear InputError
    before any simulation runs: unknown suffix, or an MP4 without ffmpeg."""
    path = Path(path)
    writer = VIDEO_SUFFIXES.get(path.suffix.lower())
    if writer is None:
        raise InputError(f"{path}: a video must be .gif or .mp4", exit_code=EX_USAGE,
                         fix="name the output OUT.gif (Pillow, no system tools) or OUT.mp4 (needs ffmpeg)")
    if writer == "ffmpeg" and find_ffmpeg() is None:
        raise InputError(f"{path}: writing MP4 needs ffmpeg, which is not installed", exit_code=EX_USAGE,
                         fix="apt-get install ffmpeg (Debian/Ubuntu), pip install 'dmrimc-bids[video]', "
                             "or write a .gif")
    if not path.parent.is_dir():
        raise InputError(f"{path}: its folder does not exist", exit_code=EX_USAGE, fix=f"mkdir -p {path.parent}")
    return writer


def frame_indices(n_samples: int, n_frames: int) -> np.ndarray:
    """n_frames indices spread evenly over n_samples recorded samples (first and last included)."""
    n_frames = max(1, min(int(n_frames), int(n_samples)))
    return np.unique(np.round(np.linspace(0, n_samples - 1, n_frames)).astype(int))


def _layout(aspect: float, with_wave: bool, width_in: float = 7.2):
    """(figure, picture axes, colour-bar axes, waveform axes or None) for a picture of height/width
    `aspect`, the waveform panel beneath it; sizes in inches, even pixel counts at 100 dpi (for MP4)."""
    plt = pyplot()
    img_w = 0.72 * width_in
    img_h = float(np.clip(img_w * aspect, 2.2, 7.5))
    img_w = min(img_w, img_h / aspect) if aspect > 0 else img_w
    wave_h = 1.25 if with_wave else 0.0
    bottom, gap, top = 0.55, (0.75 if with_wave else 0.0), 0.45
    height = bottom + wave_h + gap + img_h + top
    height = np.ceil(height * 50) / 50  # 100 dpi: an even number of pixels
    fig = plt.figure(figsize=(width_in, height))
    left = 0.95 / width_in
    ax = fig.add_axes((left, (bottom + wave_h + gap) / height, img_w / width_in, img_h / height))
    cax = fig.add_axes((left + (img_w + 0.15) / width_in, (bottom + wave_h + gap) / height, 0.18 / width_in,
                        img_h / height))
    axg = fig.add_axes((left, bottom / height, img_w / width_in, wave_h / height)) if with_wave else None
    return fig, ax, cax, axg


def _waveform_panel(ax, waveform, b, t_max):
    """Draw G(t) [mT/m] of waveform played for b (unit shape if b is None); return the cursor line."""
    amp = waveform.amplitude_for_b(b) if b else 1.0
    t = np.asarray(waveform.breaks_ms, float)
    g = np.asarray(waveform.values, float) * amp
    tt = np.concatenate([[0.0], np.repeat(t[1:-1], 2), [t[-1]]])
    gg = np.repeat(g, 2)
    if t[-1] < t_max:
        tt, gg = np.append(tt, [t[-1], t_max]), np.append(gg, [0.0, 0.0])
    ax.fill_between(tt, gg, color="0.75", lw=0)
    ax.plot(tt, gg, color="0.2", lw=1)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xlim(0, t_max)
    ax.set_xlabel("time [ms]")
    ax.set_ylabel("G [mT/m]" if b else "g(t)")
    title = f"{waveform.kind} " + "/".join(f"{x:g}" for x in waveform.timing) + " ms" if waveform.timing \
        else waveform.kind
    ax.set_title(f"effective gradient: {title}" + (f", b = {b:g} s/mm²" if b else ""), fontsize=8)
    return ax.axvline(0, color="red", lw=1.5)


class FlowAnimation:
    """Spins of a flow simulation moving through the network, one frame per recorded time.

    solution: the resolved network (`resolve.FlowSolution`); track: `spins.SpinTrack` recorded by the
    simulation; waveform/b: the measurement whose gradient is drawn beneath (b may be None). 3D networks
    are shown in their x-y projection. The view covers every periodic copy the spins reach; a copy is
    drawn from the frame at which the first spin enters it.
    """

    def __init__(self, solution, track, waveform=None, b=None, *, title: str | None = None, dpi: int = 100):
        from matplotlib.colors import Normalize

        from .simulation import mark_ports, network_lines
        self.track, self.dpi = track, dpi
        net = solution.network
        n_copies = int(track.copy.max()) + 1 if track.copy.size else 1
        pts = np.concatenate([net.nodes[:, :2] + c * track.shift_um[:2] for c in range(n_copies)])
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.04 * (hi - lo).max()
        lo, hi = lo - pad, hi + pad
        self.fig, ax, cax, axg = _layout((hi[1] - lo[1]) / (hi[0] - lo[0]), waveform is not None)
        self.ax = ax
        v = solution.velocity_um_per_s * 1e-3
        norm = Normalize(0, float(v[solution.live].max()) if solution.live.any() else 1.0)
        self.copies = []  # the artists of each periodic copy
        for c in range(n_copies):
            before = len(ax.collections)
            lines = network_lines(ax, solution, v, norm, "viridis", shift=c * track.shift_um,
                                  alpha=1.0 if c == 0 else 0.45)
            self.copies.append(list(ax.collections[before:]))
            if c == 0:
                self.fig.colorbar(lines, cax=cax, label="velocity [mm/s]")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        mark_ports(ax, net)
        ax.set_xlabel("x [µm]")
        ax.set_ylabel("y [µm]")
        ax.set_title(title or f"{net.name or 'network'}: {track.position_um.shape[0]} spins"
                     + ("" if net.is_planar else " (x-y projection)")
                     + (f", {n_copies - 1} periodic cop{'y' if n_copies == 2 else 'ies'}" if n_copies > 1 else ""),
                     fontsize=9)
        self.spins = ax.scatter(track.position_um[:, 0, 0], track.position_um[:, 0, 1], s=7, c=SPIN_COLOUR,
                                edgecolors="k", linewidths=0.3, zorder=5, label="spins")
        ax.legend(fontsize=7, loc="upper right")
        self.clock = ax.text(0.01, 0.99, "", transform=ax.transAxes, va="top", ha="left", fontsize=10,
                             family="monospace", bbox={"fc": "white", "ec": "0.7", "alpha": 0.85})
        t_max = float(track.times_ms[-1]) if track.times_ms.size else 1.0
        self.cursor = _waveform_panel(axg, waveform, b, t_max) if axg is not None else None
        self.n_frames = len(track.times_ms)
        self.draw(0)

    def draw(self, k: int) -> list:
        """Set frame k: spins at the recorded positions of time k, copies entered so far shown."""
        tr = self.track
        self.spins.set_offsets(tr.position_um[:, k, :2])
        reached = int(tr.copy[:, :k + 1].max()) if tr.copy.size else 0
        for c, artists in enumerate(self.copies):
            for a in artists:
                a.set_visible(c <= reached)
        t = float(tr.times_ms[k])
        self.clock.set_text(f"t = {t:6.2f} ms" + (f"   copy {reached}" if reached else ""))
        if self.cursor is not None:
            self.cursor.set_xdata([t, t])
        return [self.spins, self.clock]

    def drawn_positions(self) -> np.ndarray:
        """The spin positions [R, 2] of the frame last drawn (µm)."""
        return np.asarray(self.spins.get_offsets())


class WalkerAnimation:
    """Monte Carlo walkers among the cells of a substrate, one frame per selected step.

    substrate: `substrate.Substrate`; track: `montecarlo.WalkerTrack`; steps: the recorded step of each
    frame (default: `frame_indices` over all); colour: 'compartment' (intra orange, extra blue) or
    'phase' (the accumulated phase φ_x for waveform and b, on a cyclic colour map; the marker edge keeps
    the compartment colour).
    """

    def __init__(self, substrate, track, steps=None, *, waveform=None, b=None, colour: str = "compartment",
                 dpi: int = 100):
        if colour not in ("compartment", "phase"):
            raise ValueError("colour is 'compartment' or 'phase'")
        if colour == "phase" and (waveform is None or not b):
            raise ValueError("colouring by phase needs a waveform and b > 0")
        self.track, self.colour, self.dpi = track, colour, dpi
        self.steps = frame_indices(track.position_um.shape[1], 120) if steps is None else np.asarray(steps, int)
        lx, ly = track.tile_um
        self.fig, ax, cax, axg = _layout(ly / lx, waveform is not None)
        self.ax = ax
        for c in substrate.cells:
            x, y = c.exterior.xy
            ax.fill(x, y, fc="#cfe8d4", ec="#1b4d2c", lw=0.5)
        ax.plot([0, lx, lx, 0, 0], [0, 0, ly, ly, 0], "k--", lw=0.8)
        ax.set_xlim(0, lx)
        ax.set_ylim(0, ly)
        ax.set_aspect("equal")
        ax.set_xlabel("x [µm]")
        ax.set_ylabel("y [µm]")
        d0in, d0ex, kappa = track.config
        ax.set_title(f"{substrate.name}: D0in {d0in:g}, D0ex {d0ex:g} µm²/ms, κ {kappa:g} µm/s", fontsize=9)
        self.phase = track.phase(waveform, b)[..., 0] if colour == "phase" else None
        pos = track.position_um[:, 0]
        if colour == "phase":
            self.walkers = ax.scatter(pos[:, 0], pos[:, 1], s=14, c=np.zeros(len(pos)), cmap="twilight",
                                      vmin=-np.pi, vmax=np.pi, linewidths=0.9, zorder=5)
            self.fig.colorbar(self.walkers, cax=cax, label=f"phase φx [rad] (b = {b:g} s/mm²)")
        else:
            self.walkers = ax.scatter(pos[:, 0], pos[:, 1], s=10, linewidths=0.3, edgecolors="k", zorder=5)
            cax.set_visible(False)
        from matplotlib.lines import Line2D
        edge = colour == "phase"
        ax.legend(handles=[Line2D([], [], marker="o", ls="none", mfc="white" if edge else c, mec=c, mew=1.5,
                                  label=("edge: " if edge else "") + lab)
                           for c, lab in ((INTRA_COLOUR, "intra-cellular"), (EXTRA_COLOUR, "extra-cellular"))],
                  fontsize=7, loc="upper right", framealpha=0.85)
        self.clock = ax.text(0.01, 0.99, "", transform=ax.transAxes, va="top", ha="left", fontsize=8,
                             family="monospace", bbox={"fc": "white", "ec": "0.7", "alpha": 0.85})
        t_max = float(track.times_ms[-1])
        self.cursor = _waveform_panel(axg, waveform, b, t_max) if axg is not None else None
        self.n_frames = len(self.steps)
        self.draw(0)

    def draw(self, k: int) -> list:
        """Set frame k: walkers at their recorded positions after step steps[k]."""
        j = int(self.steps[k])
        tr = self.track
        self.walkers.set_offsets(tr.position_um[:, j])
        inside = tr.compartment[:, j] >= 0
        comp_colour = np.where(inside[:, None], np.array([_rgba(INTRA_COLOUR)]), np.array([_rgba(EXTRA_COLOUR)]))
        if self.phase is not None:
            self.walkers.set_array(np.angle(np.exp(1j * self.phase[:, j])))
            self.walkers.set_edgecolors(comp_colour)
        else:
            self.walkers.set_facecolors(comp_colour)
        t = float(tr.times_ms[j])
        self.clock.set_text(f"t = {t:6.2f} ms  intra {int(inside.sum())} / extra {int((~inside).sum())}")
        if self.cursor is not None:
            self.cursor.set_xdata([t, t])
        return [self.walkers, self.clock]

    def drawn_positions(self) -> np.ndarray:
        return np.asarray(self.walkers.get_offsets())


def _rgba(colour):
    from matplotlib.colors import to_rgba
    return to_rgba(colour)


def save_animation(animation, out, *, fps: float = 20.0, progress: bool = True) -> Path:
    """Write every frame of animation (FlowAnimation or WalkerAnimation) to out (.gif or .mp4),
    atomically; returns out."""
    import matplotlib.animation as mpl_anim

    plt = pyplot()
    out = Path(out)
    kind = check_video_path(out)
    if kind == "ffmpeg":
        plt.rcParams["animation.ffmpeg_path"] = find_ffmpeg()
        writer = mpl_anim.FFMpegWriter(fps=fps, codec="h264", extra_args=["-pix_fmt", "yuv420p"])  # even sizes
    else:
        writer = mpl_anim.PillowWriter(fps=fps)
    anim = mpl_anim.FuncAnimation(animation.fig, animation.draw, frames=animation.n_frames, blit=False,
                                  repeat=False)
    from ..core.atomic import atomic_path
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=animation.n_frames, unit="frame", desc=f"video {out.name}", leave=False)
    try:
        with atomic_path(out) as tmp:
            anim.save(str(tmp), writer=writer, dpi=animation.dpi,
                      progress_callback=(lambda i, n: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
        plt.close(animation.fig)
        tmp.unlink(missing_ok=True)
    return out


def write_flow_video(out, solution, track_file, waveform, b: float, *, fps: float = 20.0, dpi: int = 100) -> int:
    """A video of the spins recorded in ``track_file`` (core.simulate.tracks) flowing through ``solution``'s
    network under ``waveform`` (b [s/mm²]), written to ``out``; the number of frames."""
    from ..core.simulate.tracks import load_track

    anim = FlowAnimation(solution, load_track(track_file), waveform, b, dpi=dpi)
    save_animation(anim, out, fps=fps)
    return anim.n_frames


def write_walker_video(out, substrate, track_file, waveform, b: float, *, frames: int, phase: bool = False,
                       fps: float = 20.0, dpi: int = 100) -> int:
    """A video of the walkers recorded in ``track_file`` in ``substrate`` (coloured by compartment, or by
    phase), written to ``out``; the number of frames."""
    from ..core.simulate.tracks import load_track

    track = load_track(track_file)
    anim = WalkerAnimation(substrate, track, frame_indices(track.position_um.shape[1], frames), waveform=waveform,
                           b=b, colour="phase" if phase else "compartment", dpi=dpi)
    save_animation(anim, out, fps=fps)
    return anim.n_frames
