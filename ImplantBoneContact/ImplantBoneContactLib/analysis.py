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
from vtkmodules.util import numpy_support as ns

from . import __version__
from . import postop as postop_lib
from . import vtkclasses as vtk
from .classes import (
    ABOVE_RESECTION,
    DEFAULT_METAL_HU,
    METAL,
    UNRELIABLE,
    ContactBand,
    band_gaps,
    bands_to_json,
    class_labels,
    class_names,
    classify,
    classify_codes,
    parse_classes,
)
from .errors import InputError
from .frame import ZONE_REFERENCES, ZONE_SCHEMES, FrameOptions, StemFrame, assign_zones, estimate_frame
from .mesh import prepare_surface, read_model, read_transform, surface_geometry, transform_polydata
from .remesh import REMESH_METHODS, remesh
from .sampling import PROFILE_AGGREGATES, SAMPLING_METHODS, SurfaceSamples, parse_profile, sample_surface
from .scan_noise import scan_noise
from .stats import triangle_samples, zone_table
from .volume import Volume, geometry_warnings, hu_range_warnings, read_volume

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
        zone_reference: ``"implant"`` (zones follow the stem's own neck plane, as on a
            radiograph with the stem in profile) or ``"patient"`` (the patient's anterior).
        frame_file: the ``frame.json`` the axis, medial point and resection plane were
            taken from (``--frame``), named in messages about them; ``None`` if none.
        model_space: ``"RAS"``/``"LPS"`` to override the model file's header.
        series_uid: DICOM series to read from a folder with several.
        calibration: JSON file of a density calibration (see :mod:`.calibration`) or ``None``:
            adds ``density_mg_cm3`` to the vertices and density statistics to the zones.
        register: register the model to the CT's metal first (see :mod:`.register`).
        metal_aware: ``"auto"`` (read the bone past the metal's bloom when the CT holds the implant and
            no ``offset_mm``/``profile`` is given; a pre-operative CT is sampled as before), ``"on"`` or
            ``"off"`` (see :mod:`.postop`).
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
    zone_reference: str = "implant"
    frame_file: str | None = None
    model_space: str | None = None
    series_uid: str | None = None
    calibration: str | None = None
    register: bool = False
    metal_aware: str = "auto"

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
        if self.zone_reference not in ZONE_REFERENCES:
            raise InputError(f"zone reference must be one of {', '.join(ZONE_REFERENCES)}, got {self.zone_reference!r}")
        if self.metal_aware not in postop_lib.METAL_AWARE_MODES:
            raise InputError(f"metal-aware must be one of {', '.join(postop_lib.METAL_AWARE_MODES)}, got {self.metal_aware!r}")
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
        if self.calibration is not None:
            from .calibration import read_calibration

            read_calibration(self.calibration)

    def frame_options(self) -> FrameOptions:
        """The frame settings; messages name the frame file for the parts taken from it."""
        sources = None
        if self.frame_file:
            name = f"the frame file {Path(self.frame_file).name} (--frame)"
            sources = {"axis": name, "medial_point": name, "resection": name}
        return FrameOptions(
            axis_points=self.axis,
            medial_point=self.medial_point,
            resection_point=self.resection_point,
            resection_normal=self.resection_normal,
            side=self.side,
            tip_length_mm=self.tip_length_mm,
            zone_reference=self.zone_reference,
            sources=sources,
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
        registration: the :class:`~ImplantBoneContactLib.register.RegistrationResult` when the run registered the model.
        ct_kind: ``"pre-operative"`` or ``"post-operative"`` (the implant itself is in the CT).
        postop: the evidence for ``ct_kind`` and, where used, the metal-aware method's figures.
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
    registration: object = None
    ct_kind: str = postop_lib.PRE_OPERATIVE
    postop: dict = field(default_factory=dict)
    volume: Volume | None = field(default=None, repr=False, compare=False)

    def metadata(self) -> dict:
        """What ``parameters.json`` holds: parameters, inputs, frame, versions, warnings (and the registration)."""
        extra = {} if self.registration is None else {"registration": self.registration.to_dict()}
        return {**extra,
            "parameters": self.parameters.to_dict(),
            "ct_kind": self.ct_kind,
            "postop": self.postop,
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


def check_overlap(volume: Volume, surface: vtk.vtkPolyData, other_space_points: np.ndarray | None = None) -> None:
    """Refuse a model whose bounding box misses the CT, with a hint at the likely cause.

    Args:
        volume: the CT.
        surface: the model in RAS mm, registration transform applied.
        other_space_points: the model's points (RAS mm) as they would be had its
            file been read in the other space (LPS/RAS), with the transform
            applied after: a model read in the wrong space and then moved by
            its registration is not just mirrored in x and y.

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
    other_overlaps = False
    if other_space_points is not None and len(other_space_points):
        o_lo, o_hi = other_space_points.min(0), other_space_points.max(0)
        other_overlaps = bool(np.all(o_hi >= ct_lo) and np.all(o_lo <= ct_hi))
    if other_overlaps:
        hints.append(
            "read in the other space (x and y negated before the registration transform) it would overlap: "
            "the model file is probably RAS read as LPS (or the reverse); try --model-space RAS or LPS"
        )
    elif np.all(flipped_hi >= ct_lo[:2]) and np.all(flipped_lo <= ct_hi[:2]) and hi[2] >= ct_lo[2] and lo[2] <= ct_hi[2]:
        hints.append("with x and y negated it would overlap: the model file is probably RAS read as LPS (or the reverse); try --model-space RAS or LPS")
    ratio = ct_size / max(model_size, 1e-12)
    if ratio > 300:
        hints.append(f"the model is about {ratio:.0f}x smaller than the CT: are its units metres? (scale by 1000)")
    elif 15 < ratio < 40:
        hints.append(f"the model is about {ratio:.0f}x smaller than the CT: are its units inches or centimetres?")
    elif model_size > 5 * ct_size:
        hints.append("the model is much larger than the CT: are its units micrometres?")
    if not hints:
        hints.append(
            "check the registration transform (--transform), that the model belongs to this CT, "
            "and the model's coordinate system (--model-space RAS or LPS)"
        )
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
        sampler: used instead of :func:`~ImplantBoneContactLib.sampling.sample_surface`; not called when the
            metal-aware walk samples a post-operative CT (:func:`.postop.sample_metal_aware`).

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
    warnings.extend(geometry_warnings(volume))
    warnings.extend(band_gap_warnings(bands, params.metal_hu))
    warnings.extend(topology_warnings(surface))
    t = time.perf_counter()
    surface_in = surface
    if params.remesh in ("acvd", "fast"):
        k = params.subdivide if params.subdivide is not None else auto_subdivide(surface, params.points)
        method = "ACVD as Slicer's Surface Toolbox" if params.remesh == "acvd" else "fast ACVD"
        step(0.05, f"remeshing to {params.points} points ({method}, subdivide {k})")
        if remesher is None:
            surface = remesh(surface, params.remesh, params.points, k, progress=lambda message: step(0.05, message))
        else:
            surface = prepare_surface(remesher(surface, params.points, k), "remeshed surface")
        params_used_subdivide = k
        warnings.extend(remesh_warnings(surface_in, surface, params.remesh))
    else:
        params_used_subdivide = None
    timings["remesh"] = time.perf_counter() - t
    if params_used_subdivide is not None:
        step(0.4, f"remeshed: {surface.GetNumberOfPoints()} points, {surface.GetNumberOfPolys()} triangles ({timings['remesh']:.1f} s)")

    t = time.perf_counter()
    step(0.45, "computing normals and vertex areas")
    geom = surface_geometry(surface)
    timings["normals_areas"] = time.perf_counter() - t

    t = time.perf_counter()
    step(0.5, "looking for the implant's metal in the CT")
    walks = postop_lib.WalkReuse()  # the vertices' walk past the metal: measured in the assessment, reused to sample
    with walks:
        post = postop_lib.assess(volume, geom.points, geom.normals, geom.areas, params)
    warnings.extend(post.warnings)
    timings["postop_detection"] = time.perf_counter() - t
    t = time.perf_counter()
    step(0.55, "sampling the CT" + (" past the metal's bloom" if post.metal_aware else ""))
    if post.metal_aware:
        with walks:
            metal_aware = postop_lib.sample_metal_aware(volume, geom.points, geom.normals, post.edge, params.sampling)
        samples = SurfaceSamples(hu=metal_aware.hu, inside_ct=metal_aware.inside_ct, offsets_mm=np.zeros(0),
                                 profile_hu=np.zeros((geom.points.shape[0], 0)))
        names = names + [UNRELIABLE]
    else:
        metal_aware = None
        samples = (sampler or sample_surface)(
            volume, geom.points, geom.normals, params.sampling, params.offsets(), params.profile_aggregate
        )
    timings["sampling"] = time.perf_counter() - t
    del walks  # frees the kept walk
    n_out = int((~samples.inside_ct).sum())
    if n_out == geom.points.shape[0]:
        raise InputError(
            "no point of the model lies inside the CT after sampling: check the registration and the model space (LPS/RAS)"
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
    frame_options = params.frame_options()
    frame_options.ct_bounds_ras = volume.bounds_ras()  # the model lies in a patient CT: check tip and side
    frame, frame_warnings = estimate_frame(geom.points, geom.faces, geom.areas, frame_options)
    warnings.extend(frame_warnings)
    zones = assign_zones(frame, geom.points, params.bands_axial)
    timings["zones"] = time.perf_counter() - t
    below_cut = np.asarray(zones["gruen_zone"]) > 0
    warnings.extend(outside_ct_warnings(samples.inside_ct, below_cut, geom.areas))
    warnings.extend(air_warnings(samples.hu, below_cut, geom.areas))
    warnings.extend(model_size_warnings(geom.points, volume))

    t = time.perf_counter()
    step(0.85, "classifying contact and computing statistics")
    contact = classify(samples.hu, bands, params.metal_hu)
    if metal_aware is not None:
        contact[np.isfinite(samples.hu) & ~metal_aware.reliable] = UNRELIABLE
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
    if metal_aware is not None:
        vertices["bone_start_mm"] = metal_aware.bone_start_mm
        vertices["bone_reading_reliable"] = metal_aware.reliable
    # Above the cut is not analysed: no contact class there, so counting classes counts the analysed surface only.
    vertices["contact_class"] = np.where(np.asarray(zones["gruen_zone"]) > 0, contact, ABOVE_RESECTION)
    table = zone_statistics(frame, geom.points, geom.faces, vertices, bands, params, volume=volume, normals=geom.normals,
                            edge=post.edge if post.metal_aware else None)
    below = vertices["gruen_zone"].to_numpy() > 0
    if metal_aware is not None:
        warnings.extend(post.unreliable_warnings(vertices, geom.areas))
        warnings.extend(postop_lib.unreliable_zone_warnings(post, table))
    elif params.metal_hu is not None:
        sampled_below = below & np.isfinite(samples.hu)
        metal_area = geom.areas[sampled_below & (contact == METAL)].sum()
        if sampled_below.any() and metal_area > 0.05 * geom.areas[sampled_below].sum():
            warnings.append(
                f"{100 * metal_area / geom.areas[sampled_below].sum():.0f}% of the stem surface samples metal "
                f"(>= {params.metal_hu:g} HU): " + postop_lib.metal_advice(post)
            )
    info = dict(inputs or {})
    if params.calibration is not None:
        from .calibration import add_density, read_calibration

        calibration = read_calibration(params.calibration)
        add_density(vertices, table, calibration)
        info["calibration"] = {**describe_file(params.calibration), **calibration.to_dict()}
    timings["statistics"] = time.perf_counter() - t
    surface_out = build_output_surface(geom.points, geom.faces, vertices, names, hu_classes=contact)
    info.setdefault("ct", {})
    info["ct"].update(
        {
            "shape_ijk": list(volume.shape_ijk),
            "spacing_mm": [float(x) for x in volume.spacing_mm],
            "ijk_to_ras": volume.ijk_to_ras.tolist(),
            "dtype": str(volume.array.dtype),
            "noise": scan_noise(volume, geom.points),
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
    step(1.0, "analysis complete")
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
        ct_kind=post.ct_kind,
        postop=post.to_dict(),
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
    edge: postop_lib.EdgeModel | None = None,
) -> pd.DataFrame:
    """The zones table: the HU field integrated over the triangles (see :mod:`.stats`), counts from the vertices.

    With ``volume`` (and the vertex ``normals``) the CT is sampled at the
    integration points the way ``params`` samples the vertices; without, the
    vertex HU is interpolated over each triangle. The CT is sampled by this
    library even when the vertices were probed by another sampler (the Slicer
    module's Probe Volume With Model, equal to it at the same points).

    With ``edge`` (a post-operative CT, metal-aware sampling) each integration point runs the same walk
    past the metal's bloom as the vertices (:func:`.postop.sample_metal_aware`), and a point whose bone
    cannot be told from the bloom counts as ``unreliable``.
    """
    field = None
    reliable_blocks: list[np.ndarray] = []
    if volume is not None and edge is not None:

        def field(p: np.ndarray, n: np.ndarray) -> np.ndarray:
            s = postop_lib.sample_metal_aware(volume, p, n, edge, params.sampling)
            reliable_blocks.append(s.reliable)
            return s.hu

    elif volume is not None:
        offsets = params.offsets()

        def field(p: np.ndarray, n: np.ndarray) -> np.ndarray:
            return sample_surface(volume, p, n, params.sampling, offsets, params.profile_aggregate).hu

    samples = triangle_samples(pts, faces, vertices["hu"].to_numpy(), field=field, normals=normals)
    zones = assign_zones(frame, samples.points, params.bands_axial)
    labels = class_labels(bands, include_metal=params.metal_hu is not None)
    codes = classify_codes(samples.hu, bands, params.metal_hu)
    names = class_names(bands, params.metal_hu is not None)
    if edge is not None:
        names = names + [UNRELIABLE]
        labels = labels + [UNRELIABLE]
        per_triangle = samples.subdivisions**2
        complete = np.isfinite(vertices["hu"].to_numpy(dtype=float)[np.asarray(faces).reshape(-1, 3)]).all(axis=1)
        reliable = np.zeros((complete.shape[0], per_triangle), dtype=bool)
        if reliable_blocks:
            reliable[complete] = np.concatenate(reliable_blocks).reshape(-1, per_triangle)
        codes[np.isfinite(samples.hu) & ~reliable.reshape(-1)] = labels.index(UNRELIABLE)
    table = {
        "area_mm2": samples.area_mm2,
        "hu": samples.hu,
        "contact_class": pd.Categorical.from_codes(codes, categories=labels),
        "gruen_zone": zones["gruen_zone"],
    }
    if params.zone_scheme == "projection":
        table["gruen_zone_ap"] = zones["gruen_zone_ap"]
        table["gruen_zone_lateral"] = zones["gruen_zone_lateral"]
    return zone_table(
        pd.DataFrame(table),
        names,
        params.zone_scheme,
        vertices,
        unclassified_column=bool(band_gaps(bands, params.metal_hu)),
    )


#: Length (mm, along the longest side of the bounding box) of the femoral stems this tool is for: the shortest
#: neck-sparing stems are about 80 mm, long revision stems up to about 350 mm.
STEM_LENGTH_RANGE_MM = (60.0, 400.0)


def model_size_warnings(pts: np.ndarray, volume: Volume) -> list[str]:
    """Warn when the model is far shorter or longer than a femoral stem: its units are probably wrong.

    A model 10x too small (centimetres read as mm) still overlaps the CT and
    gives numbers for a few voxels; a model in metres is refused earlier
    (:func:`check_overlap`).
    """
    length = float(np.max(pts.max(0) - pts.min(0)))
    ct_lo, ct_hi = volume.bounds_ras()
    ct_length = float(np.max(ct_hi - ct_lo))
    lo, hi = STEM_LENGTH_RANGE_MM
    if length < lo:
        factor = "10 (centimetres read as mm?)" if length * 10 >= lo else "25.4 (inches?)" if length * 25.4 >= lo else "1000 (metres?)"
        return [
            f"the model is only {length:.3g} mm long (CT {ct_length:.0f} mm) while a femoral stem is {lo:.0f}-{hi:.0f} mm: "
            f"units? its coordinates may need scaling by {factor}; the numbers describe a {length:.3g} mm object"
        ]
    if length > hi:
        return [
            f"the model is {length:.4g} mm long (CT {ct_length:.0f} mm) while a femoral stem is {lo:.0f}-{hi:.0f} mm: "
            "units? (micrometres, or 0.1 mm?) or a model of more than the stem"
        ]
    return []


def outside_ct_warnings(inside_ct: np.ndarray, below_cut: np.ndarray, areas: np.ndarray) -> list[str]:
    """Warn about vertices outside the CT, counted on the analysed surface (below the resection plane).

    The part above the cut is not analysed, so a CT that stops at the neck
    says nothing about the result; a CT that misses part of the stem below
    the cut does.
    """
    out_below = below_cut & ~inside_ct
    n_out_above = int((~below_cut & ~inside_ct).sum())
    if not out_below.any():
        if n_out_above:
            return [
                f"{n_out_above} vertices above the resection plane (not analysed) lie outside the CT; "
                "all of the analysed surface below it is inside"
            ]
        return []
    area_below = areas[below_cut].sum()
    frac = areas[out_below].sum() / area_below if area_below > 0 else 1.0
    above = f" (and {n_out_above} above the plane, not analysed)" if n_out_above else ""
    return [
        f"{int(out_below.sum())} of {int(below_cut.sum())} vertices below the resection plane "
        f"({100 * frac:.1f}% of the analysed area) lie outside the CT{above}: their HU is NaN (inside_ct = False) "
        "and they are left out of the statistics (area_sampled_mm2)"
    ]


#: A reading below this (HU) is air or gas: lung and bowel gas read -1000 to -700, fat -150 to -50, marrow about
#: -100 to 50, soft tissue 0 to 80.
AIR_HU = -500.0
#: The share of the analysed, sampled area that may read air before the run warns that the model is not where the
#: implant is (a stem lies in bone and marrow; a little gas along it is possible in a fresh post-operative CT).
AIR_WARNING_SHARE = 0.10


def air_warnings(hu: np.ndarray, below_cut: np.ndarray, areas: np.ndarray) -> list[str]:
    """Warn when much of the analysed surface reads air: the model then lies outside the body or in gas.

    Args:
        hu: ``(N,)`` HU per vertex (NaN where not sampled).
        below_cut: ``(N,)`` True for the analysed vertices (below the resection plane).
        areas: ``(N,)`` vertex areas (mm^2).
    """
    hu = np.asarray(hu, dtype=float)
    sampled = np.asarray(below_cut, dtype=bool) & np.isfinite(hu)
    area = np.asarray(areas, dtype=float)
    total = area[sampled].sum()
    if total <= 0:
        return []
    air = sampled & (hu < AIR_HU)
    share = area[air].sum() / total
    if share < AIR_WARNING_SHARE:
        return []
    return [
        f"{100 * share:.0f}% of the analysed stem surface reads air (below {AIR_HU:g} HU; median "
        f"{np.median(hu[sampled]):.0f} HU over the surface): a femoral stem lies in bone and marrow, so the model is "
        "probably not where the implant is in this CT: check the registration (--transform), the model's "
        "coordinate system (--model-space) and that the model and the CT belong together"
    ]


def band_gap_warnings(bands: tuple[ContactBand, ...], metal_hu: float | None) -> list[str]:
    """Warn when the contact classes leave HU ranges uncovered: samples there are ``unclassified``."""
    gaps = band_gaps(bands, metal_hu)
    if not gaps:
        return []
    text = ", ".join(f"[{lo:g}, {hi:g}) HU" for lo, hi in gaps)
    return [
        f"the contact classes leave {text} uncovered: samples there are 'unclassified', reported in "
        "zones.csv as frac_unclassified so that the fractions of a zone add up to 1"
    ]


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
    # What else to try: the other remesh, if this was not it, another subdivision, or none.
    advice = ("another --points or --subdivide" if method == "fast" else "--remesh fast, another --subdivide") + " or --remesh none"
    out = []
    if area_in > 0 and abs(area_out - area_in) > REMESH_AREA_TOLERANCE * area_in:
        out.append(
            f"remeshing ({method}) changed the surface area by {100 * (area_out - area_in) / area_in:+.1f}% "
            f"({area_in:.0f} to {area_out:.0f} mm2): the area-weighted statistics follow the remeshed surface; "
            f"try {advice}"
        )
    open_in = _edge_counts(faces_in)[0]
    open_out = _edge_counts(faces_out)[0]
    if open_in == 0 and open_out > 0:
        out.append(
            f"remeshing ({method}) opened the closed surface ({open_out} boundary edges): normals near the holes "
            f"may be unreliable; try {advice}"
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
    """Integer code of each class: index in ``names``; -1 not sampled, -2 unclassified (or above the cut)."""
    lut = {n: i for i, n in enumerate(names)}
    lut["not_sampled"] = -1
    lut["unclassified"] = -2
    lut[ABOVE_RESECTION] = -2
    return np.array([lut[c] for c in contact], dtype=np.int16)


def build_output_surface(
    pts: np.ndarray, faces: np.ndarray, vertices: pd.DataFrame, names: list[str], hu_classes: np.ndarray | None = None
) -> vtk.vtkPolyData:
    """The analysed surface with every numeric per-vertex column as a point array.

    ``contact_class`` is stored as ``contact_class_id`` (index into the field
    data string array ``contact_class_names``; -1 not sampled). ``hu_classes``
    (the class of each vertex's HU, also above the cut) gives the ids when
    given, so a view coloured by class still shows the part above the cut;
    otherwise the ``contact_class`` column does (above the cut: -2).
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
    classes_for_ids = vertices["contact_class"].to_numpy() if hu_classes is None else np.asarray(hu_classes)
    ids = ns.numpy_to_vtk(class_ids(classes_for_ids, names), deep=True)
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
        as_read = ns.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
        surface = transform_polydata(surface, matrix)
        inputs["transform"] = {**describe_file(transform), "matrix_ras": matrix.tolist()}
        # Read in the other space, x and y change sign before the registration moves the model.
        other_space = (as_read * np.array([-1.0, -1.0, 1.0])) @ matrix[:3, :3].T + matrix[:3, 3]
        check_overlap(volume, surface, other_space_points=other_space)
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
    if params.register and transform is not None:
        raise InputError("give either a registration transform or --register, not both")
    t = time.perf_counter()
    volume, surface, inputs = load_inputs(ct, model, transform, params.model_space, params.series_uid)
    t_read = time.perf_counter() - t
    registration = None
    if params.register:
        from .register import register_stem

        if progress:
            progress(0.0, "registering the model to the CT's metal")
        registration = register_stem(volume, surface)
        surface = transform_polydata(surface, registration.matrix_ras)
        inputs["transform"] = {"registered": True, "matrix_ras": registration.matrix_ras.tolist(), "file": "stem_to_ct.tfm"}
    result = analyze(volume, surface, params, progress, inputs)
    result.timings_s = {"read_inputs": t_read, **result.timings_s}
    if registration is not None:
        result.registration = registration
        result.timings_s["registration"] = registration.seconds.get("total", 0.0)
    return result
