"""Rigid registration of a CAD femoral stem onto the metal in a post-operative CT.

How it works (:func:`register_stem`):

1. **The metal object.** Voxels at or above ``metal_hu`` (2000 HU) are split
   into face-connected objects; the one whose volume is closest to the
   stem's (the enclosed volume of the CAD surface) is the stem, if it is
   within 0.35-3x of it. A separate modular head, a cup, a screw or a nail
   elsewhere are other objects of other sizes, and are not used.
2. **The edge level.** The metal in a CT is blurred and blooms: at the
   threshold it looks fatter than it is. The edge of a blurred object is
   where the CT is half-way between the metal plateau and what surrounds it,
   whatever the blur width, so the fit uses the iso-level
   ``L = (plateau + background) / 2``: plateau = 90th percentile of the
   object's voxels (or the scanner's clip value, 3071 HU), background =
   median of the voxels 3-6 mm outside it. The stem's CAD size is kept (the
   fit moves and turns the stem, it never scales it), so any remaining
   uniform thickening of the metal pulls equally on opposite faces and does
   not move or turn the fit.
3. **Global initialisation.** The principal axes of the metal object are
   matched to those of the solid stem (volume moments of the closed
   surface), with the long axis both ways and a sweep of 24 turns about it
   (48 poses); each is scored by the mean distance (truncated at 5 mm) of
   400 stem surface points to the metal edge on a coarse distance map. The 4
   best go on. ``init`` replaces this by one given starting pose.
4. **Coarse fit.** Gauss-Newton on the signed distance map of the coarse
   (about 1.5 mm) metal mask at level ``L``, Huber weights (1 mm): brings the
   stem within a voxel of the edge.
5. **Fine fit to the level.** Gauss-Newton on the CT itself: each of 3000
   stem surface points should sit where the CT (trilinear, sub-voxel) equals
   ``L``; Tukey weights on the HU residual give no weight to points deep in
   metal or far in tissue, so a modular head fused to the stem in the CT or a
   stem part the CT does not show pull nothing.
6. **Fine fit to the edge.** The level still depends on what surrounds the
   metal (a cement mantle right at it raises the right level). The steepest
   fall of a blurred step is at the step whatever lies outside, so each
   point then looks along its outward normal (+-3 mm, or 2.5 voxels) for the
   innermost strong maximum of -dHU/ds, refined to sub-sample by a parabola,
   and the stem is moved point-to-plane toward those edges (Gauss-Newton,
   Huber 0.5 mm). Points with no edge in reach are not used.
7. **Verdict.** Over the stem points: the signed distance to the edge found
   along the normal (a point with none counts the window's width; a point
   deep in metal, e.g. inside a modular head, is left out as long as they are
   fewer than half), its RMS, and the fraction of points inside the metal (or
   within half a voxel of its edge). A fit with RMS above
   ``max(0.75 mm, 0.4 voxel)`` or less than 90 % inside is a failed fit:
   :class:`~ImplantBoneContactLib.errors.InputError`, never a transform.

The transform is written as an ITK ``.tfm`` (:func:`write_transform`) in the
convention :func:`~ImplantBoneContactLib.mesh.read_transform` and Slicer's
Transforms module read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support as ns

from . import vtkclasses as vtk
from .errors import InputError, OutputError
from .mesh import points, prepare_surface, signed_volume, transform_polydata, triangle_areas, triangles
from .sampling import sample
from .segment import label_components
from .volume import LPS_TO_RAS, Volume

ProgressCallback = Callable[[float, str], None]

#: Voxels at or above this HU are candidate metal (steel, CoCr, titanium on clinical CTs).
DEFAULT_METAL_HU = 2000.0
#: A metal object is the stem when its voxel volume is within this factor range of the stem's.
VOLUME_RATIO_RANGE = (0.35, 3.0)
#: The fit is accepted with at least this fraction of the stem surface inside the metal.
MIN_INSIDE_FRACTION = 0.90
#: The fit is accepted with RMS distance to the metal edge at most max(this, 0.4 voxel) (mm).
MAX_RMS_MM = 0.75


@dataclass
class RegistrationResult:
    """A rigid registration of the stem onto the CT's metal.

    Attributes:
        matrix_ras: 4x4 matrix moving the model (RAS mm, as read) onto the CT (RAS mm).
        rms_mm: RMS distance of the stem surface points to the metal edge found along their normals (mm).
        inside_fraction: fraction of stem surface points inside the metal (or within half a voxel of its edge).
        ok: the fit passed both limits.
        verdict: one sentence on the fit.
        level_hu: the edge iso-level used (HU), half-way between plateau and background.
        plateau_hu, background_hu: the metal plateau and the surrounding tissue (HU).
        metal_volume_mm3: voxel volume of the metal object used (mm^3).
        model_volume_mm3: enclosed volume of the stem model (mm^3).
        median_abs_mm, p95_abs_mm: median and 95th percentile of the absolute distances (mm).
        max_rms_mm: the RMS limit applied (mm).
        initialisation: how the start pose was found.
        n_points: stem surface points used by the fine fit.
        seconds: time taken per stage (s).
    """

    matrix_ras: np.ndarray
    rms_mm: float
    inside_fraction: float
    ok: bool
    verdict: str
    level_hu: float = float("nan")
    plateau_hu: float = float("nan")
    background_hu: float = float("nan")
    metal_volume_mm3: float = float("nan")
    model_volume_mm3: float = float("nan")
    median_abs_mm: float = float("nan")
    p95_abs_mm: float = float("nan")
    max_rms_mm: float = MAX_RMS_MM
    initialisation: str = ""
    n_points: int = 0
    seconds: dict = field(default_factory=dict)
    qc: object = field(default=None, repr=False)

    def write_files(self, folder: str | os.PathLike, pictures: bool = True) -> list[str]:
        """Write ``stem_to_ct.tfm`` (and ``registration_qc.png``) into a result folder; return the names.

        A method, so that the writer of a result folder (``export``) writes them without importing this module.
        """
        return write_registration_files(self, folder, pictures=pictures)

    def write_qc_picture(self, folder: str | os.PathLike) -> list[str]:
        """Write ``registration_qc.png`` into a result folder (when the fit kept its QC data); return the names."""
        if self.qc is None:
            return []
        write_qc_picture(self, Path(folder) / "registration_qc.png")
        return ["registration_qc.png"]

    def to_dict(self) -> dict:
        """The fit as JSON-able values (the ``registration`` block of ``parameters.json``)."""
        return {
            "matrix_ras": np.asarray(self.matrix_ras).tolist(),
            "rms_mm": self.rms_mm,
            "inside_fraction": self.inside_fraction,
            "ok": self.ok,
            "verdict": self.verdict,
            "level_hu": self.level_hu,
            "plateau_hu": self.plateau_hu,
            "background_hu": self.background_hu,
            "metal_volume_mm3": self.metal_volume_mm3,
            "model_volume_mm3": self.model_volume_mm3,
            "median_abs_mm": self.median_abs_mm,
            "p95_abs_mm": self.p95_abs_mm,
            "max_rms_mm": self.max_rms_mm,
            "min_inside_fraction": MIN_INSIDE_FRACTION,
            "initialisation": self.initialisation,
            "n_points": self.n_points,
            "seconds": dict(self.seconds),
        }

    def summary(self) -> str:
        """Lines for the command line."""
        return (
            f"fit: RMS distance to the metal edge {self.rms_mm:.2f} mm (median {self.median_abs_mm:.2f}, "
            f"95% {self.p95_abs_mm:.2f}), {100 * self.inside_fraction:.1f}% of the stem inside the metal\n"
            f"edge level {self.level_hu:.0f} HU (metal {self.plateau_hu:.0f}, surroundings {self.background_hu:.0f}); "
            f"metal object {self.metal_volume_mm3:.0f} mm3, stem {self.model_volume_mm3:.0f} mm3\n"
            f"verdict: {self.verdict}"
        )


# ----- small geometry helpers -----
def _rodrigues(w: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3)
    k = w / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def _rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ m[:3, :3].T + m[:3, 3]


def solid_moments(pts: np.ndarray, faces: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Volume (mm^3), centroid (mm) and 3x3 central second moment per unit volume (mm^2) of the solid a closed surface bounds.

    Sums over the signed tetrahedra (origin, a, b, c) of each triangle, taken
    about the bounding-box centre for precision; a mesh with inward triangles
    gives the same result (the signs cancel).
    """
    o = 0.5 * (pts.min(0) + pts.max(0))
    a, b, c = pts[faces[:, 0]] - o, pts[faces[:, 1]] - o, pts[faces[:, 2]] - o
    v = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0
    vol = v.sum()
    s = a + b + c
    centroid = (v[:, None] * s).sum(0) / 4.0 / vol
    # Integral of x x^T over a tetrahedron (0, a, b, c): V/20 (a a^T + b b^T + c c^T + s s^T).
    second = (np.einsum("i,ij,ik->jk", v, a, a) + np.einsum("i,ij,ik->jk", v, b, b) + np.einsum("i,ij,ik->jk", v, c, c)
              + np.einsum("i,ij,ik->jk", v, s, s)) / 20.0
    central = second / vol - np.outer(centroid, centroid)
    return float(abs(vol)), centroid + o, central


