"""Histology-like cell packings for simulation (the substrates of the embedded default dictionary).

`cell_packing` builds a periodic tile of irregular, disjoint cells from three knobs a pathologist
would name:

1. **cell-size distribution**: equivalent diameters CS ~ Gamma(mean ``mean_cs_um``, coefficient of
   variation ``cv_cs``); cell centres are placed by random sequential addition of discs of those
   diameters (largest first) in the periodic tile, so neighbourhoods follow the sizes;
2. **packing fraction** ``fin``: each cell is the (periodic) Voronoi region of its centre, shrunk
   about its centroid so that the cells cover ``fin`` of the tile (the rest is extra-cellular space);
3. **shape irregularity** ``irregularity``: the outline's radius is modulated by a random smooth
   (low-order Fourier) perturbation of that relative amplitude, kept inside the cell's region,
   and corners are rounded (morphological opening, radius 10 % of the cell size).

Deterministic for a seed. Cells crossing the tile edge are split there (each piece a cell), as the
traced ROIs are clipped. Typical tiles hold 100-200 cells, like the published substrates.
"""

from __future__ import annotations

import math

import numpy as np

from .substrate import Substrate, clean_cells


def _rsa_centres(rng, diam, lx, ly, tries: int = 200, draw=None, radius_factor: float = 0.4):
    """Random sequential addition of discs of radius radius_factor·diam (periodic), largest first, each
    from at most ``tries`` candidates of ``draw()`` (default uniform in the tile); discs that do not
    fit are placed at the least-overlapping candidate."""
    draw = draw or (lambda: rng.random(2) * (lx, ly))
    order = np.argsort(-diam)
    pts, rad = [], []
    for i in order:
        r = radius_factor * diam[i]  # discs may overlap a little: Voronoi regions are shared space
        best, best_gap = None, -np.inf
        for _ in range(tries if len(pts) else 1):
            cand = draw()
            if not pts:
                best = cand
                break
            p = np.asarray(pts)
            d = np.abs(p - cand)
            d = np.minimum(d, (lx, ly) - d)
            gap = np.min(np.hypot(d[:, 0], d[:, 1]) - np.asarray(rad) - r)
            if gap >= 0:
                best = cand
                break
            if gap > best_gap:
                best, best_gap = cand, gap
        pts.append(best)
        rad.append(r)
    out = np.empty((len(diam), 2))
    out[order] = np.asarray(pts)
    return out


def _periodic_regions(pts, lx, ly) -> list:
    """The periodic Voronoi region (shapely Polygon, or None) of each centre pts [n, 2] in an lx x ly
    tile: the centres are replicated 3 x 3 and the regions of the central copies kept."""
    import shapely
    from shapely.geometry import MultiPoint, box

    n = len(pts)
    allp = np.concatenate([pts + s for s in _shifts(lx, ly)])
    regs = list(shapely.voronoi_polygons(MultiPoint(allp), extend_to=box(-2 * lx, -2 * ly, 3 * lx, 3 * ly)).geoms)
    tree = shapely.STRtree(regs)
    centre = len(_shifts(lx, ly)) // 2  # the (0, 0) copy
    out = []
    for i in range(n):
        hit = tree.query(shapely.points(allp[centre * n + i]), predicate="intersects")
        out.append(regs[hit[0]] if len(hit) else None)
    return out


def _shifts(lx, ly) -> list:
    return [(dx * lx, dy * ly) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]


def _tile_pieces(cell, lx, ly) -> list:
    """Vertex arrays of every periodic copy's part of ``cell`` inside the tile (cells crossing the edge
    are split there, as traced ROIs are clipped)."""
    from shapely.affinity import translate
    from shapely.geometry import Polygon, box

    out = []
    for sx, sy in _shifts(lx, ly):
        piece = translate(cell, sx, sy).intersection(box(0, 0, lx, ly))
        for g in getattr(piece, "geoms", [piece]):
            if isinstance(g, Polygon) and g.area > 0.05:
                out.append(np.asarray(g.exterior.coords)[:-1])
    return out


