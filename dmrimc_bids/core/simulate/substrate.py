"""Histology substrates: traced cells (SVG) -> cell polygons in µm on a periodic tile, and their metrics.

A substrate is a set of disjoint simple polygons (one per cell, counter-clockwise, µm) inside a
rectangular tile [0, Lx) x [0, Ly) that repeats periodically. Cells are 2D sections of prisms: the
Monte Carlo walk is in the plane and z is unrestricted.

Reading an SVG (`read_svg`): every shape (path, polygon, rect, circle, ellipse, ...) is taken with its
transforms applied (svgelements); each closed subpath is one cell. Curves are flattened into chords
that deviate from the curve by at most ``tolerance_um`` (Wang's bound for Bézier curves, the chord
sagitta for arcs). The scale is µm per SVG user unit, or the tile width in µm. The tile is the
document's viewBox (its bounding box), or the cells' bounding box when there is none.

Cleaning (`clean_cells`): self-intersecting outlines are repaired (shapely.make_valid; the largest
piece is kept), cells are clipped to the tile, overlaps are removed from the smaller cell when they
are small and refused when large, and cells closer than ``min_gap_um`` to another cell or to the tile
edge are shrunk so that two membranes never coincide (across the periodic boundary too). Every change
is reported in `Substrate.notes`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EX_NOINPUT, EX_USAGE, InputError

#: Default flattening tolerance of curves [µm].
FLATTEN_TOLERANCE_UM = 0.01
#: Default smallest distance between two membranes (and from a membrane to the tile edge) [µm].
MIN_GAP_UM = 0.002
#: Overlaps larger than this fraction of the smaller cell's area are refused, not repaired.
MAX_REPAIRED_OVERLAP = 0.2
#: Cells smaller than this area [µm²] after cleaning are dropped (tracing specks).
MIN_CELL_AREA_UM2 = 0.05


@dataclass
class Substrate:
    """Cells (shapely Polygons, µm, counter-clockwise) on the periodic tile [0, Lx) x [0, Ly)."""

    cells: list
    tile_um: tuple
    name: str = "substrate"
    source: str | None = None
    notes: list = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Membrane segments [n, 4] = (x0, y0, x1, y1) µm along counter-clockwise outlines, and the
        owner cell index of each."""
        segs, owner = [], []
        for k, poly in enumerate(self.cells):
            xy = np.asarray(poly.exterior.coords)
            segs.append(np.concatenate([xy[:-1], xy[1:]], axis=1))
            owner.append(np.full(len(xy) - 1, k))
        if not segs:
            return np.zeros((0, 4)), np.zeros(0, np.int64)
        return np.ascontiguousarray(np.concatenate(segs)), np.concatenate(owner).astype(np.int64)

    def checksum(self) -> str:
        """sha256 of the tile and the cell vertices (identifies the geometry in caches and provenance)."""
        h = hashlib.sha256(np.asarray(self.tile_um, float).tobytes())
        for poly in self.cells:
            h.update(np.asarray(poly.exterior.coords, float).round(9).tobytes())
        return h.hexdigest()

    def metrics(self, area: str = "polygon") -> dict:
        """Tissue metrics of the Histo-μSim paper (Grigoriou et al.; citations: histousim).

        A_k: area of cell k [µm²], the polygon's (``area='polygon'``) or its convex hull's
        (``area='hull'``, as the published geometry scripts did, make_cell_vol_array.py).
        - CS_k = 2·sqrt(A_k/π): cell size, the diameter of the circle of area A_k [µm];
        - mCS = <CS> [µm]; varCS = <(CS - mCS)²> [µm²] (population variance); skewCS = population
          skewness <(CS - mCS)³>/varCS^(3/2);
        - vCS_sph = (<CS^7>/<CS^3>)^(1/4) [µm]: volume-weighted size of a population of spheres
          (volume weight CS³ x long-pulse restriction weight CS⁴);
          vCS_cyl = (<CS^6>/<CS^2>)^(1/4) [µm]: the same for cylinders (area weight CS²); both
          reproduce the 18 published substrates' tabulated values (the Histo-μSim paper and code, citations: histousim);
        - fin = ΣA_k / (ΣA_k + A_ex) with A_ex = tile area - Σ polygon areas (the published scripts
          measured A_ex by thresholding the traced image); with polygon areas fin is the area fraction;
        - cellularity = number of cells per mm² of tile.
        """
        if area not in ("polygon", "hull"):
            raise ValueError("area is 'polygon' or 'hull'")
        a_poly = np.array([c.area for c in self.cells])
        a = a_poly if area == "polygon" else np.array([c.convex_hull.area for c in self.cells])
        tile = float(self.tile_um[0] * self.tile_um[1])
        if a.size == 0:
            return {"fin": 0.0, "mCS": math.nan, "varCS": math.nan, "skewCS": math.nan, "vCS_sph": math.nan,
                    "vCS_cyl": math.nan, "cellularity": 0.0}
        cs = 2.0 * np.sqrt(a / np.pi)
        m, var = cs.mean(), cs.var()
        skew = float(np.mean((cs - m) ** 3) / var ** 1.5) if var > 0 else 0.0
        a_ex = tile - a_poly.sum()
        return {"fin": float(a.sum() / (a.sum() + a_ex)), "mCS": float(m), "varCS": float(var), "skewCS": skew,
                "vCS_sph": float((np.mean(cs ** 7) / np.mean(cs ** 3)) ** 0.25),
                "vCS_cyl": float((np.mean(cs ** 6) / np.mean(cs ** 2)) ** 0.25),
                "cellularity": float(a.size / (tile * 1e-6))}

    def describe(self) -> dict:
        segs, _ = self.segments()
        return {"name": self.name, "source": self.source, "tile_um": [float(v) for v in self.tile_um],
                "n_cells": self.n_cells, "n_segments": int(len(segs)), "sha256": self.checksum(),
                "notes": list(self.notes)}


