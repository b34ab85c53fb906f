"""Gruen zone borders from the geometry: the zone planes cut against the surface.

Every border of the sector scheme is part of a plane:

* the resection line: the resection plane;
* a band border at fraction ``f`` of the cut-to-tip height: the points where
  ``height = (1 - f) * cut_height``, both affine in the point, so a plane;
* the tip-zone border: the plane ``height = tip_length``;
* a sector border at azimuth 45, 135, 225 or 315 degrees: the half-plane
  through the stem axis at that azimuth.

Each plane is cut against the surface (``vtkCutter``) and the segments are
clipped to the part of the plane that borders zones (below the cut, above the
tip zone, on the right side of the axis), so the drawn lines are exact where
the per-vertex zone labels are only as fine as the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vtkmodules.util import numpy_support as ns
from vtkmodules.vtkCommonDataModel import vtkPlane, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkCutter

#: Azimuths of the sector borders (degrees; 0 medial, 90 anterior).
SECTOR_BORDERS_DEG = (45.0, 135.0, 225.0, 315.0)


@dataclass
class Border:
    """One zone border: straight segments on the surface.

    Attributes:
        kind: ``"resection"``, ``"band"``, ``"tip"`` or ``"sector"``.
        segments: ``(M, 2, 3)`` segment end points (RAS mm).
        plane_normal: unit normal of the plane the border lies on.
        plane_offset: the plane is ``{p : p . plane_normal = plane_offset}`` (mm).
    """

    kind: str
    segments: np.ndarray
    plane_normal: np.ndarray
    plane_offset: float

    def distance_to_plane(self) -> np.ndarray:
        """Distance (mm) of every segment end point to the border's plane."""
        return np.abs(self.segments.reshape(-1, 3) @ self.plane_normal - self.plane_offset)


def _cut(surface: vtkPolyData, origin: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Segments ``(M, 2, 3)`` where the plane meets the surface."""
    plane = vtkPlane()
    plane.SetOrigin(*origin)
    plane.SetNormal(*normal)
    cutter = vtkCutter()
    cutter.SetInputData(surface)
    cutter.SetCutFunction(plane)
    cutter.GenerateTrianglesOff()
    cutter.Update()
    out = cutter.GetOutput()
    if out.GetNumberOfPoints() == 0 or out.GetNumberOfLines() == 0:
        return np.zeros((0, 2, 3))
    pts = ns.vtk_to_numpy(out.GetPoints().GetData()).astype(float)
    lines = out.GetLines()
    offsets = ns.vtk_to_numpy(lines.GetOffsetsArray())
    conn = ns.vtk_to_numpy(lines.GetConnectivityArray())
    # Each polyline's consecutive point pairs, all at once: every position but the last of its line starts one.
    starts = np.ones(conn.size, dtype=bool)
    starts[offsets[1:] - 1] = False
    first = np.nonzero(starts[:-1])[0]
    ids = np.stack([conn[first], conn[first + 1]], axis=1)
    return pts[ids]


def _clip(segments: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """The parts of the segments where ``p . normal >= offset``."""
    if segments.shape[0] == 0:
        return segments
    f = segments @ normal - offset  # (M, 2)
    keep_a, keep_b = f[:, 0] >= 0, f[:, 1] >= 0
    both = keep_a & keep_b
    one = keep_a ^ keep_b
    s = segments[one].copy()
    fa, fb = f[one, 0], f[one, 1]
    t = fa / (fa - fb)
    cross = s[:, 0] + t[:, None] * (s[:, 1] - s[:, 0])
    a_in = keep_a[one]
    s[a_in, 1] = cross[a_in]
    s[~a_in, 0] = cross[~a_in]
    return np.concatenate([segments[both], s])


def _plane(normal: np.ndarray, constant: float) -> tuple[np.ndarray, float]:
    """Unit normal and offset of ``{p : normal . p = constant}``."""
    length = float(np.linalg.norm(normal))
    return normal / length, constant / length


def zone_borders(surface: vtkPolyData, frame, bands_axial=(1 / 3, 1 / 3, 1 / 3)) -> list[Border]:
    """Every border between Gruen zones (sector scheme) and the resection line, cut from the surface.

    Args:
        surface: the analysed surface (RAS mm).
        frame: the :class:`~ImplantBoneContactLib.frame.StemFrame`.
        bands_axial: the proximal, middle, distal fractions of the cut-to-tip height.
    """
    axis = np.asarray(frame.axis, dtype=float)
    tip = np.asarray(frame.tip, dtype=float)
    rn = np.asarray(frame.resection_normal, dtype=float)
    rp = np.asarray(frame.resection_point, dtype=float)
    med = np.asarray(frame.medial, dtype=float)
    ant = np.asarray(frame.anterior, dtype=float)
    tip_len = float(frame.tip_length_mm)
    # Below the cut: (p - rp) . rn <= 0  ->  (-rn) . p >= -rn . rp
    below_cut = (-rn, float(-rn @ rp))
    # Above the tip zone: height = (tip - p) . axis >= tip_len  ->  (-axis) . p >= tip_len - tip . axis
    above_tip = (-axis, tip_len - float(tip @ axis))
    borders: list[Border] = []

    n, off = _plane(rn, float(rn @ rp))
    borders.append(Border("resection", _cut(surface, rp, rn), n, off))

    # cut_height(p) = height(p) + ((rp - p) . rn) / d with d = (-axis) . rn; both affine in p.
    d = float(-axis @ rn)
    for f in np.cumsum(np.asarray(bands_axial, dtype=float))[:2]:
        # f * height(p) - (1 - f) * t(p) = 0, i.e. normal . p = constant:
        normal = -f * axis + (1.0 - f) * rn / d
        constant = -(f * float(tip @ axis) - (1.0 - f) * float(rp @ rn) / d)
        n, off = _plane(normal, constant)
        segs = _cut(surface, n * off, n)
        segs = _clip(segs, *below_cut)
        segs = _clip(segs, *above_tip)
        borders.append(Border("band", segs, n, off))

    if tip_len > 0:
        n, off = _plane(-axis, tip_len - float(tip @ axis))
        segs = _clip(_cut(surface, n * off, n), *below_cut)
        borders.append(Border("tip", segs, n, off))

    for az in SECTOR_BORDERS_DEG:
        a = np.radians(az)
        direction = np.cos(a) * med + np.sin(a) * ant
        normal = -np.sin(a) * med + np.cos(a) * ant
        segs = _cut(surface, tip, normal)
        segs = _clip(segs, direction, float(direction @ tip))  # this side of the axis only
        # The sector borders run down into the tip zone too: it is 4 medially and laterally, 11 in front and behind.
        segs = _clip(segs, *below_cut)
        borders.append(Border("sector", segs, normal, float(normal @ tip)))
    return borders