def cell_packing(fin: float = 0.6, mean_cs_um: float = 10.0, cv_cs: float = 0.25, irregularity: float = 0.15,
                 n_cells: int = 150, seed: int = 0, name: str | None = None) -> Substrate:
    """A periodic tile of ``n_cells`` irregular cells covering ``fin`` of it (see module docstring).

    The tile is square with area n_cells·<π CS²/4>/fin (µm²).
    """
    from shapely.affinity import scale as shp_scale
    from shapely.geometry import Polygon

    if not (0.05 <= fin <= 0.9):
        raise ValueError("fin must be in [0.05, 0.9] (Voronoi-based packings cannot exceed ~0.9)")
    rng = np.random.default_rng(seed)
    k = 1.0 / cv_cs ** 2
    diam = rng.gamma(k, mean_cs_um / k, n_cells)
    diam = np.clip(diam, 0.3 * mean_cs_um, 3.0 * mean_cs_um)
    area_cells = np.sum(np.pi * diam ** 2 / 4)
    side = math.sqrt(area_cells / fin)
    lx = ly = side
    cells = [c for c in _periodic_regions(_rsa_centres(rng, diam, lx, ly), lx, ly) if c is not None]
    # shrink each region about its centroid to the target cell area (its disc area, scaled so the
    # total equals fin of the tile), not beyond its own region
    total_region = sum(c.area for c in cells)
    want = np.array([c.area for c in cells]) * fin * (lx * ly) / total_region
    out = []
    for c, a_target in zip(cells, want):
        f = math.sqrt(min(1.0, a_target / c.area))
        cen = c.centroid
        shrunk = shp_scale(c, xfact=f, yfact=f, origin=cen)
        # irregular outline: radial Fourier perturbation of a circle-like contour
        n_v = 96
        t = np.linspace(0, 2 * np.pi, n_v, endpoint=False)
        pert = np.zeros(n_v)
        for order in range(2, 6):
            pert += rng.normal(0, irregularity / order) * np.cos(order * t + rng.uniform(0, 2 * np.pi))
        req = math.sqrt(shrunk.area / np.pi)
        blob = Polygon(np.stack([cen.x + req * 1.15 * (1 + pert) * np.cos(t),
                                 cen.y + req * 1.15 * (1 + pert) * np.sin(t)], 1)).buffer(0)
        cell = shrunk.intersection(blob)
        rr = 0.1 * req
        cell = cell.buffer(-rr, quad_segs=4).buffer(rr, quad_segs=4)
        if cell.is_empty:
            continue
        geoms = getattr(cell, "geoms", [cell])
        out += _tile_pieces(max(geoms, key=lambda g: g.area), lx, ly)
    sub = clean_cells(out, (lx, ly), name=name or f"packing_fin{fin:g}_cs{mean_cs_um:g}_seed{seed}",
                      source="dmrimc_bids.core.simulate.generate.cell_packing")
    sub.notes.insert(0, f"generated: fin={fin:g}, mean CS={mean_cs_um:g} µm, cv={cv_cs:g}, "
                        f"irregularity={irregularity:g}, n_cells={n_cells}, seed={seed}")
    return sub


def _cluster_centres(rng, n_cells, lx, ly, clustering):
    """Candidate-position sampler: uniform (clustering 0) or a mixture of Gaussian nests (clustering 1:
    nests of ~12 cells whose spread is a third of the uniform cell spacing)."""
    if clustering <= 0:
        return lambda: rng.random(2) * (lx, ly)
    n_nests = max(1, int(round(n_cells / 12)))
    nests = rng.random((n_nests, 2)) * (lx, ly)
    spacing = math.sqrt(lx * ly / n_cells)
    spread = spacing * (1.0 + 3.0 * (1.0 - clustering))

    def draw():
        if rng.random() > clustering:
            return rng.random(2) * (lx, ly)
        c = nests[rng.integers(n_nests)]
        return np.mod(c + rng.normal(0.0, spread, 2), (lx, ly))
    return draw


def _blob(cx, cy, radius, aspect, angle, pert):
    """Closed outline [n, 2]: an ellipse of equivalent radius ``radius`` (axes ratio ``aspect``,
    rotated by ``angle``) with radial Fourier perturbation ``pert`` [n]."""
    t = np.linspace(0, 2 * np.pi, pert.size, endpoint=False)
    a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    x, y = a * (1 + pert) * np.cos(t), b * (1 + pert) * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], 1)


