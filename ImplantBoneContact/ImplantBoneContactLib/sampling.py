"""Sampling CT values (HU) at points on, or offset from, the implant surface.

Trilinear sampling is the algorithm of Slicer's Probe Volume With Model CLI:
the points are moved into continuous voxel index space (RAS-to-IJK) and the
image is interpolated trilinearly between the 8 surrounding voxel centres,
as ``vtkProbeFilter`` does on an image with spacing 1 and origin 0. The
difference: values stay floating point (the CLI stores them in the volume's
type, so an int16 CT gives rounded HU) and a point outside the CT gets NaN,
not 0.

The voxel array is never converted as a whole: only the 8 neighbours of each
point are gathered, chunk by chunk, so memory stays at the CT's own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .volume import Volume

SAMPLING_METHODS = ("trilinear", "nearest")
PROFILE_AGGREGATES = ("max", "mean", "median")

_CHUNK = 1 << 20
# A point up to 1e-3 of a voxel diagonal outside the box of voxel centres is still
# sampled (clamped to the edge), as vtkProbeFilter does (measured: accepted at
# 0.00172 voxel, refused at 0.00174), so "inside" agrees with Probe Volume With Model.
_EDGE_TOLERANCE = 1e-3 * np.sqrt(3.0)


def sample(volume: Volume, points_ras: np.ndarray, method: str = "trilinear") -> tuple[np.ndarray, np.ndarray]:
    """HU at RAS points.

    Args:
        volume: the CT.
        points_ras: ``(N, 3)`` points in RAS mm.
        method: ``"trilinear"`` (Probe Volume With Model) or ``"nearest"``
            (value of the voxel whose centre is closest, as Pedicle Screw
            Simulator grades screws).

    Returns:
        ``(hu, inside)``: float64 HU per point (NaN where not sampled) and a
        boolean array, True where the point lies inside the CT. For trilinear
        sampling "inside" means within the box of voxel centres (where all 8
        neighbours exist); for nearest, within the box of voxel extents.
    """
    if method not in SAMPLING_METHODS:
        raise InputError(f"unknown sampling method {method!r}: use one of {', '.join(SAMPLING_METHODS)}")
    pts = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    n = pts.shape[0]
    hu = np.full(n, np.nan)
    inside = np.zeros(n, dtype=bool)
    arr = volume.array
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    flat = arr.reshape(-1)
    nk, nj, ni = arr.shape
    m = volume.ras_to_ijk
    upper = np.array([ni - 1, nj - 1, nk - 1], dtype=float)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        p = pts[start:stop]
        # One contiguous array per index axis: an (n, 3) @ (3, 3) matmul is several times slower
        # than three multiply-adds, and the per-axis arrays are what the interpolation needs.
        ijk = []
        for r in range(3):
            c = p[:, 0] * m[r, 0]
            c += p[:, 1] * m[r, 1]
            c += p[:, 2] * m[r, 2]
            c += m[r, 3]
            ijk.append(c)
        if method == "trilinear":
            hu[start:stop], inside[start:stop] = _trilinear(flat, ni, nj, ijk, upper)
        else:
            hu[start:stop], inside[start:stop] = _nearest(flat, ni, nj, np.stack(ijk, axis=1), upper)
    # An infinite voxel gives +-inf, or NaN where its weight is 0: report both as NaN, "no value".
    hu[np.isinf(hu)] = np.nan
    return hu, inside


def _trilinear(flat: np.ndarray, ni: int, nj: int, ijk: list[np.ndarray], upper: np.ndarray):
    """Trilinear HU at continuous indices ``ijk = [i, j, k]`` (1-D arrays, modified in place).

    Written for speed (3-10x the straightforward version; the same interpolation
    arithmetic, so the same HU to within 1e-10 where the RAS-to-IJK products
    round differently from a matmul): comparisons on 1-D arrays (NaN compares False, so a
    non-finite index is outside), the flat voxel index built in float64 (exact
    below 2**53) and converted once, and the int voxels cast inside the
    multiplications instead of through float64 copies.
    """
    inside = ijk[0] >= -_EDGE_TOLERANCE
    for axis in range(3):
        if axis:
            inside &= ijk[axis] >= -_EDGE_TOLERANCE
        inside &= ijk[axis] <= upper[axis] + _EDGE_TOLERANCE
    out = np.full(inside.shape[0], np.nan)
    sel = np.flatnonzero(inside)
    if sel.size == 0:
        return out, inside
    every = sel.size == inside.shape[0]
    frac = []
    index = None
    for axis, stride in enumerate((1.0, float(ni), float(ni) * float(nj))):
        q = ijk[axis] if every else ijk[axis][sel]
        np.clip(q, 0.0, upper[axis], out=q)
        base = np.floor(q)
        np.minimum(base, max(upper[axis] - 1.0, 0.0), out=base)
        q -= base
        frac.append(q)
        if index is None:
            index = base
        else:
            base *= stride
            index += base
    b = index.astype(np.int64)
    fi, fj, fk = frac
    sj = ni
    sk = ni * nj
    gi = 1.0 - fi
    idx = np.empty_like(b)

    def lerp_i(offset: int) -> np.ndarray:
        if offset:
            np.add(b, offset, out=idx)
            lo = np.multiply(flat.take(idx), gi)
        else:
            lo = np.multiply(flat.take(b), gi)
        np.add(b, offset + 1, out=idx)
        lo += np.multiply(flat.take(idx), fi)
        return lo

    c0 = lerp_i(0)
    c10 = lerp_i(sj)
    c1 = lerp_i(sk)
    c11 = lerp_i(sk + sj)
    gj = 1.0 - fj
    c0 *= gj
    c10 *= fj
    c0 += c10
    c1 *= gj
    c11 *= fj
    c1 += c11
    c0 *= 1.0 - fk
    c1 *= fk
    c0 += c1
    out[sel] = c0
    return out, inside


def _nearest(flat: np.ndarray, ni: int, nj: int, ijk: np.ndarray, upper: np.ndarray):
    finite = np.all(np.isfinite(ijk), axis=1)
    inside = finite & np.all((ijk >= -0.5) & (ijk < upper + 0.5), axis=1)
    out = np.full(ijk.shape[0], np.nan)
    if not inside.any():
        return out, inside
    # floor(x + 0.5) rounds halves up, the same on every platform (np.rint rounds half to even).
    idx = np.clip(np.floor(ijk[inside] + 0.5), 0, upper).astype(np.int64)
    out[inside] = flat.take(idx[:, 2] * (ni * nj) + idx[:, 1] * ni + idx[:, 0]).astype(np.float64, copy=False)
    return out, inside


def parse_profile(text: str) -> np.ndarray:
    """Parse ``START:STOP:STEP`` (mm) into the list of offsets, STOP included when reached.

    Raises:
        InputError: malformed text, STEP <= 0, STOP < START, or more than 1000 offsets.
    """
    parts = text.split(":")
    if len(parts) != 3:
        raise InputError(f"--profile must be START:STOP:STEP in mm (for example 0:3:0.5), got {text!r}")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--profile must hold three numbers START:STOP:STEP, got {text!r}") from None
    if not (np.isfinite(start) and np.isfinite(stop) and np.isfinite(step)):
        raise InputError(f"--profile values must be finite, got {text!r}")
    if step <= 0:
        raise InputError(f"--profile STEP must be positive, got {step}")
    if stop < start:
        raise InputError(f"--profile STOP ({stop}) is below START ({start})")
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    if n > 1000:
        raise InputError(f"--profile asks for {n} offsets: at most 1000")
    return start + step * np.arange(n)


@dataclass
class SurfaceSamples:
    """HU sampled for every vertex of a surface.

    Attributes:
        hu: aggregated HU per vertex (NaN where not sampled).
        inside_ct: True where every sample of the vertex lay inside the CT.
        offsets_mm: the offsets along the outward normal that were sampled.
        profile_hu: ``(N, len(offsets_mm))`` HU per offset (NaN outside).
    """

    hu: np.ndarray
    inside_ct: np.ndarray
    offsets_mm: np.ndarray
    profile_hu: np.ndarray


def sample_surface(
    volume: Volume,
    points_ras: np.ndarray,
    normals: np.ndarray,
    method: str = "trilinear",
    offsets_mm: np.ndarray | float = 0.0,
    aggregate: str = "max",
) -> SurfaceSamples:
    """Sample the CT at each vertex moved along its outward normal by each offset, then aggregate.

    Args:
        volume: the CT.
        points_ras: ``(N, 3)`` vertices in RAS mm.
        normals: ``(N, 3)`` outward unit normals.
        method: ``"trilinear"`` or ``"nearest"``.
        offsets_mm: one offset or several (a profile), mm along the outward normal
            (negative goes into the implant).
        aggregate: how several offsets become one value: ``"max"``, ``"mean"`` or
            ``"median"``; ignored for a single offset.

    A vertex is ``inside_ct`` only if all its samples are inside: an incomplete
    profile would give a biased value, so it gets NaN instead.
    """
    if aggregate not in PROFILE_AGGREGATES:
        raise InputError(f"unknown profile aggregate {aggregate!r}: use one of {', '.join(PROFILE_AGGREGATES)}")
    offsets = np.atleast_1d(np.asarray(offsets_mm, dtype=float))
    pts = np.asarray(points_ras, dtype=float)
    nrm = np.asarray(normals, dtype=float)
    profile = np.empty((pts.shape[0], offsets.size))
    inside_all = np.ones(pts.shape[0], dtype=bool)
    for col, d in enumerate(offsets):
        q = pts if d == 0 else pts + d * nrm
        profile[:, col], inside = sample(volume, q, method)
        inside_all &= inside
    if offsets.size == 1:
        hu = profile[:, 0].copy()
    else:
        reducer = {"max": np.max, "mean": np.mean, "median": np.median}[aggregate]
        hu = np.full(pts.shape[0], np.nan)
        hu[inside_all] = reducer(profile[inside_all], axis=1)
    hu[~inside_all] = np.nan
    return SurfaceSamples(hu=hu, inside_ct=inside_all, offsets_mm=offsets, profile_hu=profile)
