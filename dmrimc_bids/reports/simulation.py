"""Pictures of a simulation (``dmrimc-sim ... --plot``): substrates, resolved networks, dictionary signals.

- `plot_histo`: each substrate's cells on its periodic tile, and signal vs b of a few entries;
- `plot_network`: a resolved network coloured by velocity [mm/s] and by flow [mm³/s], inlet and outlet
  marked (3D networks as a perspective projection); `network_html`: the same as an interactive 3D view
  (plotly, extra ``[plots]``);
- `plot_signals`: signal vs b per diffusion time of one dictionary entry, with an analytic reference.
Files are written atomically (temporary name, then rename). Videos are in reports/video.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core.atomic import write_bytes as atomic_write_bytes
from .figures import pyplot


def save_figure(fig, out, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (format from the suffix: png, svg, pdf) and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=Path(out).suffix.lstrip(".").lower() or "png", dpi=dpi)
    finally:
        pyplot().close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)


def plot_histo(substrates: list, dictionary, out_png) -> Path:
    """PNG: each substrate's cells on its periodic tile, and signal vs b of a few entries per (δ, Δ)."""
    plt = pyplot()
    n = len(substrates)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 4.0), squeeze=False)
    for ax, sub in zip(axes[0], substrates):
        for c in sub.cells:
            x, y = c.exterior.xy
            ax.fill(x, y, fc="#3a9d5d", ec="#1b4d2c", lw=0.4, alpha=0.8)
        lx, ly = sub.tile_um
        ax.plot([0, lx, lx, 0, 0], [0, 0, ly, ly, 0], "k--", lw=0.8)
        m = sub.metrics()
        ax.set_title(f"{sub.name}\n{sub.n_cells} cells, fin {m['fin']:.2f}, vCS_cyl {m['vCS_cyl']:.1f} µm",
                     fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlabel("x [µm]")
        ax.set_ylabel("y [µm]")
    ax = axes[0][-1]
    prot = dictionary.protocol
    rows = np.linspace(0, len(dictionary) - 1, min(4, len(dictionary))).astype(int)
    names = dictionary.names
    for k, (sd, bd, order) in enumerate(diffusion_time_groups(prot)[:3]):
        for j, r in enumerate(rows):
            lab = (f"δ/Δ {sd:g}/{bd:g} ms; " if j == 0 else "") + \
                  ", ".join(f"{nm} {dictionary.params[r, names.index(nm)]:.2g}" for nm in ("fin", "D0in", "kappa")
                            if nm in names)
            ax.plot(prot.b[order], dictionary.signals[r, order], ["-", "--", ":"][k % 3], marker=".",
                    color=f"C{j}", label=lab, lw=1)
    ax.set_xlabel("b [s/mm²]")
    ax.set_ylabel("signal / b0")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6)
    ax.set_title("example signals (line style: timing)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)




def _segment_colours(solution):
    """(velocity [mm/s], |flow| [mm³/s], live mask) per segment."""
    return solution.velocity_um_per_s * 1e-3, np.abs(solution.flow_um3_per_s) * 1e-9, solution.live


def network_lines(ax, solution, values, norm, cmap, *, shift=(0.0, 0.0, 0.0), alpha=1.0):
    """Draw a network's segments on ax coloured by values (x-y for planar axes, x-y-z on 3D axes); dead
    segments grey and dashed. Returns the live segments' collection (for a colour bar)."""
    from matplotlib.collections import LineCollection

    net = solution.network
    xyz = net.nodes + np.asarray(shift, float)
    live = solution.live
    width = 0.6 + 2.4 * net.radius_um / net.radius_um.max()
    three_d = hasattr(ax, "get_zlim")
    if three_d:
        from mpl_toolkits.mplot3d.art3d import Line3DCollection
        make = lambda segs, **kw: Line3DCollection(segs, **kw)  # noqa: E731
        pts = xyz
    else:
        make = lambda segs, **kw: LineCollection(segs, **kw)  # noqa: E731
        pts = xyz[:, :2]
    if np.any(~live):
        ax.add_collection(make(pts[net.segments[~live]], colors="0.6", linestyles="--",
                               linewidths=width[~live] * 0.6, alpha=alpha))
    lines = make(pts[net.segments[live]], array=values[live], cmap=cmap, norm=norm, linewidths=width[live],
                 alpha=alpha)
    ax.add_collection(lines)
    return lines


def mark_ports(ax, net, three_d: bool = False):
    """Mark the inlet (red triangle) and the outlet (blue square) of a network (x-y, or x-y-z on 3D axes)."""
    for node, marker, colour, label in ((net.inlet, "^", "red", "inlet"), (net.outlet, "s", "blue", "outlet")):
        p = net.nodes[node]
        if three_d:
            ax.scatter([p[0]], [p[1]], [p[2]], marker=marker, color=colour, s=70, label=label, depthshade=False)
        else:
            ax.plot(p[0], p[1], marker, color=colour, ms=9, label=label, ls="none")


def plot_network(solution, out, *, title: str | None = None, arrows: bool = True):
    """PNG/SVG/PDF of a resolved network: segments coloured by velocity [mm/s] (left) and by flow
    [mm³/s, log scale] (right), widths by radius, flow direction arrows, inlet (red triangle) and outlet
    (blue square) marked, segments without flow grey and dashed. 3D networks are drawn in perspective
    (mplot3d); `network_html` gives an interactive view."""
    from matplotlib.colors import LogNorm, Normalize

    plt = pyplot()
    net = solution.network
    v, q, live = _segment_colours(solution)
    three_d = not net.is_planar
    fig = plt.figure(figsize=(11, 4.8))
    kw = {"projection": "3d"} if three_d else {}
    axes = [fig.add_subplot(1, 2, k + 1, **kw) for k in range(2)]
    qpos = q[live & (q > 0)]
    norms = (Normalize(0, float(v[live].max()) if live.any() else 1.0),
             LogNorm(float(qpos.min()), float(qpos.max()) * (1 + 1e-9)) if qpos.size else Normalize(0, 1))
    labels = ("velocity [mm/s]", "flow [mm³/s]")
    for ax, values, norm, label, cmap in zip(axes, (v, q), norms, labels, ("viridis", "magma")):
        lines = network_lines(ax, solution, values, norm, cmap)
        mark_ports(ax, net, three_d)
        if three_d:
            lo, hi = net.nodes.min(0), net.nodes.max(0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_zlim(lo[2], hi[2])
            ax.set_box_aspect(np.maximum(hi - lo, 1e-3 * (hi - lo).max()))
            ax.set_zlabel("z [µm]")
        else:
            ax.autoscale()
            ax.set_aspect("equal")
            if arrows and live.any():
                seg, _ = solution.oriented()
                a, b = net.nodes[seg[live, 0], :2], net.nodes[seg[live, 1], :2]
                mid, d = 0.5 * (a + b), b - a
                d = d / np.linalg.norm(d, axis=1, keepdims=True)
                ax.quiver(mid[:, 0], mid[:, 1], d[:, 0], d[:, 1], angles="xy", pivot="mid", color="k",
                          width=0.003, headwidth=4, headlength=4, headaxislength=3.5, scale=45, alpha=0.6)
        ax.set_xlabel("x [µm]")
        ax.set_ylabel("y [µm]")
        fig.colorbar(lines, ax=ax, label=label, shrink=0.85, pad=0.12 if three_d else 0.04)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title or f"{net.name or 'network'}: Qin {net.qin_mm3_per_s:.3g} mm³/s, {len(net.segments)} segments"
                 f" ({int(live.sum())} with flow)" + ("" if net.is_planar else ", 3D"), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def network_html(solution, out) -> Path:
    """Interactive HTML view of a resolved network (rotate, zoom; hover shows each segment's velocity
    [mm/s] and flow [mm³/s]). Needs plotly (extra ``[plots]``); plotly.js is embedded, so the file opens
    offline."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        from ..core.errors import InputError
        raise InputError(f"cannot write {out}: plotly is not installed",
                         fix="pip install 'dmrimc-bids[plots]', or draw the PNG (plot_network)") from exc
    net = solution.network
    v, q, live = _segment_colours(solution)
    vmax = float(v[live].max()) if live.any() else 1.0
    fig = go.Figure()
    for e in np.flatnonzero(live):  # one trace per segment: per-segment colour and hover text
        a, b = net.nodes[net.segments[e]]
        fig.add_trace(go.Scatter3d(
            x=[a[0], b[0]], y=[a[1], b[1]], z=[a[2], b[2]], mode="lines", showlegend=False,
            line={"color": [v[e], v[e]], "colorscale": "Viridis", "cmin": 0, "cmax": vmax,
                  "width": 2 + 6 * net.radius_um[e] / net.radius_um.max()},
            hovertext=f"segment {e}: v {v[e]:.3g} mm/s, q {q[e]:.3g} mm³/s, r {net.radius_um[e]:.2f} µm",
            hoverinfo="text"))
    dead = np.flatnonzero(~live)
    if dead.size:
        xs, ys, zs = [], [], []
        for e in dead:
            a, b = net.nodes[net.segments[e]]
            xs += [a[0], b[0], None]
            ys += [a[1], b[1], None]
            zs += [a[2], b[2], None]
        fig.add_trace(go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", name="no flow",
                                   line={"color": "grey", "width": 2, "dash": "dash"}))
    fig.add_trace(go.Scatter3d(x=[0], y=[0], z=[0], mode="markers", showlegend=False, hoverinfo="skip",
                               marker={"size": 0.1, "color": [0], "colorscale": "Viridis", "cmin": 0, "cmax": vmax,
                                       "colorbar": {"title": "velocity [mm/s]"}}, visible=True))
    for node, symbol, colour, label in ((net.inlet, "diamond", "red", "inlet"),
                                        (net.outlet, "square", "blue", "outlet")):
        p = net.nodes[node]
        fig.add_trace(go.Scatter3d(x=[p[0]], y=[p[1]], z=[p[2]], mode="markers", name=label,
                                   marker={"symbol": symbol, "color": colour, "size": 6}))
    fig.update_layout(title=f"{net.name or 'network'}: Qin {net.qin_mm3_per_s:.3g} mm³/s",
                      scene={"xaxis_title": "x [µm]", "yaxis_title": "y [µm]", "zaxis_title": "z [µm]",
                             "aspectmode": "data"})
    atomic_write_bytes(out, fig.to_html(include_plotlyjs=True, full_html=True).encode())
    return Path(out)


def diffusion_time_groups(protocol) -> list:
    """[(δ, Δ, measurement indices sorted by b incl. the b = 0 ones)] per diffusion-weighting timing."""
    pairs = sorted({(s, b) for s, b in zip(protocol.small_delta_ms, protocol.big_delta_ms) if np.isfinite(s)},
                   key=lambda p: (p[1] - p[0] / 3, p))
    zero = np.flatnonzero(protocol.b <= 0)
    out = []
    for sd, bd in pairs:
        sel = np.union1d(np.flatnonzero((protocol.small_delta_ms == sd) & (protocol.big_delta_ms == bd)), zero)
        out.append((sd, bd, sel[np.argsort(protocol.b[sel], kind="stable")]))
    return out


def reference_curves(dictionary, entry: int, planar: bool = True) -> list:
    """[(label, D [µm²/ms])] of the analytic references for an entry: free diffusion e^{-b·D0} for the
    D0in/D0ex of a Histo-μSim entry; for a flow entry the pseudo-diffusion of the diffusive (many
    segments per diffusion time) regime, D* = vm·lm/4 for in-plane gradients on a planar network
    (vm·lm/6 in 3D; Le Bihan & Turner, MRM 27:171, 1992), a limit the short-time signal departs from."""
    names, row = dictionary.names, dictionary.params[entry]
    out = []
    for nm, label in (("D0ex", "free diffusion, D0ex"), ("D0in", "free diffusion, D0in")):
        if nm in names:
            out.append((f"{label} = {row[names.index(nm)]:.2g} µm²/ms", float(row[names.index(nm)])))
    if not out and {"vm", "lm"} <= set(names):
        vm, lm = row[names.index("vm")], row[names.index("lm")]
        k = 4 if planar else 6
        d = vm * lm / k  # mm/s = µm/ms, times µm: µm²/ms
        out.append((f"diffusive-regime IVIM, D* = vm·lm/{k} = {d:.3g} µm²/ms", float(d)))
    return out


def plot_signals(dictionary, entry: int, out, *, max_b: float | None = None, planar: bool = True) -> Path:
    """Signal vs b [s/mm²] per diffusion time (Δ - δ/3) of one dictionary entry, with the analytic
    reference of `reference_curves` (dashed; planar: the entry's network is planar)."""
    plt = pyplot()
    if not 0 <= entry < len(dictionary):
        from ..core.errors import EX_USAGE, InputError
        raise InputError(f"dictionary entry {entry} does not exist ({len(dictionary)} entries)", exit_code=EX_USAGE,
                         fix=f"give an entry between 0 and {len(dictionary) - 1}")
    prot = dictionary.protocol
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    groups = diffusion_time_groups(prot)
    cmap = plt.get_cmap("viridis")
    td = np.array([bd - sd / 3 for sd, bd, _ in groups])
    from matplotlib.colors import Normalize
    norm = Normalize(td.min() - 1e-9, td.max() + 1e-9)
    legend_each = len(groups) <= 6
    for (sd, bd, idx), t in zip(groups, td):
        ax.plot(prot.b[idx], dictionary.signals[entry, idx], "o-", ms=3.5, lw=1.1,
                color=cmap(0.9 * norm(t)) if len(groups) > 1 else "C0",
                label=f"δ/Δ {sd:g}/{bd:g} ms (t_d = {t:.3g} ms)" if legend_each else None)
    if not legend_each:
        from matplotlib.cm import ScalarMappable
        sm = ScalarMappable(norm=norm, cmap=cmap.resampled(256))
        fig.colorbar(sm, ax=ax, label=f"diffusion time Δ - δ/3 [ms] ({len(groups)} timings)")
    bmax = float(max_b or prot.b.max())
    bb = np.linspace(0, bmax, 200)
    for j, (label, d) in enumerate(reference_curves(dictionary, entry, planar)):
        ax.plot(bb, np.exp(-bb * 1e-3 * d), ["--", ":"][j % 2], color="0.3", lw=1, label=label)
    names = dictionary.names
    shown = [n for n in ("fin", "vCS_cyl", "D0in", "D0ex", "kappa", "vm", "vs", "anb") if n in names]
    desc = ", ".join(f"{n} {dictionary.params[entry, names.index(n)]:.3g}" for n in shown)
    ax.set_title(f"entry {entry}: {desc}", fontsize=8)
    ax.set_xlabel("b [s/mm²]")
    ax.set_ylabel("signal / b0" if "vm" not in names else "vascular signal S_V / S_V(0)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, bmax * 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)