# ---- SVG --------------------------------------------------------------------------------------------
def _flatten_segment(seg, tol: float) -> np.ndarray:
    """Points (excluding the start) approximating one svgelements path segment within tol (SVG units)."""
    from svgelements import Arc, Close, CubicBezier, Line, QuadraticBezier

    if isinstance(seg, (Line, Close)):
        return np.array([[seg.end.x, seg.end.y]]) if seg.end is not None else np.zeros((0, 2))
    if isinstance(seg, CubicBezier):
        p = np.array([[q.x, q.y] for q in (seg.start, seg.control1, seg.control2, seg.end)])
        # Wang's formula: n >= sqrt(d(d-1)/8 · max|P_i - 2P_{i+1} + P_{i+2}| / tol), d = 3
        m = max(np.hypot(*(p[0] - 2 * p[1] + p[2])), np.hypot(*(p[1] - 2 * p[2] + p[3])))
        n = max(1, math.ceil(math.sqrt(0.75 * m / tol)))
    elif isinstance(seg, QuadraticBezier):
        p = np.array([[q.x, q.y] for q in (seg.start, seg.control, seg.end)])
        n = max(1, math.ceil(math.sqrt(0.25 * np.hypot(*(p[0] - 2 * p[1] + p[2])) / tol)))
    elif isinstance(seg, Arc):
        r = max(min(abs(seg.rx), abs(seg.ry)), 1e-12)
        # a chord of angle θ deviates r(1 - cos(θ/2)) from the arc; bound by tol
        theta = 2 * math.acos(max(-1.0, 1 - tol / r))
        n = max(1, math.ceil(abs(seg.sweep) / max(theta, 1e-9))) if seg.sweep else 1
    else:  # Move or unknown
        return np.zeros((0, 2))
    pts = np.asarray(seg.npoint(np.linspace(0, 1, n + 1)[1:]), float)
    return pts.reshape(-1, 2)


