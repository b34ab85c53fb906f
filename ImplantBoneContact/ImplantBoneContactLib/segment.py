"""Surface of what a HU threshold selects in a CT: metal implant or bone, as a printable mesh.

The dicom2stl recipe (threshold, connected components, iso-surface, smooth,
decimate), done so that the surface is where the object is:

* the iso-surface is taken on the CT's own values at the threshold
  (``vtkFlyingEdges3D``, sub-voxel), not on voxel blocks; voxels of the
  components that were not kept (and voxels outside ``mask``) are pushed
  below the threshold first, so only the kept objects get a surface;
* the image is padded by one voxel below the threshold, so an object that
  leaves the scan is closed by a cap on the scan's edge;
* smoothing is windowed-sinc (Taubin), which does not shrink the surface as
  Laplacian smoothing does;
* the mesh is in RAS mm (the CT's direction cosines applied) with outward
  triangles, and :func:`write_surface` writes it with ``SPACE=RAS``, so
  Slicer and ``analyze`` place it on the CT without options.
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
from .errors import InputError
from .mesh import (
    _component_labels,
    _edge_counts,
    points,
    polydata_from_arrays,
    prepare_surface,
    signed_volume,
    transform_polydata,
    triangle_areas,
    triangles,
    write_polydata,
)
from .volume import Volume

ProgressCallback = Callable[[float, str], None]

#: Threshold (HU) of each preset: metal implants (steel, CoCr, titanium read above 2000 HU on
#: clinical CTs, also where partial volume lowers them), and bone (cortical and dense cancellous).
SEGMENT_PRESETS = {"metal": 2000.0, "bone": 250.0}
#: Smallest object kept by default (mm^3) with each preset: specks of noise and streaks are dropped.
DEFAULT_MIN_VOLUME_MM3 = {"metal": 50.0, "bone": 500.0}


@dataclass
class SegmentationResult:
    """A thresholded object's surface and what was measured on it.

    Attributes:
        surface: closed triangle mesh in RAS mm, triangles facing outward.
        volume_mm3: volume enclosed by the surface (mm^3).
        area_mm2: surface area (mm^2).
        n_components: connected surface pieces in the mesh.
        threshold_hu: the iso-value used (HU).
        closed: True when the mesh has no boundary edge.
        voxel_volume_mm3: volume of the kept voxels at or above the threshold (mm^3).
        n_voxels: number of those voxels.
        components_mm3: voxel volume of each kept object, largest first (mm^3).
        dropped_components: objects above the threshold that were too small (or not the largest).
        preset: the preset name.
        seconds: time taken.
    """

    surface: vtk.vtkPolyData
    volume_mm3: float
    area_mm2: float
    n_components: int
    threshold_hu: float
    closed: bool
    voxel_volume_mm3: float = 0.0
    n_voxels: int = 0
    components_mm3: list = field(default_factory=list)
    dropped_components: int = 0
    preset: str = "metal"
    seconds: float = 0.0

    def summary(self) -> str:
        """One paragraph for the command line."""
        parts = ", ".join(f"{v:.0f}" for v in self.components_mm3[:5])
        more = "" if len(self.components_mm3) <= 5 else f" and {len(self.components_mm3) - 5} more"
        return (
            f"threshold {self.threshold_hu:g} HU ({self.preset}): {len(self.components_mm3)} object(s) kept "
            f"({parts}{more} mm3 of voxels), {self.dropped_components} smaller dropped\n"
            f"surface: {self.n_components} component(s), {'closed' if self.closed else 'OPEN'}, "
            f"volume {self.volume_mm3:.0f} mm3 (voxels {self.voxel_volume_mm3:.0f} mm3), area {self.area_mm2:.0f} mm2, "
            f"{self.surface.GetNumberOfPolys()} triangles"
        )

    def to_dict(self) -> dict:
        return {
            "preset": self.preset,
            "threshold_hu": self.threshold_hu,
            "volume_mm3": self.volume_mm3,
            "area_mm2": self.area_mm2,
            "n_components": self.n_components,
            "closed": self.closed,
            "voxel_volume_mm3": self.voxel_volume_mm3,
            "n_voxels": self.n_voxels,
            "components_mm3": list(self.components_mm3),
            "dropped_components": self.dropped_components,
            "n_triangles": int(self.surface.GetNumberOfPolys()),
        }


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box of a ``(K, J, I)`` boolean array holding all its True voxels (the mask must have one)."""
    box = []
    for axes in ((1, 2), (0, 2), (0, 1)):
        idx = np.flatnonzero(mask.any(axis=axes))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Face-connected components of a boolean ``(K, J, I)`` array, labelled within its bounding box.

    Metal fills a small part of a CT: labelling only the box around it takes
    a fraction of a second where the whole 512 x 512 x 400 grid took 10 s.

    Returns:
        ``(labels, sizes, box)``: ``labels`` int32 of the shape of ``mask[box]``,
        0 outside, 1..n ordered by size (largest first); ``sizes[n-1]`` voxels of label n.
    """
    import SimpleITK as sitk

    box = bounding_box(mask)
    image = sitk.GetImageFromArray(mask[box].astype(np.uint8))
    cc = sitk.ConnectedComponent(image, False)
    relabel = sitk.RelabelComponentImageFilter()
    relabel.SortByObjectSizeOn()
    labels = relabel.Execute(cc)
    sizes = np.asarray(relabel.GetSizeOfObjectsInPixels(), dtype=np.int64)
    return sitk.GetArrayFromImage(labels).astype(np.int32, copy=False), sizes, box


def segment_surface(
    volume: Volume,
    preset: str = "metal",
    threshold_hu: float | None = None,
    min_volume_mm3: float | None = None,
    largest: bool = False,
    mask: Volume | np.ndarray | None = None,
    label: int | None = None,
    smoothing: bool = True,
    decimate: float | None = None,
    progress: ProgressCallback | None = None,
) -> SegmentationResult:
    """Closed surface of the objects at or above a HU threshold.

    Args:
        volume: the CT (HU).
        preset: ``"metal"`` (2000 HU) or ``"bone"`` (250 HU).
        threshold_hu: iso-value (HU), overrides the preset's.
        min_volume_mm3: drop objects smaller than this (mm^3); default 50
            (metal) or 500 (bone).
        largest: keep only the largest object.
        mask: a label map on the CT's grid (a :class:`Volume` or an array of
            the CT's shape); only voxels inside it (label ``label``, or any
            non-zero label) are segmented.
        label: the label value of ``mask`` to keep.
        smoothing: windowed-sinc smoothing (does not shrink the surface).
        decimate: fraction of triangles to remove (0..1, volume-preserving
            quadric decimation), ``None`` for none.
        progress: called as ``progress(fraction_done, message)``.

    Raises:
        InputError: unknown preset, a mask on another grid, nothing above the
            threshold, or every object smaller than ``min_volume_mm3``.
    """
    t0 = time.perf_counter()

    def step(f: float, msg: str) -> None:
        if progress is not None:
            progress(f, msg)

    if preset not in SEGMENT_PRESETS:
        raise InputError(f"unknown segmentation preset {preset!r}: use one of {', '.join(SEGMENT_PRESETS)}")
    level = float(SEGMENT_PRESETS[preset] if threshold_hu is None else threshold_hu)
    if not np.isfinite(level):
        raise InputError(f"the threshold must be a finite HU value, got {threshold_hu}")
    min_vol = DEFAULT_MIN_VOLUME_MM3[preset] if min_volume_mm3 is None else float(min_volume_mm3)
    if decimate is not None and not (0.0 <= float(decimate) < 1.0):
        raise InputError(f"decimate is the fraction of triangles to remove, between 0 and 1; got {decimate}")
    voxel_mm3 = float(abs(np.linalg.det(volume.ijk_to_ras[:3, :3])))
    arr = volume.array
    step(0.0, f"thresholding at {level:g} HU")
    selected = arr >= level
    if np.issubdtype(arr.dtype, np.floating):
        selected &= np.isfinite(arr)
    if mask is not None:
        allowed = _mask_array(mask, volume, label)
        selected &= allowed
    else:
        allowed = None
    if not selected.any():
        where = " inside the mask" if mask is not None else ""
        raise InputError(
            f"no voxel of the CT reaches {level:g} HU{where} (maximum {float(np.nanmax(arr)):g} HU): "
            f"there is no {preset} to segment; lower --threshold or check the CT"
        )
    step(0.1, "finding connected objects")
    labels, sizes, box = label_components(selected)
    volumes = sizes * voxel_mm3
    keep_n = 1 if largest else int(np.count_nonzero(volumes >= min_vol))
    if keep_n == 0:
        raise InputError(
            f"every object at or above {level:g} HU is smaller than {min_vol:g} mm3 (largest {volumes[0]:.0f} mm3): "
            "lower --min-volume or use --largest"
        )
    kept = np.zeros(selected.shape, dtype=bool)
    kept[box] = (labels >= 1) & (labels <= keep_n)
    del labels
    step(0.3, "extracting the iso-surface")
    poly = _iso_surface(arr, kept, allowed, level, volume.ijk_to_ras)
    if poly.GetNumberOfPolys() == 0:
        raise InputError(f"the iso-surface at {level:g} HU is empty: the objects are thinner than a voxel")
    if smoothing:
        step(0.6, "smoothing (windowed sinc, non-shrinking)")
        poly = _smooth(poly)
    if decimate:
        step(0.8, f"decimating ({100 * float(decimate):.0f}% of triangles)")
        poly = _decimate(poly, float(decimate))
    pts = points(poly)
    faces = triangles(poly)
    vol = signed_volume(pts, faces)
    if vol < 0:
        faces = faces[:, ::-1].copy()
        poly = polydata_from_arrays(pts, faces)
        vol = -vol
    n_boundary, _ = _edge_counts(faces)
    _, n_comp = _component_labels(pts.shape[0], faces)
    step(1.0, "done")
    return SegmentationResult(
        surface=poly,
        volume_mm3=float(vol),
        area_mm2=float(triangle_areas(pts, faces).sum()),
        n_components=int(n_comp),
        threshold_hu=level,
        closed=n_boundary == 0,
        voxel_volume_mm3=float(volumes[:keep_n].sum()),
        n_voxels=int(sizes[:keep_n].sum()),
        components_mm3=[float(v) for v in volumes[:keep_n]],
        dropped_components=int(len(sizes) - keep_n),
        preset=preset,
        seconds=time.perf_counter() - t0,
    )


def _mask_array(mask: Volume | np.ndarray, volume: Volume, label: int | None) -> np.ndarray:
    if isinstance(mask, Volume):
        if mask.array.shape != volume.array.shape or not np.allclose(mask.ijk_to_ras, volume.ijk_to_ras, atol=1e-3):
            raise InputError(
                f"the mask ({mask.array.shape}, voxel {np.round(mask.spacing_mm, 3).tolist()} mm) is not on the CT's grid "
                f"({volume.array.shape}, voxel {np.round(volume.spacing_mm, 3).tolist()} mm): resample it to the CT first"
            )
        m = mask.array
    else:
        m = np.asarray(mask)
        if m.shape != volume.array.shape:
            raise InputError(f"the mask has shape {m.shape}, the CT {volume.array.shape}: it must be on the CT's grid")
    if label is None:
        allowed = m != 0
    else:
        allowed = m == label
    if not allowed.any():
        what = f"label {label}" if label is not None else "a non-zero label"
        raise InputError(f"the mask has no voxel with {what}: check --label")
    return allowed


def _iso_surface(arr: np.ndarray, kept: np.ndarray, allowed: np.ndarray | None, level: float, ijk_to_ras: np.ndarray) -> vtk.vtkPolyData:
    """Iso-surface at ``level`` of the CT values around the kept voxels only, closed at the scan's edge."""
    idx = np.nonzero(kept.any(axis=(1, 2)))[0], np.nonzero(kept.any(axis=(0, 2)))[0], np.nonzero(kept.any(axis=(0, 1)))[0]
    lo = [max(int(a[0]) - 2, 0) for a in idx]
    hi = [min(int(a[-1]) + 3, s) for a, s in zip(idx, arr.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = arr[box].astype(np.float32)
    sub_kept = kept[box]
    below = np.float32(level - 1000.0)
    # A voxel at or above the level that is not part of a kept object must not make a surface;
    # the others keep their values, so the surface passes between voxels where the CT crosses the level.
    sub[(sub >= level) & ~sub_kept] = below
    # Cavities inside a kept object (a cannulated nail, a screw hole) are filled: one closed solid.
    cavities = _cavities(sub_kept)
    if cavities.any():
        sub[cavities] = np.maximum(sub[cavities], np.float32(level + 1000.0))
    if allowed is not None:
        sub[~allowed[box]] = np.minimum(sub[~allowed[box]], below)
    sub[~np.isfinite(sub)] = below
    padded = np.pad(sub, 1, mode="constant", constant_values=below)
    image = vtk.vtkImageData()
    nk, nj, ni = padded.shape
    image.SetDimensions(ni, nj, nk)
    image.SetSpacing(1.0, 1.0, 1.0)
    image.SetOrigin(0.0, 0.0, 0.0)
    scalars = ns.numpy_to_vtk(np.ascontiguousarray(padded).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(image)
    fe.SetValue(0, float(level))
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    poly = fe.GetOutput()
    if poly.GetNumberOfPolys() == 0:
        return poly
    poly = prepare_surface(poly, "iso-surface")
    # Padded index -> CT index (the box start minus the pad) -> RAS.
    shift = np.eye(4)
    shift[:3, 3] = [lo[2] - 1, lo[1] - 1, lo[0] - 1]
    return transform_polydata(poly, np.asarray(ijk_to_ras, dtype=float) @ shift)


def _cavities(kept: np.ndarray) -> np.ndarray:
    """Voxels outside ``kept`` that no face-connected path joins to the border of the box."""
    import SimpleITK as sitk

    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(kept.astype(np.uint8)), False, 1)).astype(bool)
    return filled & ~kept


def _smooth(poly: vtk.vtkPolyData, iterations: int = 20, passband: float = 0.1) -> vtk.vtkPolyData:
    f = vtk.vtkWindowedSincPolyDataFilter()
    f.SetInputData(poly)
    f.SetNumberOfIterations(iterations)
    f.SetPassBand(passband)
    f.BoundarySmoothingOff()
    f.FeatureEdgeSmoothingOff()
    f.NonManifoldSmoothingOn()
    f.NormalizeCoordinatesOn()
    f.Update()
    return prepare_surface(f.GetOutput(), "smoothed surface")


def _decimate(poly: vtk.vtkPolyData, fraction: float) -> vtk.vtkPolyData:
    d = vtk.vtkQuadricDecimation()
    d.SetInputData(poly)
    d.SetTargetReduction(fraction)
    d.VolumePreservationOn()
    d.Update()
    return prepare_surface(d.GetOutput(), "decimated surface")


def write_surface(surface: vtk.vtkPolyData | SegmentationResult, path: str | os.PathLike) -> Path:
    """Write a surface in RAS to STL (``SPACE=RAS`` header), VTP (field data ``SPACE``) or VTK.

    :func:`~ImplantBoneContactLib.mesh.read_model` and Slicer read the header and
    place the surface on the CT without options.

    Raises:
        InputError: an unsupported file type.
        OutputError: the file could not be written.
    """
    from .errors import OutputError

    poly = surface.surface if isinstance(surface, SegmentationResult) else surface
    p = Path(path)
    if p.suffix.lower() not in (".stl", ".vtp", ".vtk"):
        raise InputError(f"cannot write a surface as '{p.suffix}': use .stl, .vtp or .vtk")
    tmp = p.with_name(f".{p.stem}.partial{p.suffix}")
    try:
        write_polydata(poly, tmp, space="RAS")
        os.replace(tmp, p)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"cannot write the surface {p}: {exc}") from None
    return p


