"""One analysis: CT + registered implant surface in, per-vertex and per-zone tables out.

``analyze(volume, surface, parameters)`` is the whole computation on objects
in memory (what the Slicer module calls); ``analyze_files(...)`` reads the
files first and records their hashes. Both return an :class:`AnalysisResult`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import vtk
from vtk.util import numpy_support as ns

from . import __version__
from .classes import (
    DEFAULT_METAL_HU,
    METAL,
    ContactBand,
    bands_to_json,
    class_labels,
    class_names,
    classify,
    classify_codes,
    parse_classes,
)
from .errors import InputError
from .frame import ZONE_SCHEMES, FrameOptions, StemFrame, assign_zones, estimate_frame
from .mesh import prepare_surface, read_model, read_transform, surface_geometry, transform_polydata
from .remesh import REMESH_METHODS, remesh
from .sampling import PROFILE_AGGREGATES, SAMPLING_METHODS, SurfaceSamples, parse_profile, sample_surface
from .stats import triangle_samples, zone_table
from .volume import Volume, hu_range_warnings, read_volume

ProgressCallback = Callable[[float, str], None]
#: ``remesher(surface, points, subdivide) -> surface``: replaces the built-in ACVD remesh
#: (the Slicer module passes Surface Toolbox's, which runs the same algorithm).
Remesher = Callable[[vtk.vtkPolyData, int, int], vtk.vtkPolyData]
#: Same signature as :func:`~ImplantBoneContactLib.sampling.sample_surface`: replaces the
#: built-in sampler (the Slicer module probes with the Probe Volume With Model CLI).
Sampler = Callable[[Volume, np.ndarray, np.ndarray, str, np.ndarray, str], SurfaceSamples]


@dataclass
class AnalysisParameters:
    """Every setting of an analysis. Written to ``parameters.json`` with the results.

    Attributes:
        remesh: ``"fast"`` (default: ACVD on an adaptively refined surface, vectorised mesh
            construction), ``"acvd"`` (uniform remesh exactly as Slicer's Surface Toolbox) or ``"none"``.
        points: number of points after remeshing.
        subdivide: subdivisions before ACVD clustering; ``None`` picks the
            smallest number that gives at least 3 input points per cluster and
            no triangle larger than 4 clusters (see :func:`auto_subdivide`).
        sampling: ``"trilinear"`` (Probe Volume With Model) or ``"nearest"``.
        offset_mm: sample this far along the outward normal (mm; negative goes into the implant).
        profile: ``"START:STOP:STEP"`` offsets in mm along the normal; overrides ``offset_mm``.
        profile_aggregate: ``"max"``, ``"mean"`` or ``"median"`` over the profile.
        classes: preset name, ``name:low:high,...`` bands, or a JSON file.
        metal_hu: samples at or above this HU are class ``metal`` (``None``: no metal class).
        zone_scheme: ``"sector"`` or ``"projection"``.
        bands_axial: proximal, middle, distal fractions of the cut-to-tip height.
        tip_length_mm: height of the tip zone (mm).
        axis: ``((x,y,z), (x,y,z))`` proximal and distal axis points (RAS mm) or ``None``.
        medial_point: a point on the medial side (RAS mm) or ``None``.
        resection_point, resection_normal: the neck-cut plane (RAS mm) or ``None``.
        side: ``"left"``/``"right"`` or ``None`` (from the neck).
        model_space: ``"RAS"``/``"LPS"`` to override the model file's header.
        series_uid: DICOM series to read from a folder with several.
    """

    remesh: str = "fast"
    points: int = 10000
    subdivide: int | None = None
    sampling: str = "trilinear"
    offset_mm: float = 0.0
    profile: str | None = None
    profile_aggregate: str = "max"
    classes: str = "default"
    metal_hu: float | None = DEFAULT_METAL_HU
    zone_scheme: str = "sector"
    bands_axial: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    tip_length_mm: float = 10.0
    axis: tuple | None = None
    medial_point: tuple | None = None
    resection_point: tuple | None = None
    resection_normal: tuple | None = None
    side: str | None = None
    model_space: str | None = None
    series_uid: str | None = None

    def validate(self) -> None:
        """Check every value before any work starts.

        Raises:
            InputError: naming the parameter and what is allowed.
        """
        if self.remesh not in REMESH_METHODS:
            raise InputError(f"remesh must be one of {', '.join(REMESH_METHODS)}, got {self.remesh!r}")
        if self.sampling not in SAMPLING_METHODS:
            raise InputError(f"sampling must be one of {', '.join(SAMPLING_METHODS)}, got {self.sampling!r}")
        if self.profile_aggregate not in PROFILE_AGGREGATES:
            raise InputError(f"profile aggregate must be one of {', '.join(PROFILE_AGGREGATES)}, got {self.profile_aggregate!r}")
        if self.zone_scheme not in ZONE_SCHEMES:
            raise InputError(f"zone scheme must be one of {', '.join(ZONE_SCHEMES)}, got {self.zone_scheme!r}")
        if not isinstance(self.points, int) or self.points < 4:
            raise InputError(f"points must be an integer of at least 4, got {self.points!r}")
        if self.subdivide is not None and not (0 <= int(self.subdivide) <= 6):
            raise InputError(f"subdivide must be between 0 and 6, got {self.subdivide}")
        if not math.isfinite(float(self.offset_mm)):
            raise InputError(f"offset must be a finite number of mm, got {self.offset_mm}")
        if self.profile is not None:
            parse_profile(self.profile)
        if self.metal_hu is not None and not math.isfinite(float(self.metal_hu)):
            raise InputError(f"metal level must be a finite HU value, got {self.metal_hu}")
        if self.side is not None and self.side not in ("left", "right"):
            raise InputError(f"side must be left or right, got {self.side!r}")
        if self.model_space is not None and self.model_space.upper() not in ("RAS", "LPS"):
            raise InputError(f"model space must be RAS or LPS, got {self.model_space!r}")
        if (self.resection_point is None) != (self.resection_normal is None):
            raise InputError("a resection plane needs both a point and a normal")
        parse_classes(self.classes)
        if not (math.isfinite(self.tip_length_mm) and self.tip_length_mm >= 0):
            raise InputError(f"tip length must be a non-negative number of mm, got {self.tip_length_mm}")
        b = np.asarray(self.bands_axial, dtype=float)
        if b.shape != (3,) or np.any(~np.isfinite(b)) or np.any(b <= 0) or abs(b.sum() - 1) > 1e-6:
            raise InputError(f"axial bands need three positive fractions that sum to 1, got {list(self.bands_axial)}")

    def frame_options(self) -> FrameOptions:
        return FrameOptions(
            axis_points=self.axis,
            medial_point=self.medial_point,
            resection_point=self.resection_point,
            resection_normal=self.resection_normal,
            side=self.side,
            tip_length_mm=self.tip_length_mm,
        )

    def offsets(self) -> np.ndarray:
        """Offsets (mm) to sample along the outward normal."""
        if self.profile is not None:
            return parse_profile(self.profile)
        return np.array([float(self.offset_mm)])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands_axial"] = list(self.bands_axial)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AnalysisParameters:
        """Rebuild parameters from :meth:`to_dict` output (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        if "bands_axial" in kw and kw["bands_axial"] is not None:
            kw["bands_axial"] = tuple(kw["bands_axial"])
        return cls(**kw)


@dataclass
class AnalysisResult:
    """Everything one analysis produced.

    Attributes:
        vertices: one row per vertex (see README for the columns).
        zones: one row per Gruen zone and one row ``all``.
        frame: the stem frame used.
        surface: the analysed surface with every per-vertex column as a point array.
        parameters: the parameters used.
        class_names: the contact classes in table order.
        warnings: things the user should know (outside the CT, metal, ...).
        inputs: descriptions of the inputs (paths, hashes, geometry).
        timings_s: seconds per stage.
        volume: the CT the surface was sampled in (for the slices picture; not saved).
    """

    vertices: pd.DataFrame
    zones: pd.DataFrame
    frame: StemFrame
    surface: vtk.vtkPolyData
    parameters: AnalysisParameters
    class_names: list[str]
    warnings: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    volume: Volume | None = field(default=None, repr=False, compare=False)

    def metadata(self) -> dict:
        """What ``parameters.json`` holds: parameters, inputs, frame, versions, warnings."""
        return {
            "parameters": self.parameters.to_dict(),
            "contact_classes": bands_to_json(parse_classes(self.parameters.classes)),
            "inputs": self.inputs,
            "frame": self.frame.to_dict(),
            "warnings": list(self.warnings),
            "versions": library_versions(),
            "timings_s": self.timings_s,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def library_versions() -> dict:
    """Versions of this package and of the libraries that shape the numbers."""
    import SimpleITK

    versions = {
        "implant-bone-contact": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "vtk": vtk.vtkVersion.GetVTKVersion(),
        "SimpleITK": SimpleITK.Version.VersionString(),
    }
    for name in ("pyacvd", "pyvista"):
        # The installed distribution's version, without importing it (pyvista's import alone takes 0.2 s).
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder (hash of its files' names and hashes, sorted)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(bytes.fromhex(sha256_of(f)))
        return h.hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def auto_subdivide(surface: vtk.vtkPolyData, target: int, max_triangles: int = 8_000_000) -> int:
    """Subdivisions before ACVD clustering when the user gives none.

    The smallest k (0..6) such that the subdivided surface has at least 3
    points per requested cluster and its largest triangle is at most 4 times
    the area of one cluster: ACVD assigns whole triangles to clusters, so a
    CAD mesh with a few huge flat triangles gives uneven clusters unless they
    are split first. k stops growing before the subdivided mesh would exceed
    ``max_triangles`` (memory and time).
    """
    from .mesh import points as mesh_points
    from .mesh import triangle_areas, triangles

    pts = mesh_points(surface)
    faces = triangles(surface)
    areas = triangle_areas(pts, faces)
    cluster_area = areas.sum() / max(target, 1)
    k = 0
    while k < 6:
        enough_points = pts.shape[0] * 4**k >= 3 * target
        small_triangles = areas.max() / 4**k <= 4.0 * cluster_area
        if enough_points and small_triangles:
            break
        if faces.shape[0] * 4 ** (k + 1) > max_triangles:
            break
        k += 1
    return k


def check_overlap(volume: Volume, surface: vtk.vtkPolyData) -> None:
    """Refuse a model whose bounding box misses the CT, with a hint at the likely cause.

    Raises:
        InputError: naming the likely cause (LPS/RAS, metres, inches, registration).
    """
    pts = ns.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    lo, hi = pts.min(0), pts.max(0)
    ct_lo, ct_hi = volume.bounds_ras()
    extent = float(np.linalg.norm(hi - lo))
    voxel = float(volume.spacing_mm.max())
    if extent < 3 * voxel:
        # Inside the CT or not, a model this small samples a voxel or two: numbers without meaning.
        raise InputError(
            f"the model is only {extent:.3g} mm across, less than 3 CT voxels ({voxel:.3g} mm): "
            "are its units metres? (scale by 1000)"
        )
    if np.all(hi >= ct_lo) and np.all(lo <= ct_hi):
        return
    model_size = float(np.linalg.norm(hi - lo))
    ct_size = float(np.linalg.norm(ct_hi - ct_lo))
    hints = []
    flipped_lo, flipped_hi = np.minimum(-lo[:2], -hi[:2]), np.maximum(-lo[:2], -hi[:2])
    if np.all(flipped_hi >= ct_lo[:2]) and np.all(flipped_lo <= ct_hi[:2]) and hi[2] >= ct_lo[2] and lo[2] <= ct_hi[2]:
        hints.append("with x and y negated it would overlap: the model file is probably RAS read as LPS (or the reverse); try --model-space RAS or LPS")
    ratio = ct_size / max(model_size, 1e-12)
    if ratio > 300:
        hints.append(f"the model is about {ratio:.0f}x smaller than the CT: are its units metres? (scale by 1000)")
    elif 15 < ratio < 40:
        hints.append(f"the model is about {ratio:.0f}x smaller than the CT: are its units inches or centimetres?")
    elif model_size > 5 * ct_size:
        hints.append("the model is much larger than the CT: are its units micrometres?")
    if not hints:
        hints.append("check the registration transform (--transform) and that the model belongs to this CT")
    raise InputError(
        "the model does not overlap the CT "
        f"(model RAS bounds {np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()} mm, "
        f"CT {np.round(ct_lo, 1).tolist()}..{np.round(ct_hi, 1).tolist()} mm): " + "; ".join(hints)
    )


def analyze(
    volume: Volume,
    surface: vtk.vtkPolyData,
    parameters: AnalysisParameters | None = None,
    progress: ProgressCallback | None = None,
    inputs: dict | None = None,
    *,
    remesher: Remesher | None = None,
    sampler: Sampler | None = None,
) -> AnalysisResult:
    """Map CT HU onto the implant surface, assign Gruen zones and contact classes.

    Args:
        volume: the CT (HU, geometry in RAS).
        surface: the registered implant surface, triangles, RAS mm.
        parameters: settings (defaults if ``None``).
        progress: called as ``progress(fraction_done, message)``.
        inputs: descriptions of the inputs, copied into the result.
        remesher: used instead of the built-in ACVD remesh when ``parameters.remesh``
            is ``"acvd"``; its output is cleaned (triangulated, degenerate triangles dropped).
        sampler: used instead of :func:`~ImplantBoneContactLib.sampling.sample_surface`.

    Raises:
        InputError: bad parameters, a model that misses the CT, a frame that
            cannot be found.
    """
    params = parameters or AnalysisParameters()
    params.validate()
    bands = parse_classes(params.classes)
    names = class_names(bands, include_metal=params.metal_hu is not None)
    warnings: list[str] = []
    timings: dict[str, float] = {}

    def step(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    # Any vtkPolyData may come in from Python: no points, NaN, lines, quads, repeated triangles.
    surface = prepare_surface(surface, "surface")
    check_overlap(volume, surface)
    warnings.extend(hu_range_warnings(volume))
    warnings.extend(topology_warnings(surface))
    t = time.perf_counter()
    surface_in = surface
    if params.remesh in ("acvd", "fast"):
        k = params.subdivide if params.subdivide is not None else auto_subdivide(surface, params.points)
        step(0.05, f"remeshing to {params.points} points ({params.remesh} ACVD, subdivide {k})")
        if remesher is None:
            surface = remesh(surface, params.remesh, params.points, k)
        else:
            surface = prepare_surface(remesher(surface, params.points, k), "remeshed surface")
        params_used_subdivide = k
        warnings.extend(remesh_warnings(surface_in, surface, params.remesh))
    else:
        params_used_subdivide = None
    timings["remesh"] = time.perf_counter() - t

    t = time.perf_counter()
    step(0.45, "computing normals and vertex areas")
    geom = surface_geometry(surface)
    timings["normals_areas"] = time.perf_counter() - t

    t = time.perf_counter()
    step(0.55, "sampling the CT")
    samples = (sampler or sample_surface)(
        volume, geom.points, geom.normals, params.sampling, params.offsets(), params.profile_aggregate
    )
    timings["sampling"] = time.perf_counter() - t
    n_out = int((~samples.inside_ct).sum())
    if n_out == geom.points.shape[0]:
        raise InputError(
            "no point of the model lies inside the CT after sampling: check the registration and the model space (LPS/RAS)"
        )
    if n_out:
        frac_area = geom.areas[~samples.inside_ct].sum() / geom.areas.sum()
        warnings.append(
            f"{n_out} of {geom.points.shape[0]} vertices ({100 * frac_area:.1f}% of the area) lie outside the CT: "
            "their HU is NaN (inside_ct = False) and they are left out of the statistics"
        )
    if not np.isfinite(samples.hu).any():
        raise InputError("no vertex got a finite HU: the CT is NaN or infinite wherever the model lies")
    nonfinite = samples.inside_ct & ~np.isfinite(samples.hu)
    if nonfinite.any():
        warnings.append(
            f"{int(nonfinite.sum())} vertices touch voxels that are NaN or infinite in the CT: their HU is NaN"
        )

    t = time.perf_counter()
    step(0.7, "finding the stem frame and Gruen zones")
    frame, frame_warnings = estimate_frame(geom.points, geom.faces, geom.areas, params.frame_options())
    warnings.extend(frame_warnings)
    zones = assign_zones(frame, geom.points, params.bands_axial)
    timings["zones"] = time.perf_counter() - t

    t = time.perf_counter()
    step(0.85, "classifying contact and computing statistics")
    contact = classify(samples.hu, bands, params.metal_hu)
    vertices = pd.DataFrame(
        {
            "vertex_id": np.arange(geom.points.shape[0], dtype=np.int64),
            "x_mm": geom.points[:, 0],
            "y_mm": geom.points[:, 1],
            "z_mm": geom.points[:, 2],
            "nx": geom.normals[:, 0],
            "ny": geom.normals[:, 1],
            "nz": geom.normals[:, 2],
            "area_mm2": geom.areas,
            "hu": samples.hu,
            "inside_ct": samples.inside_ct,
            "height_mm": zones["height_mm"],
            "azimuth_deg": zones["azimuth_deg"],
            "gruen_zone": zones["gruen_zone"],
        }
    )
    if params.zone_scheme == "projection":
        vertices["gruen_zone_ap"] = zones["gruen_zone_ap"]
        vertices["gruen_zone_lateral"] = zones["gruen_zone_lateral"]
    vertices["contact_class"] = contact
    table = zone_statistics(frame, geom.points, geom.faces, vertices, bands, params, volume=volume, normals=geom.normals)
    below = vertices["gruen_zone"].to_numpy() > 0
    if params.metal_hu is not None:
        sampled_below = below & np.isfinite(samples.hu)
        metal_area = geom.areas[sampled_below & (contact == METAL)].sum()
        if sampled_below.any() and metal_area > 0.05 * geom.areas[sampled_below].sum():
            warnings.append(
                f"{100 * metal_area / geom.areas[sampled_below].sum():.0f}% of the stem surface samples metal "
                f"(>= {params.metal_hu:g} HU): the model seems to sit in a post-operative CT; sample outside "
                "the metal with --offset 1.5 or --profile 0.5:3:0.5"
            )
    timings["statistics"] = time.perf_counter() - t
    surface_out = build_output_surface(geom.points, geom.faces, vertices, names)
    info = dict(inputs or {})
    info.setdefault("ct", {})
    info["ct"].update(
        {
            "shape_ijk": list(volume.shape_ijk),
            "spacing_mm": [float(x) for x in volume.spacing_mm],
            "ijk_to_ras": volume.ijk_to_ras.tolist(),
            "dtype": str(volume.array.dtype),
        }
    )
    info["surface"] = {
        "n_points": int(geom.points.shape[0]),
        "n_triangles": int(geom.faces.shape[0]),
        "area_mm2": float(geom.areas.sum()),
        "subdivide_used": params_used_subdivide,
        "boundary_edges": geom.n_boundary_edges,
        "components": geom.n_components,
    }
    step(1.0, "done")
    return AnalysisResult(
        vertices=vertices,
        zones=table,
        frame=frame,
        surface=surface_out,
        parameters=params,
        class_names=names,
        warnings=warnings,
        inputs=info,
        timings_s=timings,
        volume=volume,
    )


def zone_statistics(
    frame: StemFrame,
    pts: np.ndarray,
    faces: np.ndarray,
    vertices: pd.DataFrame,
    bands: tuple[ContactBand, ...],
    params: AnalysisParameters,
    volume: Volume | None = None,
    normals: np.ndarray | None = None,
) -> pd.DataFrame:
    """The zones table: the HU field integrated over the triangles (see :mod:`.stats`), counts from the vertices.

    With ``volume`` (and the vertex ``normals``) the CT is sampled at the
    integration points the way ``params`` samples the vertices; without, the
    vertex HU is interpolated over each triangle. The CT is sampled by this
    library even when the vertices were probed by another sampler (the Slicer
    module's Probe Volume With Model, equal to it at the same points).
    """
    field = None
    if volume is not None:
        offsets = params.offsets()

        def field(p: np.ndarray, n: np.ndarray) -> np.ndarray:
            return sample_surface(volume, p, n, params.sampling, offsets, params.profile_aggregate).hu

    samples = triangle_samples(pts, faces, vertices["hu"].to_numpy(), field=field, normals=normals)
    zones = assign_zones(frame, samples.points, params.bands_axial)
    labels = class_labels(bands, include_metal=params.metal_hu is not None)
    table = {
        "area_mm2": samples.area_mm2,
        "hu": samples.hu,
        "contact_class": pd.Categorical.from_codes(classify_codes(samples.hu, bands, params.metal_hu), categories=labels),
        "gruen_zone": zones["gruen_zone"],
    }
    if params.zone_scheme == "projection":
        table["gruen_zone_ap"] = zones["gruen_zone_ap"]
        table["gruen_zone_lateral"] = zones["gruen_zone_lateral"]
    return zone_table(pd.DataFrame(table), class_names(bands, params.metal_hu is not None), params.zone_scheme, vertices)


#: A remesh that changes the surface area by more than this fraction is reported.
REMESH_AREA_TOLERANCE = 0.01


def remesh_warnings(before: vtk.vtkPolyData, after: vtk.vtkPolyData, method: str) -> list[str]:
    """Warnings when remeshing changed the surface: area by more than 1 %, or holes in a closed input.

    The statistics are area-weighted, so a remesh that inflates the area
    (folds) or opens the surface (boundary edges) changes the numbers.
    """
    from .mesh import _edge_counts, triangle_areas, triangles
    from .mesh import points as mesh_points

    faces_in, faces_out = triangles(before), triangles(after)
    area_in = float(triangle_areas(mesh_points(before), faces_in).sum())
    area_out = float(triangle_areas(mesh_points(after), faces_out).sum())
    out = []
    if area_in > 0 and abs(area_out - area_in) > REMESH_AREA_TOLERANCE * area_in:
        out.append(
            f"remeshing ({method}) changed the surface area by {100 * (area_out - area_in) / area_in:+.1f}% "
            f"({area_in:.0f} to {area_out:.0f} mm2): the area-weighted statistics follow the remeshed surface; "
            "try --remesh fast, another --subdivide or --remesh none"
        )
    open_in = _edge_counts(faces_in)[0]
    open_out = _edge_counts(faces_out)[0]
    if open_in == 0 and open_out > 0:
        out.append(
            f"remeshing ({method}) opened the closed surface ({open_out} boundary edges): normals near the holes "
            "may be unreliable; try --remesh fast, another --subdivide or --remesh none"
        )
    return out


def topology_warnings(surface: vtk.vtkPolyData) -> list[str]:
    """Warnings about the input surface: holes, non-manifold edges, several parts.

    Checked on the model as given, before remeshing: ACVD output may have a
    few non-manifold edges of its own that say nothing about the input.
    """
    from .mesh import _component_labels, _edge_counts, triangles

    faces = triangles(surface)
    n_boundary, n_nonmanifold = _edge_counts(faces)
    _, n_components = _component_labels(surface.GetNumberOfPoints(), faces)
    out = []
    if n_boundary:
        out.append(f"the model surface is open ({n_boundary} boundary edges): normals near the holes may be unreliable")
    if n_nonmanifold:
        out.append(f"the model surface has {n_nonmanifold} non-manifold edges (more than two triangles share an edge)")
    if n_components > 1:
        out.append(f"the model has {n_components} disconnected parts; all are analysed as one implant")
    return out


def class_ids(contact: np.ndarray, names: list[str]) -> np.ndarray:
    """Integer code of each class: index in ``names``; -1 not sampled, -2 unclassified."""
    lut = {n: i for i, n in enumerate(names)}
    lut["not_sampled"] = -1
    lut["unclassified"] = -2
    return np.array([lut[c] for c in contact], dtype=np.int16)


def build_output_surface(pts: np.ndarray, faces: np.ndarray, vertices: pd.DataFrame, names: list[str]) -> vtk.vtkPolyData:
    """The analysed surface with every numeric per-vertex column as a point array.

    ``contact_class`` is stored as ``contact_class_id`` (index into the field
    data string array ``contact_class_names``; -1 not sampled).
    """
    from .mesh import polydata_from_arrays

    poly = polydata_from_arrays(pts, faces)
    pd_ = poly.GetPointData()
    for col in vertices.columns:
        if col in ("x_mm", "y_mm", "z_mm", "nx", "ny", "nz", "contact_class"):
            continue
        values = vertices[col].to_numpy()
        if values.dtype == bool:
            values = values.astype(np.uint8)
        arr = ns.numpy_to_vtk(np.ascontiguousarray(values), deep=True)
        arr.SetName(col)
        pd_.AddArray(arr)
    normals = ns.numpy_to_vtk(np.ascontiguousarray(vertices[["nx", "ny", "nz"]].to_numpy(dtype=np.float32)), deep=True)
    normals.SetName("Normals")
    pd_.SetNormals(normals)
    ids = ns.numpy_to_vtk(class_ids(vertices["contact_class"].to_numpy(), names), deep=True)
    ids.SetName("contact_class_id")
    pd_.AddArray(ids)
    pd_.SetActiveScalars("hu")
    names_arr = vtk.vtkStringArray()
    names_arr.SetName("contact_class_names")
    for n in names:
        names_arr.InsertNextValue(n)
    poly.GetFieldData().AddArray(names_arr)
    return poly


def describe_file(path: str | os.PathLike) -> dict:
    p = Path(path)
    return {"path": str(p.resolve()), "name": p.name, "sha256": sha256_of(p)}


def load_inputs(
    ct: str | os.PathLike,
    model: str | os.PathLike,
    transform: str | os.PathLike | None = None,
    model_space: str | None = None,
    series_uid: str | None = None,
) -> tuple[Volume, vtk.vtkPolyData, dict]:
    """Read CT, model and optional transform; return them with descriptions (paths, hashes)."""
    volume = read_volume(ct, series_uid=series_uid)
    surface, model_info = read_model(model, space=model_space)
    inputs = {
        "ct": {**describe_file(ct), **{k: v for k, v in volume.metadata.items()}},
        "model": {**describe_file(model), "space_in_file": model_info.space_in_file, "space_used": model_info.space_used},
    }
    if transform is not None:
        matrix = read_transform(transform)
        surface = transform_polydata(surface, matrix)
        inputs["transform"] = {**describe_file(transform), "matrix_ras": matrix.tolist()}
    return volume, surface, inputs


def analyze_files(
    ct: str | os.PathLike,
    model: str | os.PathLike,
    parameters: AnalysisParameters | None = None,
    transform: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> AnalysisResult:
    """Read the CT, the model (and a registration transform) and analyse them.

    Args:
        ct: NRRD/NIfTI/MetaImage file or DICOM series folder.
        model: STL/OBJ/PLY/VTK/VTP surface of the implant (LPS unless ``SPACE=RAS``).
        parameters: settings (defaults if ``None``).
        transform: optional 4x4 matrix text file or ITK transform moving the model into the CT.
        progress: called as ``progress(fraction_done, message)``.
    """
    params = parameters or AnalysisParameters()
    params.validate()
    if progress:
        progress(0.0, "reading inputs")
    t = time.perf_counter()
    volume, surface, inputs = load_inputs(ct, model, transform, params.model_space, params.series_uid)
    t_read = time.perf_counter() - t
    result = analyze(volume, surface, params, progress, inputs)
    result.timings_s = {"read_inputs": t_read, **result.timings_s}
    return result