def _principal_axes(cov: np.ndarray) -> np.ndarray:
    """Eigenvectors as columns, largest variance first, right-handed."""
    w, v = np.linalg.eigh(cov)
    v = v[:, np.argsort(w)[::-1]]
    if np.linalg.det(v) < 0:
        v[:, 2] = -v[:, 2]
    return v


def surface_samples(pts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points spread over a triangle surface by area (random, reproducible) and their outward unit normals."""
    areas = triangle_areas(pts, faces)
    rng = np.random.default_rng(seed)
    tri = rng.choice(faces.shape[0], size=n, p=areas / areas.sum())
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    a, b, c = pts[faces[tri, 0]], pts[faces[tri, 1]], pts[faces[tri, 2]]
    p = a + r1[:, None] * (b - a) + r2[:, None] * (c - a)
    nrm = np.cross(b - a, c - a)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1), 1e-12)[:, None]
    if signed_volume(pts, faces) < 0:
        nrm = -nrm
    return p, nrm


# ----- the metal object -----
@dataclass
class _MetalObject:
    crop: Volume  # float32 CT around the object
    mask: np.ndarray  # object voxels in the crop
    volume_mm3: float
    n_objects: int


def _find_metal(volume: Volume, model_volume: float, metal_hu: float, margin_mm: float = 12.0) -> _MetalObject:
    arr = volume.array
    selected = arr >= metal_hu
    if not selected.any():
        raise InputError(
            f"the CT has no metal: no voxel reaches {metal_hu:g} HU (maximum {float(np.nanmax(arr)):g} HU); "
            "registration needs a post-operative CT with the stem in it"
        )
    labels, sizes, cc_box = label_components(selected)
    del selected
    voxel_mm3 = float(abs(np.linalg.det(volume.ijk_to_ras[:3, :3])))
    vols = sizes * voxel_mm3
    ratios = vols / model_volume
    fits = np.flatnonzero((ratios >= VOLUME_RATIO_RANGE[0]) & (ratios <= VOLUME_RATIO_RANGE[1]))
    if fits.size == 0:
        biggest = ", ".join(f"{v:.0f}" for v in vols[:3])
        raise InputError(
            f"no metal object in the CT has the stem's size: the stem encloses {model_volume:.0f} mm3, the largest "
            f"metal objects (>= {metal_hu:g} HU) are {biggest} mm3; check that the model is this patient's stem in mm, "
            "or set --metal-hu"
        )
    best = int(fits[np.argmin(np.abs(np.log(ratios[fits])))])
    obj_in_box = labels == best + 1
    del labels
    spacing = volume.spacing_mm
    idx = [np.nonzero(obj_in_box.any(axis=ax))[0] + cc_box[d].start for d, ax in enumerate(((1, 2), (0, 2), (0, 1)))]
    margin = [int(np.ceil(margin_mm / spacing[2 - d])) for d in range(3)]
    lo = [max(int(a[0]) - m, 0) for a, m in zip(idx, margin)]
    hi = [min(int(a[-1]) + m + 1, s) for a, m, s in zip(idx, margin, arr.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = [lo[2], lo[1], lo[0]]
    crop_arr = arr[box].astype(np.float32)
    if not np.all(np.isfinite(crop_arr)):
        crop_arr[~np.isfinite(crop_arr)] = np.nanmin(crop_arr)
    crop = Volume(crop_arr, volume.ijk_to_ras @ shift, source=f"{volume.source} (metal crop)")
    # The object's voxels in the crop (the crop holds the object's box, and the object lies within the labelled box).
    mask = np.zeros(crop_arr.shape, dtype=bool)
    dst = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(cc_box, box))
    src = tuple(slice(max(b.start - c.start, 0), min(b.stop, c.stop) - c.start) for c, b in zip(cc_box, box))
    dst = tuple(slice(max(d.start, 0), max(d.start, 0) + (s.stop - s.start)) for d, s in zip(dst, src))
    mask[dst] = obj_in_box[src]
    return _MetalObject(crop=crop, mask=mask, volume_mm3=float(vols[best]), n_objects=len(sizes))


def _block_mean(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    k, j, i = (a.shape[d] // f[d] for d in range(3))
    t = a[: k * f[0], : j * f[1], : i * f[2]].astype(np.float32, copy=False)
    return t.reshape(k, f[0], j, f[1], i, f[2]).mean(axis=(1, 3, 5))


def _signed_distance(mask: np.ndarray, spacing_kji: tuple) -> np.ndarray:
    """Signed distance (mm) to the edge of a binary mask, negative inside, zero half-way between voxels."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
    outside = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    # Maurer puts 0 on the outermost object voxels: shift by half a voxel so 0 lies between voxels.
    return (outside - 0.5 * float(np.mean(spacing_kji))).astype(np.float32)


# ----- the fit -----
class _Fitter:
    def __init__(self, metal: _MetalObject, level_override: float | None = None) -> None:
        self.metal = metal
        crop = metal.crop
        sp = crop.spacing_mm  # i, j, k
        self.voxel_mm = float(np.max(sp))
        f = tuple(int(max(1, round(1.5 / sp[2 - d]))) for d in range(3))  # k, j, i factors
        self.coarse_factor = f
        cm = _block_mean(metal.mask.astype(np.float32), f) >= 0.5
        scale = np.diag([f[2], f[1], f[0], 1.0])
        scale[:3, 3] = [(f[2] - 1) / 2, (f[1] - 1) / 2, (f[0] - 1) / 2]
        coarse_geom = crop.ijk_to_ras @ scale
        coarse_spacing = (sp[2] * f[0], sp[1] * f[1], sp[0] * f[2])
        dist_obj = _signed_distance(cm, coarse_spacing) if cm.any() else None
        # Plateau and background from the object and a shell 3-6 mm around it.
        values = crop.array[metal.mask]
        plateau = float(np.percentile(values, 90))
        if dist_obj is not None:
            ck = np.minimum(np.arange(crop.array.shape[0]) // f[0], cm.shape[0] - 1)
            cj = np.minimum(np.arange(crop.array.shape[1]) // f[1], cm.shape[1] - 1)
            ci = np.minimum(np.arange(crop.array.shape[2]) // f[2], cm.shape[2] - 1)
            d_fine = dist_obj[np.ix_(ck[::2], cj[::2], ci[::2])]
            shell = (d_fine >= 3.0) & (d_fine <= 6.0)
            sub = crop.array[::2, ::2, ::2]
            background = float(np.median(sub[shell])) if shell.any() else float(np.percentile(crop.array, 25))
        else:
            background = float(np.percentile(crop.array, 25))
        self.plateau, self.background = plateau, background
        if plateau - background < 400.0:
            raise InputError(
                f"the metal object does not stand out of its surroundings ({plateau:.0f} HU against {background:.0f} HU): "
                "cannot find its edge; is this a metal implant?"
            )
        self.level = float(level_override) if level_override is not None else 0.5 * (plateau + background)
        # Coarse distance map of the mask at the edge level (not the detection threshold).
        coarse_ct = _block_mean(crop.array, f)
        dmap = _signed_distance(coarse_ct >= self.level, coarse_spacing)
        self.coarse = Volume(dmap, coarse_geom, source="coarse distance map")
        self.coarse_h = float(np.mean(coarse_spacing))
        self.fine_h = 0.5 * float(np.min(sp))
        self.profile_step = min(0.5, 0.5 * float(np.min(sp)))
        self.window = max(3.0, 2.5 * float(np.max(sp)))
        # A metal edge falls by about (plateau - background) over a few mm; noise and bloom far less steeply.
        self.edge_threshold = 0.1 * (self.plateau - self.background) / max(1.0, float(np.max(sp)))
        # Principal axes of the metal at the edge level.
        kk, jj, ii = np.nonzero(crop.array >= self.level)
        ijk = np.column_stack([ii, jj, kk]).astype(float)
        ras = _apply(crop.ijk_to_ras, ijk)
        self.metal_centroid = ras.mean(0)
        self.metal_axes = _principal_axes(np.cov(ras.T))

    # distance field (coarse) and CT (fine) at points, with gradients by central differences
    def _field(self, vol: Volume, q: np.ndarray, h: float, fill: float) -> tuple[np.ndarray, np.ndarray]:
        n = q.shape[0]
        offs = np.concatenate([np.zeros((1, 3)), h * np.eye(3), -h * np.eye(3)])
        allp = (q[None, :, :] + offs[:, None, :]).reshape(-1, 3)
        v, _ = sample(vol, allp)
        v = np.where(np.isfinite(v), v, fill).reshape(7, n)
        grad = (v[1:4] - v[4:7]).T / (2 * h)
        return v[0], grad

    def coarse_score(self, pts: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
        allq = np.concatenate([_apply(m, pts) for m in matrices])
        d, _ = sample(self.coarse, allq)
        d = np.where(np.isfinite(d), np.abs(d), 5.0)
        return np.minimum(d, 5.0).reshape(len(matrices), -1).mean(1)

    def _gauss_newton(self, pts, m, residual_fn, iterations, tol_mm=1e-3):
        m = m.copy()
        for _ in range(iterations):
            q = _apply(m, pts)
            r, g, w = residual_fn(q)
            if np.count_nonzero(w > 0) < 12:
                break
            c = (w[:, None] * q).sum(0) / w.sum()
            jac = np.hstack([np.cross(q - c, g), g])
            jw = jac * w[:, None]
            a = jac.T @ jw + 1e-9 * np.eye(6)
            b = -jw.T @ r
            x = np.linalg.solve(a, b)
            rot = _rodrigues(x[:3])
            inc = np.eye(4)
            inc[:3, :3] = rot
            inc[:3, 3] = c - rot @ c + x[3:]
            m = inc @ m
            if np.linalg.norm(x[3:]) < tol_mm and np.linalg.norm(x[:3]) < tol_mm / 100.0:
                break
        return m

    def coarse_fit(self, pts: np.ndarray, m: np.ndarray, iterations: int = 25) -> np.ndarray:
        def residual(q):
            d, g = self._field(self.coarse, q, self.coarse_h, 10.0)
            a = np.abs(d)
            w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-9))  # Huber, 1 mm
            w[a > 15.0] = 0.0
            return d, g, w

        return self._gauss_newton(pts, m, residual, iterations)

    def fine_fit(self, pts: np.ndarray, m: np.ndarray, iterations: int = 30) -> np.ndarray:
        half = 0.5 * (self.plateau - self.background)

        def residual(q):
            v, g = self._field(self.metal.crop, q, self.fine_h, self.background)
            r = v - self.level
            u = r / (0.9 * half)
            w = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)  # Tukey biweight on the HU residual
            return r, g, w

        return self._gauss_newton(pts, m, residual, iterations, tol_mm=1e-4)

    def edge_offsets(self, q: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the metal's edge is along each stem point's outward normal: the innermost strong maximum of the
        CT's fall-off (-dHU/ds) within +-``window`` mm, refined to sub-sample by a parabola.

        The steepest fall of a blurred step is at the step whatever the blur and whatever lies outside
        (bone, a cement mantle, bloom), where a fixed iso-level would drift with the outside value.

        Returns:
            ``(offset_mm, found, in_metal)``: edge position along the normal (mm, positive: the point is
            inside the metal), whether an edge was found, and whether the CT at the point is metal.
        """
        h = self.profile_step
        s = np.arange(-self.window, self.window + 0.5 * h, h)
        prof = q[:, None, :] + s[None, :, None] * normals[:, None, :]
        v, _ = sample(self.metal.crop, prof.reshape(-1, 3))
        v = v.reshape(q.shape[0], s.size)
        self.last_profile_in_ct = np.isfinite(v).all(axis=1)  # the whole profile lies in the CT
        v = np.where(np.isfinite(v), v, self.background)
        fall = -(v[:, 2:] - v[:, :-2]) / (2 * h)  # at s[1:-1]
        mid = fall[:, 1:-1]
        peak = (mid >= fall[:, :-2]) & (mid > fall[:, 2:]) & (mid >= self.edge_threshold)
        found = peak.any(axis=1)
        first = np.argmax(peak, axis=1) + 1  # index into fall
        rows = np.arange(q.shape[0])
        y0, y1, y2 = fall[rows, first - 1], fall[rows, first], fall[rows, first + 1]
        denom = y0 - 2 * y1 + y2
        delta = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
        offset = s[1:-1][first] + np.clip(delta, -0.5, 0.5) * h
        centre = v[:, s.size // 2]
        return np.where(found, offset, np.nan), found, centre >= self.level

    def edge_fit(self, pts: np.ndarray, normals: np.ndarray, m: np.ndarray, iterations: int = 15) -> np.ndarray:
        """Gauss-Newton, point to plane: each stem point toward the metal edge found along its normal (Huber, 0.5 mm)."""
        m = m.copy()
        for _ in range(iterations):
            q = _apply(m, pts)
            n = normals @ m[:3, :3].T
            off, found, _ = self.edge_offsets(q, n)
            found &= self.last_profile_in_ct  # no edge is made up where the scan ends
            if np.count_nonzero(found) < 12:
                break
            r = np.where(found, -off, 0.0)
            a = np.abs(r)
            w = np.where(found, np.where(a <= 0.5, 1.0, 0.5 / np.maximum(a, 1e-9)), 0.0)
            c = (w[:, None] * q).sum(0) / w.sum()
            jac = np.hstack([np.cross(q - c, n), n])
            jw = jac * w[:, None]
            x = np.linalg.solve(jac.T @ jw + 1e-9 * np.eye(6), -jw.T @ r)
            rot = _rodrigues(x[:3])
            inc = np.eye(4)
            inc[:3, :3] = rot
            inc[:3, 3] = c - rot @ c + x[3:]
            m = inc @ m
            if np.linalg.norm(x[3:]) < 1e-4 and np.linalg.norm(x[:3]) < 1e-6:
                break
        return m


def register_stem(
    volume: Volume,
    model_surface: vtk.vtkPolyData,
    init: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    metal_hu: float = DEFAULT_METAL_HU,
    level_hu: float | None = None,
    n_points: int = 3000,
    max_rms_mm: float | None = None,
    min_inside_fraction: float = MIN_INSIDE_FRACTION,
    raise_on_failure: bool = True,
    qc: bool = True,
) -> RegistrationResult:
    """Find the rigid transform that puts the CAD stem onto the metal in a post-operative CT.

    Args:
        volume: the post-operative CT (HU).
        model_surface: the stem surface in its own CAD frame (RAS mm as read).
        init: optional 4x4 starting matrix (model -> CT, RAS); replaces the global search.
        progress: called as ``progress(fraction_done, message)``.
        metal_hu: voxels at or above this (HU) are candidate metal objects.
        level_hu: edge iso-level (HU); default half-way between the metal plateau and its surroundings.
        n_points: stem surface points used by the fine fit.
        max_rms_mm: RMS limit of an accepted fit (mm); default max(0.75 mm, 0.4 x the largest voxel size).
        min_inside_fraction: least fraction of the stem surface inside the metal for an accepted fit.
        raise_on_failure: raise :class:`InputError` for a failed fit (default); otherwise return it with ``ok=False``.
        qc: keep the slices for :func:`write_qc_picture`.

    Returns:
        A :class:`RegistrationResult`; ``matrix_ras`` moves the model onto the CT.

    Raises:
        InputError: no metal in the CT, no metal object of the stem's size,
            metal that does not stand out, or a poor fit.
    """
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def step(f: float, msg: str) -> None:
        if progress is not None:
            progress(f, msg)

    surface = prepare_surface(model_surface, "stem model")
    pts, faces = points(surface), triangles(surface)
    model_volume, model_centroid, model_cov = solid_moments(pts, faces)
    if model_volume < 100.0:
        raise InputError(
            f"the stem model encloses only {model_volume:.3g} mm3: is it closed, and in mm (not metres)?"
        )
    if init is not None:
        init = np.asarray(init, dtype=float)
        from .mesh import check_registration_matrix

        check_registration_matrix(init, "starting transform (--init)")
    step(0.0, "finding the metal object of the stem's size")
    metal = _find_metal(volume, model_volume, float(metal_hu))
    times["metal_object"] = time.perf_counter() - t0
    t = time.perf_counter()
    fitter = _Fitter(metal, level_hu)
    times["edge_level_and_maps"] = time.perf_counter() - t
    from .mesh import surface_geometry

    oriented = surface_geometry(surface).faces  # consistent outward triangles: the normals point out of the metal
    fine_pts, fine_nrm = surface_samples(pts, oriented, n_points, seed=1)
    coarse_pts = fine_pts[:400]

    t = time.perf_counter()
    if init is None:
        step(0.3, "global search over principal-axis poses")
        model_axes = _principal_axes(model_cov)
        candidates = []
        for flip in (np.eye(3), np.diag([-1.0, -1.0, 1.0])):
            for angle in np.arange(0.0, 360.0, 15.0):
                r = fitter.metal_axes @ flip @ _rot_x(angle) @ model_axes.T
                m = np.eye(4)
                m[:3, :3] = r
                m[:3, 3] = fitter.metal_centroid - r @ model_centroid
                candidates.append(m)
        scores = fitter.coarse_score(coarse_pts, candidates)
        starts = [candidates[i] for i in np.argsort(scores)[:4]]
        how = f"principal axes of the metal object, {len(candidates)} poses (long axis both ways, 15-degree sweep), best 4 refined"
    else:
        starts = [init]
        how = "given starting transform"
    times["global_search"] = time.perf_counter() - t

    t = time.perf_counter()
    step(0.5, "coarse fit to the metal's distance map")
    coarse = [fitter.coarse_fit(coarse_pts, m) for m in starts]
    cscores = fitter.coarse_score(coarse_pts, coarse)
    order = np.argsort(cscores)[:2]
    times["coarse_fit"] = time.perf_counter() - t
    t = time.perf_counter()
    step(0.7, "fine fit to the metal edge (half-way level)")
    best = None
    for i in order:
        m = fitter.fine_fit(fine_pts, coarse[i])
        m = fitter.edge_fit(fine_pts, fine_nrm, m)
        off, found, in_metal = fitter.edge_offsets(_apply(m, fine_pts), fine_nrm @ m[:3, :3].T)
        # Signed distance to the edge (negative: inside the metal); no edge within the window counts as the
        # window's width, outside, or inside when the point is in metal (covered, see below).
        d = np.where(found, -np.nan_to_num(off), np.where(in_metal, -2 * fitter.window, fitter.window))
        # Where the scan ends (a stem cut by the CT's edge) nothing can be measured: those points are left out.
        d = np.where(fitter.last_profile_in_ct, d, np.nan)
        dd = d[np.isfinite(d)] if np.isfinite(d).mean() >= 0.5 else np.nan_to_num(d, nan=fitter.window)
        rms = float(np.sqrt(np.mean(np.clip(dd, -fitter.window, None) ** 2)))
        if best is None or rms < best[1]:
            best = (m, rms, d)
    times["fine_fit"] = time.perf_counter() - t
    matrix, rms, d = best
    in_ct_fraction = float(np.mean(np.isfinite(d)))
    d = d[np.isfinite(d)] if in_ct_fraction >= 0.5 else np.nan_to_num(d, nan=fitter.window)
    # Orthonormalise (Gauss-Newton steps are exact rotations; this removes rounding drift).
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    matrix[:3, :3] = u @ vt
    tol_inside = max(0.5, 0.5 * fitter.voxel_mm)
    inside = float(np.mean(d <= tol_inside))
    # Stem points deep in metal (a modular head around the taper, metal the model lacks) agree with the fit but
    # measure nothing: the RMS is over the others, and they may not be the majority.
    covered = d < -fitter.window
    covered_fraction = float(np.mean(covered))
    d = d[~covered] if covered_fraction < 0.5 else d
    rms = float(np.sqrt(np.mean(d * d)))
    limit = float(max_rms_mm) if max_rms_mm is not None else max(MAX_RMS_MM, 0.4 * fitter.voxel_mm)
    problems = []
    if rms > limit:
        problems.append(f"RMS distance {rms:.2f} mm > {limit:.2f} mm")
    if covered_fraction >= 0.5:
        problems.append(f"{100 * covered_fraction:.0f}% of the stem lies deep inside a larger metal object")
    if inside < min_inside_fraction:
        problems.append(f"only {100 * inside:.0f}% of the stem inside the metal (< {100 * min_inside_fraction:.0f}%)")
    ok = not problems
    if ok:
        verdict = f"good fit: RMS {rms:.2f} mm <= {limit:.2f} mm, {100 * inside:.1f}% of the stem inside the metal"
    else:
        verdict = "poor fit: " + "; ".join(problems) + (
            ": the model may not be the implant in this CT (other design or size, or a different unit), or the metal "
            "is cut by the scan's edge; try --init with a rough starting transform"
        )
    result = RegistrationResult(
        matrix_ras=matrix,
        rms_mm=rms,
        inside_fraction=inside,
        ok=ok,
        verdict=verdict,
        level_hu=fitter.level,
        plateau_hu=fitter.plateau,
        background_hu=fitter.background,
        metal_volume_mm3=metal.volume_mm3,
        model_volume_mm3=model_volume,
        median_abs_mm=float(np.median(np.abs(d))),
        p95_abs_mm=float(np.percentile(np.abs(d), 95)),
        max_rms_mm=limit,
        initialisation=how,
        n_points=int(fine_pts.shape[0]),
    )
    if qc:
        t = time.perf_counter()
        result.qc = _qc_data(fitter, transform_polydata(surface, matrix), result)
        times["qc_slices"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    result.seconds = times
    step(1.0, verdict)
    if not ok and raise_on_failure:
        raise InputError(f"the stem could not be registered to the CT: {verdict}")
    return result


# ----- transform file -----
def write_transform(matrix_ras: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a model -> CT RAS matrix as an ITK transform file (``.tfm``/``.txt``/``.h5``).

    ITK stores the resampling transform (CT -> model) in LPS, which is what
    Slicer writes for a transform that moves a model; the inverse of
    :func:`~ImplantBoneContactLib.mesh.read_transform`.
    """
    import SimpleITK as sitk

    m = np.asarray(matrix_ras, dtype=float)
    moving_lps = LPS_TO_RAS @ m @ LPS_TO_RAS
    resampling = np.linalg.inv(moving_lps)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in resampling[:3, :3].ravel()))
    tx.SetTranslation(tuple(float(v) for v in resampling[:3, 3]))
    p = Path(path)
    tmp = p.with_name(f".{p.stem}.partial{p.suffix}")
    try:
        sitk.WriteTransform(tx, str(tmp))
        os.replace(tmp, p)
    except (OSError, RuntimeError) as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"cannot write the transform {p}: {exc}") from None
    return p