def _svg_rings(path, tol_units: float) -> list:
    """Closed rings (arrays [n, 2], SVG units) of every shape in an SVG, transforms applied."""
    from svgelements import SVG, Move, Path as SvgPath, Shape

    try:
        doc = SVG.parse(str(path), reify=True)
    except Exception as exc:  # noqa: BLE001 - xml/parse errors of any kind
        raise InputError(f"cannot parse the SVG ({exc})", path=path,
                         fix="export a plain SVG (Inkscape: Save As > Plain SVG)", exit_code=EX_NOINPUT) from exc
    rings = []
    for el in doc.elements():
        if not isinstance(el, Shape):
            continue
        p = SvgPath(el)
        for sub in p.as_subpaths():
            pts = []
            for seg in sub:
                if isinstance(seg, Move):
                    pts = [[seg.end.x, seg.end.y]]
                    continue
                pts.extend(_flatten_segment(seg, tol_units).tolist())
            if len(pts) >= 3:
                rings.append(np.asarray(pts, float))
    box = None
    vb = doc.viewbox
    if vb is not None and vb.width and vb.height:
        box = (float(vb.x), float(vb.y), float(vb.width), float(vb.height))
    return rings, box


def read_svg(path, scale_um_per_unit: float | None = None, width_um: float | None = None, *,
             tolerance_um: float = FLATTEN_TOLERANCE_UM, min_gap_um: float = MIN_GAP_UM,
             tile: str = "viewbox", name: str | None = None) -> Substrate:
    """Cells traced in an SVG -> Substrate in µm (see module docstring).

    Give either ``scale_um_per_unit`` (µm per SVG user unit) or ``width_um`` (the tile's width in µm).
    ``tile``: 'viewbox' (the document's box; falls back to the cells' bounding box) or 'cells'.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("SVG file not found", path=path, fix="check the --svg path", exit_code=EX_NOINPUT)
    if (scale_um_per_unit is None) == (width_um is None):
        raise InputError("give exactly one of the scale (µm per SVG unit) and the substrate width (µm)",
                         path=path, fix="pass --scale UM_PER_UNIT or --width-um W", exit_code=EX_USAGE)
    # flatten in SVG units: the tolerance in units needs the scale; for width_um, parse once at a
    # provisional tolerance to learn the box, then once more at the right one
    scale = scale_um_per_unit
    if scale is None:
        rings, box = _svg_rings(path, 1e-3)
        if tile == "viewbox" and box is not None:
            wunits = box[2]
        else:
            allp = np.concatenate(rings) if rings else np.zeros((0, 2))
            wunits = float(np.ptp(allp[:, 0])) if len(allp) else 0.0
        if wunits <= 0:
            raise InputError("the SVG has no width to scale", path=path, fix="pass --scale instead of --width-um")
        scale = float(width_um) / wunits
    if not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"scale {scale} must be a positive number of µm per SVG unit", path=path,
                         fix="pass a positive --scale or --width-um", exit_code=EX_USAGE)
    rings, box = _svg_rings(path, tolerance_um / scale)
    if not rings:
        raise InputError("the SVG contains no closed shapes (cells)", path=path,
                         fix="trace each cell as a closed path (Inkscape pen tool) and save as SVG")
    if tile == "viewbox" and box is not None:
        x0, y0, w, h = box
    else:
        allp = np.concatenate(rings)
        x0, y0 = allp.min(0)
        w, h = np.ptp(allp, 0)
    cells_um = [(r - np.array([x0, y0])) * scale for r in rings]
    return clean_cells(cells_um, (w * scale, h * scale), min_gap_um=min_gap_um, source=str(path),
                       name=name or path.stem)


# ---- cleaning ---------------------------------------------------------------------------------------
def _largest_polygon(geom):
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.base import BaseMultipartGeometry

    if isinstance(geom, Polygon):
        return geom
    if isinstance(geom, (MultiPolygon, BaseMultipartGeometry)):
        polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
        polys += [p for g in getattr(geom, "geoms", []) if isinstance(g, MultiPolygon) for p in g.geoms]
        return max(polys, key=lambda p: p.area) if polys else None
    return None


def clean_cells(rings, tile_um, *, min_gap_um: float = MIN_GAP_UM, source=None, name: str = "substrate",
                max_overlap: float = MAX_REPAIRED_OVERLAP) -> Substrate:
    """Polygons (arrays [n, 2] in µm or shapely Polygons) -> a valid Substrate (see module docstring).

    Raises InputError when two cells overlap by more than ``max_overlap`` of the smaller one's area
    (probably a duplicated or mis-traced cell), naming both.
    """
    import shapely
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    lx, ly = float(tile_um[0]), float(tile_um[1])
    if not (lx > 0 and ly > 0):
        raise InputError(f"tile {lx:g} x {ly:g} µm is empty", path=source, fix="check the scale and the SVG size")
    notes = []
    cells, labels = _cells_in_tile(rings, lx, ly, min_gap_um, notes)
    _separate_cells(cells, labels, min_gap_um, max_overlap, source, notes)
    cells = [orient(Polygon(c.exterior), 1.0) for c in cells if c is not None and c.area >= MIN_CELL_AREA_UM2]
    out = []  # without repeated vertices (zero-length membranes)
    for c in cells:
        c = shapely.remove_repeated_points(c, tolerance=1e-6)
        if c.is_valid and not c.is_empty:
            out.append(orient(Polygon(c.exterior), 1.0))
    return Substrate(out, (lx, ly), name=name, source=None if source is None else str(source), notes=notes)


def _cells_in_tile(rings, lx: float, ly: float, min_gap_um: float, notes: list):
    """(valid polygons inside the tile less half a gap, their input indices): outlines repaired, clipped
    or dropped, each change noted."""
    import shapely
    from shapely.geometry import Polygon, box

    g = min_gap_um / 2.0
    inner = box(g, g, lx - g, ly - g)
    cells, labels = [], []
    for i, r in enumerate(rings):
        poly = r if isinstance(r, Polygon) else Polygon(np.asarray(r, float))
        poly = Polygon(poly.exterior)  # holes are not membranes of this model
        if not poly.is_valid:
            fixed = _largest_polygon(shapely.make_valid(poly))
            notes.append(f"cell {i}: self-intersecting outline repaired (kept the largest piece)")
            poly = fixed
        if poly is None or poly.is_empty:
            continue
        if not inner.contains(poly):
            clipped = _largest_polygon(poly.intersection(inner))
            if clipped is None or clipped.area < MIN_CELL_AREA_UM2:
                notes.append(f"cell {i}: outside the tile, dropped")
                continue
            if clipped.area < poly.area * (1 - 1e-9):
                notes.append(f"cell {i}: clipped to the tile")
            poly = clipped
        if poly.area < MIN_CELL_AREA_UM2:
            notes.append(f"cell {i}: smaller than {MIN_CELL_AREA_UM2} µm², dropped")
            continue
        cells.append(Polygon(poly.exterior))
        labels.append(i)
    return cells, labels


def _separate_cells(cells: list, labels: list, min_gap_um: float, max_overlap: float, source, notes: list) -> None:
    """Remove small overlaps (from the smaller cell) and open a gap between touching cells, in place;
    InputError for an overlap above max_overlap of the smaller cell."""
    import shapely
    from shapely.geometry import Polygon

    tree = shapely.STRtree(cells)
    pairs = tree.query(np.array(cells, dtype=object), predicate="dwithin", distance=min_gap_um) if cells \
        else np.zeros((2, 0), np.int64)
    pairs = pairs[:, pairs[0] < pairs[1]]
    for a, b in pairs.T:
        pa, pb = cells[a], cells[b]
        inter = pa.intersection(pb).area
        if inter > 0:
            small = min(pa.area, pb.area)
            if inter > max_overlap * small:
                raise InputError(f"cells {labels[a]} and {labels[b]} overlap by {inter:.3g} µm² "
                                 f"({100 * inter / small:.0f}% of the smaller)", path=source,
                                 fix="remove the duplicated cell or retrace the two outlines so they do not overlap")
            big_i, small_i = (a, b) if pa.area >= pb.area else (b, a)
            cut = _largest_polygon(cells[small_i].difference(cells[big_i].buffer(min_gap_um, join_style="mitre")))
            notes.append(f"cells {labels[a]} and {labels[b]}: overlap of {inter:.3g} µm² removed from cell "
                         f"{labels[small_i]}")
            cells[small_i] = cut if cut is not None else cells[small_i]
        if cells[a].distance(cells[b]) < min_gap_um:
            # shrink both by half the gap: two membranes never coincide
            for k in (a, b):
                shrunk = _largest_polygon(cells[k].buffer(-min_gap_um / 2, join_style="mitre"))
                if shrunk is not None and not shrunk.is_empty:
                    cells[k] = Polygon(shrunk.exterior)
            notes.append(f"cells {labels[a]} and {labels[b]}: touching; separated by {min_gap_um:g} µm")