def _tissue_cells(pts, side, diam, shapes, gap_um):
    """Cells (vertex arrays, split at the tile edge) of tissue_packing for centres ``pts`` in a square
    tile of ``side`` µm, and their total area [µm²]."""
    from shapely.geometry import Polygon

    out, total = [], 0.0
    for i, reg in enumerate(_periodic_regions(pts, side, side)):
        if reg is None:
            continue
        region = reg.buffer(-gap_um / 2, join_style="mitre")
        if region.is_empty:
            continue
        pert, aspect, angle = shapes[i]
        cx, cy = pts[i]
        target = min(np.pi * diam[i] ** 2 / 4, 0.97 * region.area)
        lo, hi = 0.2 * diam[i], 3.0 * diam[i]
        cell = None
        for _ in range(14):  # bisection on the outline's radius until the cell has its target area
            mid = 0.5 * (lo + hi)
            c = region.intersection(Polygon(_blob(cx, cy, mid, aspect, angle, pert)).buffer(0))
            if c.area < target:
                lo = mid
            else:
                hi, cell = mid, c
        if cell is None or cell.is_empty:
            continue
        rr = 0.08 * math.sqrt(cell.area / np.pi)
        cell = cell.buffer(-rr, quad_segs=4).buffer(rr, quad_segs=4)
        geoms = [g for g in getattr(cell, "geoms", [cell]) if isinstance(g, Polygon)]
        if not geoms:
            continue
        cell = max(geoms, key=lambda g: g.area).simplify(0.05)
        total += cell.area
        out += _tile_pieces(cell, side, side)
    return out, total


def tissue_packing(fin: float = 0.6, mean_cs_um: float = 10.0, cv_cs: float = 0.3, irregularity: float = 0.15,
                   elongation: float = 1.0, clustering: float = 0.0, n_cells: int = 120, gap_um: float = 0.3,
                   seed: int = 0, name: str | None = None) -> Substrate:
    """A periodic tile of cells shaped like traced tumour histology (the default dictionary's substrates).

    Knobs: target intra-cellular area fraction ``fin`` (0.02-0.92); equivalent diameters CS ~ Gamma
    (mean ``mean_cs_um`` µm, coefficient of variation ``cv_cs``); ``irregularity`` (relative amplitude
    of a smooth radial perturbation of each outline); ``elongation`` (mean axes ratio of the cells,
    each cell drawn between 1 and 2·elongation - 1 with its own orientation); ``clustering`` (0:
    cells spread uniformly; 1: cells in nests of ~12 with stroma between them). Cells never touch:
    each is confined to its periodic Voronoi region shrunk by ``gap_um``/2, so dense tiles become
    polygonal, sparse ones round or elliptical. The tile side is chosen for ``fin``; cells that their
    region cannot hold are cut to it, so the realised fraction (Substrate.metrics) can fall below
    ``fin`` in dense nests. Deterministic for ``seed``.
    """
    if not (0.01 <= fin <= 0.95):
        raise ValueError("fin must be in [0.01, 0.95]")
    rng = np.random.default_rng(seed)
    k = 1.0 / cv_cs ** 2
    diam = np.clip(rng.gamma(k, mean_cs_um / k, n_cells), 0.35 * mean_cs_um, 3.0 * mean_cs_um)
    side = math.sqrt(np.sum(np.pi * diam ** 2 / 4) / fin)
    lx = ly = side
    draw = _cluster_centres(rng, n_cells, lx, ly, clustering)
    pts = _rsa_centres(rng, diam, lx, ly, tries=60, draw=draw, radius_factor=0.425)
    shapes = []
    n_v = 72
    t = np.linspace(0, 2 * np.pi, n_v, endpoint=False)
    for _ in range(n_cells):
        pert = np.zeros(n_v)
        for order_k in range(2, 6):
            pert += rng.normal(0, irregularity / order_k) * np.cos(order_k * t + rng.uniform(0, 2 * np.pi))
        aspect = 1.0 + rng.uniform(0, 2.0 * (elongation - 1.0)) if elongation > 1 else 1.0
        shapes.append((np.clip(pert, -0.5, 0.5), aspect, rng.uniform(0, np.pi)))
    unit = pts / side
    for _ in range(5):  # shrink the tile (same pattern) until the cut cells reach the target fraction
        out, area = _tissue_cells(unit * side, side, diam, shapes, gap_um)
        realised = area / side ** 2
        if realised >= 0.98 * fin:
            break
        side *= math.sqrt(realised / fin) ** 0.8
    lx = ly = side
    sub = clean_cells(out, (lx, ly), name=name or f"tissue_fin{fin:g}_cs{mean_cs_um:g}_seed{seed}",
                      source="dmrimc_bids.core.simulate.generate.tissue_packing")
    sub.notes.insert(0, f"generated: fin={fin:g}, mean CS={mean_cs_um:g} µm, cv={cv_cs:g}, irregularity="
                        f"{irregularity:g}, elongation={elongation:g}, clustering={clustering:g}, "
                        f"n_cells={n_cells}, gap={gap_um:g} µm, seed={seed}")
    return sub