# ----- QC picture -----
@dataclass
class _QCData:
    slices: list  # three (title, 2D array, extent, segments (N, 2, 2)) tuples
    level_hu: float
    window: tuple
    text: str


def _qc_data(fitter: _Fitter, registered: vtk.vtkPolyData, result: RegistrationResult) -> _QCData:
    crop = fitter.metal.crop
    arr = crop.array
    sp = crop.spacing_mm  # i, j, k
    ijk_poly = transform_polydata(registered, crop.ras_to_ijk)
    centre = points(ijk_poly).mean(0)
    ci, cj, ck = (int(np.clip(round(centre[d]), 0, arr.shape[2 - d] - 1)) for d in range(3))
    out = []
    # (title, fixed axis, index, image, in-plane axes (x, y))
    views = (
        (f"axial (k = {ck})", 2, ck, arr[ck], (0, 1)),
        (f"coronal (j = {cj})", 1, cj, arr[:, cj, :], (0, 2)),
        (f"sagittal (i = {ci})", 0, ci, arr[:, :, ci], (1, 2)),
    )
    for title, axis, index, image, (ax_x, ax_y) in views:
        plane = vtk.vtkPlane()
        origin = [0.0, 0.0, 0.0]
        origin[axis] = float(index)
        normal = [0.0, 0.0, 0.0]
        normal[axis] = 1.0
        plane.SetOrigin(origin)
        plane.SetNormal(normal)
        cutter = vtk.vtkCutter()
        cutter.SetCutFunction(plane)
        cutter.SetInputData(ijk_poly)
        cutter.Update()
        cut = cutter.GetOutput()
        segs = np.zeros((0, 2, 2))
        if cut.GetNumberOfCells() and cut.GetLines().GetNumberOfCells():
            cp = ns.vtk_to_numpy(cut.GetPoints().GetData()).astype(float)
            conn = ns.vtk_to_numpy(cut.GetLines().GetConnectivityArray()).reshape(-1, 2)
            segs = np.stack([cp[conn][:, :, ax_x] * sp[ax_x], cp[conn][:, :, ax_y] * sp[ax_y]], axis=-1)
        extent = (-0.5 * sp[ax_x], (image.shape[1] - 0.5) * sp[ax_x], -0.5 * sp[ax_y], (image.shape[0] - 0.5) * sp[ax_y])
        out.append((title, np.array(image, dtype=np.float32), extent, segs))
    text = (f"RMS {result.rms_mm:.2f} mm, {100 * result.inside_fraction:.1f}% inside metal, "
            f"edge level {result.level_hu:.0f} HU\n{result.verdict}")
    return _QCData(out, fitter.level, (min(fitter.background - 400.0, -200.0), fitter.plateau), text)