# ----- command line -----
def add_segment_parser(sub) -> None:
    """Add the ``segment`` subcommand to an argparse subparsers object."""
    s = sub.add_parser("segment", help="surface of the metal (or bone) in a CT, as STL/VTP in RAS")
    s.add_argument("--ct", required=True, help="CT: NRRD, NIfTI, MetaImage file or a DICOM series folder")
    s.add_argument("--out", required=True, help="surface file to write: .stl, .vtp or .vtk (carries SPACE=RAS)")
    s.add_argument("--preset", choices=tuple(SEGMENT_PRESETS), default="metal",
                   help="metal (2000 HU, default) or bone (250 HU)")
    s.add_argument("--threshold", type=float, metavar="HU", help="iso-value in HU (overrides the preset)")
    s.add_argument("--min-volume", type=float, metavar="MM3", help="drop objects smaller than this (default 50 metal, 500 bone)")
    s.add_argument("--largest", action="store_true", help="keep only the largest object")
    s.add_argument("--mask", metavar="LABELMAP", help="label map on the CT's grid: segment only inside it")
    s.add_argument("--label", type=int, help="label value of --mask to use (default: any non-zero)")
    s.add_argument("--no-smoothing", action="store_true", help="keep the raw iso-surface")
    s.add_argument("--decimate", type=float, metavar="FRACTION", help="remove this fraction of triangles (0..1)")
    s.add_argument("--series-uid", help="DICOM series to read when the folder holds several")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--quiet", action="store_true", help="print nothing but errors")
    s.set_defaults(run=run_segment)


def run_segment(args) -> int:
    """Run ``implant-bone-contact segment``; returns the exit code."""
    from .errors import OutputError
    from .volume import read_volume

    out = Path(args.out)
    if out.suffix.lower() not in (".stl", ".vtp", ".vtk"):
        raise InputError(f"--out must end in .stl, .vtp or .vtk, got {out.name}")
    if out.exists() and not args.overwrite:
        raise OutputError(f"{out} exists: use --overwrite to replace it")
    if not out.parent.exists():
        raise OutputError(f"the folder of --out does not exist: {out.parent}")
    volume = read_volume(args.ct, series_uid=args.series_uid)
    mask = read_volume(args.mask) if args.mask else None
    result = segment_surface(
        volume,
        preset=args.preset,
        threshold_hu=args.threshold,
        min_volume_mm3=args.min_volume,
        largest=args.largest,
        mask=mask,
        label=args.label,
        smoothing=not args.no_smoothing,
        decimate=args.decimate,
    )
    write_surface(result, out)
    if not args.quiet:
        print(result.summary())
        print(f"wrote {out} (RAS)")
    return 0