def ellipse_lattice(fin: float = 0.5, mean_cs_um: float = 10.0, cv_cs: float = 0.25, max_aspect: float = 1.4,
                    jitter: float = 1.0, n_side: int = 10, gap_um: float = 0.3, seed: int = 0,
                    name: str | None = None) -> Substrate:
    """A periodic tile of elliptical cells on a jittered hexagonal lattice: a generator that shares no
    step with `cell_packing` or `tissue_packing` (no Gamma sizes, no random sequential addition, no
    Voronoi regions, no Fourier outlines), for validation data the default dictionary was not made from.

    ``n_side`` x ``n_side`` lattice slots (``n_side`` even) of spacing a, chosen so that cells of
    log-normal equivalent diameter (mean ``mean_cs_um`` µm, coefficient of variation ``cv_cs``) cover
    ``fin`` of the tile; each cell an ellipse of axes ratio uniform in [1, ``max_aspect``] and random
    orientation, moved off its slot centre by up to ``jitter`` of the room its slot leaves. A cell never
    leaves its slot's inscribed circle less ``gap_um``/2, so cells never touch; cells too large for their
    slot are shrunk to it and the lattice tightened until the cells cover ``fin``, or as much as elongated
    cells can (Substrate.metrics gives the realised truth).
    Deterministic for ``seed``.
    """
    if not (0.01 <= fin <= 0.9):
        raise ValueError("fin must be in [0.01, 0.9] (discs on a hexagonal lattice cover at most 0.907)")
    if n_side % 2:
        raise ValueError("n_side must be even (a periodic hexagonal lattice)")
    rng = np.random.default_rng(seed)
    n = n_side * n_side
    sigma = math.sqrt(math.log1p(cv_cs ** 2))
    diam = mean_cs_um * np.exp(sigma * rng.standard_normal(n) - sigma ** 2 / 2)
    aspect = rng.uniform(1.0, max_aspect, n)
    angle = rng.uniform(0.0, np.pi, n)
    spacing = math.sqrt(np.sum(np.pi * diam ** 2 / 4) / (fin * n * math.sqrt(3) / 2))
    asked = diam

    def fitted(spacing):  # (covered fraction, diameters shrunk so the major axis fits the slot less the gap)
        d = np.minimum(asked, (spacing - gap_um) / np.sqrt(aspect))
        return np.sum(np.pi * d ** 2 / 4) / (n * spacing ** 2 * math.sqrt(3) / 2), d

    # the widest lattice whose cells, shrunk to their slots, cover fin (or all but 0.005 of the most they can)
    trial = spacing * np.linspace(1.0, 0.5, 201)
    cover = np.array([fitted(t)[0] for t in trial])
    enough = cover >= min(0.99 * fin, cover.max() - 0.005)
    spacing = float(trial[np.argmax(enough)])
    diam, room_um = fitted(spacing)[1], spacing - gap_um  # room: the slot's inscribed diameter less the gap
    lx, ly = n_side * spacing, n_side * spacing * math.sqrt(3) / 2
    t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    out = []
    from shapely.geometry import Polygon

    for k in range(n):
        row, col = divmod(k, n_side)
        free = 0.5 * (room_um - diam[k] * math.sqrt(aspect[k]))  # how far the centre may move
        r, phi = free * jitter * math.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        cx = (col + 0.5 * (row % 2)) * spacing + r * math.cos(phi)
        cy = row * spacing * math.sqrt(3) / 2 + r * math.sin(phi)
        a, b = 0.5 * diam[k] * math.sqrt(aspect[k]), 0.5 * diam[k] / math.sqrt(aspect[k])
        x, y = a * np.cos(t), b * np.sin(t)
        ca, sa = math.cos(angle[k]), math.sin(angle[k])
        out += _tile_pieces(Polygon(np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], 1)), lx, ly)
    sub = clean_cells(out, (lx, ly), name=name or f"ellipses_fin{fin:g}_cs{mean_cs_um:g}_seed{seed}",
                      source="dmrimc_bids.core.simulate.generate.ellipse_lattice")
    sub.notes.insert(0, f"generated: fin={fin:g}, mean CS={mean_cs_um:g} µm (log-normal, cv={cv_cs:g}), "
                        f"max aspect={max_aspect:g}, jitter={jitter:g}, {n} slots, gap={gap_um:g} µm, seed={seed}")
    return sub