def write_qc_picture(result: RegistrationResult, path: str | os.PathLike) -> Path:
    """Write ``registration_qc.png``: axial, coronal and sagittal CT slices through the stem.

    Red: the registered stem's outline; yellow: the metal edge (the iso-level
    the fit used). Slices are the CT's voxel planes through the stem centre,
    in mm from the corner of the region around the metal.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    qc = result.qc
    if qc is None:
        raise ValueError("the registration result holds no QC slices (register_stem(..., qc=True))")
    fig, axes = plt.subplots(1, 3, figsize=(15, 6.2), constrained_layout=True)
    for ax, (title, image, extent, segs) in zip(axes, qc.slices):
        ax.imshow(image, cmap="gray", vmin=qc.window[0], vmax=qc.window[1], origin="lower", extent=extent, interpolation="nearest")
        if image.max() >= qc.level_hu >= image.min():
            ny, nx = image.shape
            xs = np.linspace(extent[0] + 0.5 * (extent[1] - extent[0]) / nx, extent[1] - 0.5 * (extent[1] - extent[0]) / nx, nx)
            ys = np.linspace(extent[2] + 0.5 * (extent[3] - extent[2]) / ny, extent[3] - 0.5 * (extent[3] - extent[2]) / ny, ny)
            ax.contour(xs, ys, image, levels=[qc.level_hu], colors=["yellow"], linewidths=1.0)
        if len(segs):
            ax.add_collection(LineCollection(segs, colors="red", linewidths=1.2))
        ax.set_title(title)
        ax.set_xlabel("mm")
        ax.set_aspect("equal")
    axes[0].legend(
        handles=[Line2D([], [], color="red", label="registered stem"), Line2D([], [], color="yellow", label=f"metal edge ({qc.level_hu:.0f} HU)")],
        loc="upper right", fontsize=8,
    )
    fig.suptitle(qc.text, fontsize=10)
    p = Path(path)
    tmp = p.with_name(f".{p.stem}.partial{p.suffix}")
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, p)
    finally:
        plt.close(fig)
    return p


def write_registration_files(result: RegistrationResult, folder: str | os.PathLike, pictures: bool = True) -> list[str]:
    """Write ``stem_to_ct.tfm`` (and ``registration_qc.png``) into a result folder; return the names."""
    folder = Path(folder)
    write_transform(result.matrix_ras, folder / "stem_to_ct.tfm")
    names = ["stem_to_ct.tfm"]
    if pictures and result.qc is not None:
        write_qc_picture(result, folder / "registration_qc.png")
        names.append("registration_qc.png")
    return names


# ----- command line -----
def add_register_parser(sub) -> None:
    """Add the ``register`` subcommand to an argparse subparsers object."""
    r = sub.add_parser("register", help="register the CAD stem to the metal in a post-operative CT (writes an ITK .tfm)")
    r.add_argument("--ct", required=True, help="post-operative CT: NRRD, NIfTI, MetaImage file or a DICOM series folder")
    r.add_argument("--model", required=True, help="the stem surface in its CAD frame: STL, OBJ, PLY, VTK or VTP (mm)")
    r.add_argument("--out", required=True, help="transform file to write (.tfm, ITK; read by analyze --transform and Slicer)")
    r.add_argument("--init", metavar="TRANSFORM", help="starting transform (4x4 RAS text or ITK file) instead of the global search")
    r.add_argument("--qc", metavar="PNG", help="QC picture (default: beside --out, named after it: STEM_TO_CT_qc.png)")
    r.add_argument("--registered-model", metavar="SURFACE", help="also write the registered stem surface (.stl/.vtp, SPACE=RAS)")
    r.add_argument("--model-space", choices=("RAS", "LPS"), type=str.upper, help="override the model file's coordinate system")
    r.add_argument("--metal-hu", type=float, default=DEFAULT_METAL_HU, help=f"metal objects are voxels at or above this HU (default {DEFAULT_METAL_HU:g})")
    r.add_argument("--max-rms", type=float, metavar="MM", help="largest accepted RMS distance to the metal edge (default max(0.75 mm, 0.4 voxel))")
    r.add_argument("--series-uid", help="DICOM series to read when the folder holds several")
    r.add_argument("--overwrite", action="store_true", help="replace existing output files")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    r.set_defaults(run=run_register)


def run_register(args) -> int:
    """Run ``implant-bone-contact register``; returns the exit code."""
    from .mesh import read_model, read_transform
    from .segment import write_surface
    from .volume import read_volume

    out = Path(args.out)
    qc_path = Path(args.qc) if args.qc else out.with_name(f"{out.stem}_qc.png")
    targets = [out, qc_path] + ([Path(args.registered_model)] if args.registered_model else [])
    if out.suffix.lower() not in (".tfm", ".txt", ".h5", ".hdf5", ".mat"):
        raise InputError(f"--out must be an ITK transform file (.tfm, .txt, .h5), got {out.name}")
    for p in targets:
        if p.exists() and not args.overwrite:
            raise OutputError(f"{p} exists: use --overwrite to replace it")
        if not p.parent.exists():
            raise OutputError(f"the folder of {p} does not exist: {p.parent}")
    volume = read_volume(args.ct, series_uid=args.series_uid)
    surface, _ = read_model(args.model, space=args.model_space)
    init = read_transform(args.init) if args.init else None
    result = register_stem(volume, surface, init=init, metal_hu=args.metal_hu, max_rms_mm=args.max_rms)
    write_transform(result.matrix_ras, out)
    write_qc_picture(result, qc_path)
    if args.registered_model:
        write_surface(transform_polydata(surface, result.matrix_ras), args.registered_model)
    if not args.quiet:
        print(result.summary())
        print(f"wrote {out} and {qc_path} ({result.seconds.get('total', 0.0):.1f} s)")
    return 0
