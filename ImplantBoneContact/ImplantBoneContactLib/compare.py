"""Follow-up against baseline: how the bone at the stem surface changed between two CTs of one patient.

The workflow has two steps:

1. The follow-up CT is analysed on the *baseline's* surface and frame
   (:func:`analyze_followup_files`, ``implant-bone-contact analyze --baseline
   BASELINE_RESULT``). The stem is rigid, so the baseline's remeshed surface,
   moved into the follow-up CT, is the same stem with the same vertices:
   every per-vertex difference is point to point, and every vertex stays in
   its Gruen zone. The move comes from the two registrations the user already
   has, one per CT, of the same CAD stem: the baseline's (recorded in its
   ``parameters.json``) and the follow-up's. Both place the CAD model's
   points, so the rigid motion from the baseline CT to the follow-up CT is
   the least-squares rigid fit (Kabsch) of the baseline-registered model
   points onto the follow-up-registered ones; with transform files it equals
   ``T_followup @ inverse(T_baseline)``, and it also works when each
   registration was saved as a moved model file. Two registrations that do not
   place one rigid stem (another model, a scaled model) are refused.
2. :func:`compare` (``implant-bone-contact compare BASELINE FOLLOWUP --out DIR``)
   reads the two result folders and writes the change per vertex and per zone.

Significance (documented in the README): HU differences between two scans
come from real change, from noise (each scan has its own) and from small
differences of registration and voxel grid, which move the sample points
across steep HU edges. For each zone the standard error of the change in
mean HU is the larger of

* the spread estimate: the zone's surface is cut into square patches of
  :data:`PATCH_MM` mm or 3 voxels of the coarser CT, whichever is larger
  (height x arc length around the axis), the area-weighted mean change of
  each patch is taken, and ``SE = sd(patch means) / sqrt(n_patches)``
  (the effective number of area-weighted patches). Patches larger than the
  noise correlation length are nearly independent, so this measures the
  scatter that noise, interpolation and registration put into the change,
  whatever its source. A zone of fewer than 3 patches counts as one
  independent sample: SE is the spread of the change over its vertices;
* the noise floor: ``sqrt(sd_b^2 + sd_f^2) * voxel / sqrt(area)``, with
  each scan's noise ``sd`` measured in soft tissue away from the implant
  (:mod:`.scan_noise`) and ``area / voxel^2`` independent voxels at most;

combined (in quadrature) with the registration term: the zone's
sensitivity to the stem's placement (HU per mm, measured in the follow-up CT
by :func:`registration_sensitivity`) times the registration uncertainty
(``registration_sd_mm``, default a quarter of the coarser voxel). A
misregistration, or the voxel grid falling elsewhere, moves a whole zone
alike, so this term does not shrink with the zone's size.

A change is ``significant`` when ``|delta| > Z_THRESHOLD * SE`` (3: a
two-sided p below 0.003, which keeps the chance of one false call among the
15 zone rows under 5 %) and ``|delta| >= min_change_hu`` (default
:data:`MIN_CHANGE_HU`, a floor for what no scan-to-scan difference of the
same scanner should produce). HU of two scans differ also by calibration
(tube voltage, scanner, drift): with a density calibration on both analyses
(``--calibration``) compare the density change, which a phantom scanned with
each CT makes comparable; the density change gets its own test
(``significant_density``) with the same method in mg/cm3.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support as ns

from . import vtkclasses as vtk
from .errors import InputError
from .frame import ZONE_ORDER, ZONE_REGIONS, StemFrame
from .lazymodule import LazyModule
from .mesh import points as mesh_points
from .mesh import read_model, transform_polydata, triangle_areas
from .mesh import triangles as mesh_triangles

pd = LazyModule("pandas")  # imported on first use: the command-line parser does not need it

#: Patch size (mm) of the spread estimate of the standard error (at least :data:`PATCH_VOXELS` voxels).
PATCH_MM = 5.0
PATCH_VOXELS = 3.0
#: Default uncertainty of the stem's placement in each CT, in voxels of the coarser CT.
REGISTRATION_SD_VOXELS = 0.25
#: Voxels coarser than this (mm) get a warning: grid-phase errors at edges are coherent over whole zones.
COARSE_VOXEL_MM = 1.5
#: A zone change is significant beyond this many standard errors.
Z_THRESHOLD = 3.0
#: Smallest change in zone mean HU called significant (HU).
MIN_CHANGE_HU = 20.0
#: Largest RMS distance (mm) between the two registered models after the rigid fit: the same rigid stem.
SAME_STEM_RMS_MM = 0.1
#: Parameters that must agree for two results to be compared (they decide what a vertex's HU means).
SAMPLING_PARAMETERS = ("sampling", "offset_mm", "profile", "profile_aggregate", "classes", "metal_hu", "zone_scheme",
                       "bands_axial", "tip_length_mm")


@dataclass
class StoredResult:
    """A result folder read back: tables, metadata, frame and surface (RAS mm)."""

    path: Path
    vertices: pd.DataFrame
    zones: pd.DataFrame
    metadata: dict
    frame: StemFrame
    surface: vtk.vtkPolyData

    @property
    def parameters(self) -> dict:
        return dict(self.metadata.get("parameters", {}))

    @property
    def noise_sd_hu(self) -> float:
        """Noise of the CT (HU) measured at analysis time; NaN when not recorded."""
        noise = self.metadata.get("inputs", {}).get("ct", {}).get("noise", {})
        value = noise.get("noise_sd_hu") if isinstance(noise, dict) else None
        return float(value) if isinstance(value, (int, float)) else float("nan")

    @property
    def voxel_mm(self) -> float:
        """Mean voxel spacing of the CT (mm); NaN when not recorded."""
        sp = self.metadata.get("inputs", {}).get("ct", {}).get("spacing_mm")
        return float(np.mean(sp)) if sp else float("nan")

    @property
    def calibration(self) -> dict | None:
        cal = self.metadata.get("inputs", {}).get("calibration")
        return cal if isinstance(cal, dict) else None


def load_result(folder: str | os.PathLike) -> StoredResult:
    """Read a result folder written by ``analyze`` (vertices.csv, zones.csv, parameters.json, frame.json, surface.vtp).

    Raises:
        InputError: the folder or one of its files is missing or unreadable.
    """
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"result folder not found: {p} (give the --out folder of an analyze run)")
    missing = [n for n in ("vertices.csv", "zones.csv", "parameters.json", "frame.json", "surface.vtp") if not (p / n).is_file()]
    if missing:
        raise InputError(f"{p} is not a complete analysis result: {', '.join(missing)} missing (run analyze again)")
    try:
        vertices = pd.read_csv(p / "vertices.csv", keep_default_na=False, na_values=["NaN"])
        zones = pd.read_csv(p / "zones.csv", dtype={"zone": str}, keep_default_na=False, na_values=["NaN"])
        metadata = json.loads((p / "parameters.json").read_text(encoding="utf-8"))
        frame = StemFrame.from_dict(json.loads((p / "frame.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read the result in {p}: {exc}") from None
    surface, _ = read_model(p / "surface.vtp")
    if surface.GetNumberOfPoints() != len(vertices):
        raise InputError(f"{p}: surface.vtp has {surface.GetNumberOfPoints()} points but vertices.csv {len(vertices)} rows: the result is damaged")
    return StoredResult(p, vertices, zones, metadata, frame, surface)


# --------------------------------------------------------------------------- rigid geometry


def rigid_fit(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares rotation and translation (Kabsch) taking ``source`` points onto ``target``.

    Returns:
        the 4x4 matrix and the RMS distance (mm) left after it.
    """
    a = np.asarray(source, dtype=float)
    b = np.asarray(target, dtype=float)
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = cb - r @ ca
    rms = float(np.sqrt(np.mean(((a @ r.T + m[:3, 3]) - b) ** 2) * 3))
    return m, rms


def transform_frame(frame: StemFrame, matrix: np.ndarray) -> StemFrame:
    """The frame moved by a rigid 4x4 matrix (points moved, directions rotated)."""
    m = np.asarray(matrix, dtype=float)
    r, t = m[:3, :3], m[:3, 3]

    def p(x):
        return r @ np.asarray(x, dtype=float) + t

    def v(x):
        return r @ np.asarray(x, dtype=float)

    return StemFrame(
        proximal_point=p(frame.proximal_point), axis=v(frame.axis), medial=v(frame.medial), anterior=v(frame.anterior),
        tip=p(frame.tip), resection_point=p(frame.resection_point), resection_normal=v(frame.resection_normal),
        side=frame.side, tip_length_mm=frame.tip_length_mm,
        provenance={**frame.provenance, "followup": "baseline frame moved rigidly into the follow-up CT"},
    )


def _baseline_model_in_ct(baseline: StoredResult, followup_model_sha: str | None, followup_model: str | os.PathLike):
    """The CAD model as the baseline's registration placed it in the baseline CT (RAS mm)."""
    info = baseline.metadata.get("inputs", {})
    model = info.get("model", {})
    path = model.get("path")
    space = model.get("space_used")
    if path and Path(path).is_file():
        source = path
    elif followup_model_sha is not None and model.get("sha256") == followup_model_sha:
        source = followup_model  # the same file content, moved or renamed since
    else:
        raise InputError(
            f"the baseline's model file {path!r} is not there any more and the follow-up model is a different file: "
            "put the baseline's model back at that path, or use the same model file for the follow-up"
        )
    surface, _ = read_model(source, space=space)
    matrix = info.get("transform", {}).get("matrix_ras")
    if matrix is not None:
        surface = transform_polydata(surface, np.asarray(matrix, dtype=float))
    return mesh_points(surface)


def baseline_to_followup(baseline: StoredResult, followup_model_pts: np.ndarray, followup_model_sha: str | None = None,
                         followup_model: str | os.PathLike | None = None) -> tuple[np.ndarray, float]:
    """Rigid motion (4x4, RAS mm) from the baseline CT to the follow-up CT, from the two registrations of one CAD stem.

    Args:
        baseline: the baseline result.
        followup_model_pts: the CAD model's points as the follow-up registration placed them (RAS mm).
        followup_model_sha: SHA-256 of the follow-up model file.
        followup_model: the follow-up model file (used when the baseline's has moved and has the same hash).

    Raises:
        InputError: the two registered models are not one rigid stem (different
            models, or a registration that scales).
    """
    base_pts = _baseline_model_in_ct(baseline, followup_model_sha, followup_model)
    if base_pts.shape != followup_model_pts.shape:
        raise InputError(
            f"different stems: the baseline's model has {base_pts.shape[0]} points and the follow-up's {followup_model_pts.shape[0]}: "
            "a follow-up is compared on the same stem model (the same CAD file, registered into each CT)"
        )
    m, rms = rigid_fit(base_pts, followup_model_pts)
    size = float(np.linalg.norm(np.ptp(base_pts, axis=0)))
    if rms > SAME_STEM_RMS_MM + 1e-4 * size:
        raise InputError(
            f"the baseline and follow-up registrations do not place one rigid stem (the models differ by {rms:.2f} mm RMS "
            "after the best rigid fit): a different stem model, or a registration that scales; "
            "register the same stem model into each CT with a rigid transform"
        )
    return m, rms


def followup_setup(baseline: StoredResult, matrix: np.ndarray, parameters=None):
    """The baseline's surface moved into the follow-up CT, and the parameters that analyse it like the baseline.

    The follow-up takes the baseline's sampling, classes and zone settings (a
    change must not come from a setting), no remesh (the baseline's vertices),
    and the baseline's frame moved by ``matrix``. From ``parameters`` it keeps
    only what belongs to the follow-up CT: ``calibration``, ``series_uid`` and
    ``model_space``.
    """
    from .analysis import AnalysisParameters

    params = AnalysisParameters.from_dict({k: v for k, v in baseline.parameters.items() if k in {f for f in AnalysisParameters.__dataclass_fields__}})
    params.remesh = "none"
    params.subdivide = None
    params.calibration = getattr(parameters, "calibration", None)
    params.series_uid = getattr(parameters, "series_uid", None)
    params.model_space = getattr(parameters, "model_space", None)
    frame = transform_frame(baseline.frame, matrix)
    for name, value in frame.parameter_fields().items():
        setattr(params, name, value)
    params.side = frame.side
    params.tip_length_mm = float(baseline.frame.tip_length_mm)
    surface = transform_polydata(baseline.surface, matrix)
    return surface, params, frame


def registration_sensitivity(volume, vertices: pd.DataFrame, parameters, shift_mm: float) -> dict:
    """How much each zone's mean HU moves when the stem is placed ``shift_mm`` off, in the CT given.

    The vertices are sampled as the analysis sampled them (same interpolation,
    offsets, profile aggregate) after a shift of ``shift_mm`` along each of
    the six world directions; for each shift the area-weighted mean change of
    each zone's vertices is taken, and a zone's sensitivity is the RMS over
    the six. A zone on a steep edge (cortex, metal bloom) moves a lot; one in
    even bone hardly. Shifts in the same direction move a zone alike, so this
    does not shrink with the zone's size, unlike noise.

    Returns:
        ``{"shift_mm": shift, "hu_per_mm": {zone label: HU per mm}}`` (the RMS divided by the
        shift) for zones ``"1"``..``"14"`` and ``"all"``.
    """
    from .sampling import sample_surface

    pts = vertices[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
    nrm = vertices[["nx", "ny", "nz"]].to_numpy(dtype=float)
    area = vertices["area_mm2"].to_numpy(dtype=float)
    zone = vertices["gruen_zone"].to_numpy()
    hu = vertices["hu"].to_numpy(dtype=float)
    offsets = parameters.offsets()
    diffs = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            q = pts.copy()
            q[:, axis] += sign * shift_mm
            diffs.append(sample_surface(volume, q, nrm, parameters.sampling, offsets, parameters.profile_aggregate).hu - hu)
    projection = parameters.zone_scheme == "projection" and {"gruen_zone_ap", "gruen_zone_lateral"} <= set(vertices.columns)
    out = {}
    for label in [str(z) for z in ZONE_ORDER] + ["all"]:
        if label == "all":
            sel = zone > 0
        elif projection:
            sel = (vertices["gruen_zone_ap"].to_numpy() == int(label)) | (vertices["gruen_zone_lateral"].to_numpy() == int(label))
        else:
            sel = zone == int(label)
        means = []
        for d in diffs:
            ok = sel & np.isfinite(d) & (area > 0)
            if ok.any():
                means.append(float(np.average(d[ok], weights=area[ok])))
        out[label] = float(np.sqrt(np.mean(np.square(means)))) / shift_mm if means and shift_mm > 0 else float("nan")
    return {"shift_mm": float(shift_mm), "hu_per_mm": out,
            "method": "RMS over shifts of +-shift_mm along R, A, S of the area-weighted mean HU change of the zone's vertices, "
                      "divided by shift_mm"}


def analyze_followup_files(ct, model, baseline_dir, parameters=None, transform=None, progress=None,
                           registration_sd_mm: float | None = None):
    """Analyse a follow-up CT on the baseline result's surface and frame.

    Args:
        ct: the follow-up CT (file or DICOM folder).
        model: the stem model file (the same CAD model as the baseline's).
        baseline_dir: the baseline's result folder (``analyze --out``).
        parameters: :class:`~ImplantBoneContactLib.analysis.AnalysisParameters`; only
            ``calibration``, ``series_uid`` and ``model_space`` are used (see :func:`followup_setup`).
        transform: the follow-up registration (moves the model into the follow-up CT).
        progress: ``progress(fraction, message)``.
        registration_sd_mm: the shift (mm) at which the registration sensitivity is measured, and
            the default registration uncertainty of :func:`compare`; ``None``: a quarter of the
            coarser CT's voxel (:data:`REGISTRATION_SD_VOXELS`), which also covers where the voxel grid falls.

    Returns:
        an :class:`~ImplantBoneContactLib.analysis.AnalysisResult` with the baseline's
        vertices (same order and zones); ``inputs["baseline"]`` records the baseline and the motion.

    Raises:
        InputError: different stems, or an unreadable baseline.
    """
    from .analysis import analyze, load_inputs

    baseline = load_result(baseline_dir)
    volume, model_in_ct, inputs = load_inputs(ct, model, transform, getattr(parameters, "model_space", None),
                                              getattr(parameters, "series_uid", None))
    matrix, rms = baseline_to_followup(baseline, mesh_points(model_in_ct), inputs["model"]["sha256"], model)
    surface, params, frame = followup_setup(baseline, matrix, parameters)
    inputs["baseline"] = {
        "path": str(baseline.path.resolve()),
        "n_vertices": int(len(baseline.vertices)),
        "baseline_to_followup_ras": matrix.tolist(),
        "registration_rms_mm": rms,
        "how": "baseline surface and frame moved by the rigid fit of the baseline-registered model onto the follow-up-registered model",
    }
    result = analyze(volume, surface, params, progress, inputs)
    if len(result.vertices) != len(baseline.vertices):
        raise InputError(
            f"the baseline surface changed while being moved ({len(baseline.vertices)} to {len(result.vertices)} vertices): "
            "the baseline result is damaged; run the baseline analysis again"
        )
    if registration_sd_mm is None:
        voxel = max(float(np.mean(volume.spacing_mm)), baseline.voxel_mm if math.isfinite(baseline.voxel_mm) else 0.0)
        registration_sd_mm = REGISTRATION_SD_VOXELS * voxel
    if not (math.isfinite(registration_sd_mm) and registration_sd_mm >= 0):
        raise InputError(f"the registration uncertainty must be a non-negative number of mm, got {registration_sd_mm}")
    if registration_sd_mm > 0:
        sensitivity = registration_sensitivity(volume, result.vertices, params, registration_sd_mm)
    else:
        sensitivity = {"shift_mm": 0.0, "hu_per_mm": {}}
    sensitivity["default_registration_sd_mm"] = float(registration_sd_mm)
    result.inputs["baseline"]["registration_sensitivity"] = sensitivity
    result.warnings.extend(_ignored_settings(parameters, params))
    return result


def _ignored_settings(given, used) -> list[str]:
    """Warnings for settings the user gave that the follow-up replaced by the baseline's."""
    from .analysis import AnalysisParameters

    if given is None:
        return []
    default = AnalysisParameters()
    out = []
    for key in (*SAMPLING_PARAMETERS, "remesh", "points", "axis", "medial_point", "resection_point", "side"):
        value = getattr(given, key, None)
        if _norm(value) != _norm(getattr(default, key)) and _norm(value) != _norm(getattr(used, key)):
            out.append(f"{key} {value!r} is not used: a follow-up is analysed with the baseline's settings "
                       f"({key} {getattr(used, key)!r}) so that a change cannot come from a setting")
    return out


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """Change from a baseline to a follow-up result.

    Attributes:
        vertices: one row per vertex (see :func:`compare`).
        zones: one row per zone 1-14 and ``all``.
        surface: the baseline surface with the change arrays (RAS mm, baseline CT).
        baseline, followup: the two results.
        summary: noise, methods, thresholds and checks (``comparison.json``).
        class_names: contact classes.
        warnings: things to know.
    """

    vertices: pd.DataFrame
    zones: pd.DataFrame
    surface: vtk.vtkPolyData
    baseline: StoredResult
    followup: StoredResult
    summary: dict
    class_names: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def has_density(self) -> bool:
        return "delta_density_mg_cm3" in self.vertices.columns


def check_same_stem(baseline: StoredResult, followup: StoredResult) -> dict:
    """Refuse two results that are not the same stem surface analysed the same way.

    The vertices must be the same (count, triangles, shape up to a rigid
    motion), the zones the same, and the settings that decide what a vertex's
    HU means equal. Returns the checks' numbers.

    Raises:
        InputError: saying which check failed and what to do.
    """
    nb, nf = len(baseline.vertices), len(followup.vertices)
    hint = "analyse the follow-up with --baseline BASELINE_RESULT so both use the same surface"
    if nb != nf:
        raise InputError(f"different stems or surfaces: the baseline has {nb} vertices and the follow-up {nf}: {hint}")
    fb, ff = mesh_triangles(baseline.surface), mesh_triangles(followup.surface)
    if fb.shape != ff.shape or not np.array_equal(fb, ff):
        raise InputError(f"different surfaces: the triangles of the two results differ: {hint}")
    pb, pf = mesh_points(baseline.surface), mesh_points(followup.surface)
    area_b, area_f = triangle_areas(pb, fb).sum(), triangle_areas(pf, ff).sum()
    if abs(area_f - area_b) > 1e-3 * area_b:
        raise InputError(f"different stems: surface areas {area_b:.1f} and {area_f:.1f} mm2: {hint}")
    _, rms = rigid_fit(pb, pf)
    if rms > 0.01:
        raise InputError(f"different shapes: the two surfaces differ by {rms:.3f} mm RMS after the best rigid fit: {hint}")
    zb, zf = baseline.vertices["gruen_zone"].to_numpy(), followup.vertices["gruen_zone"].to_numpy()
    moved_zone = float((zb != zf).mean())
    if moved_zone > 0.001:
        raise InputError(
            f"{100 * moved_zone:.1f}% of the vertices are in another Gruen zone in the follow-up: the frames differ; {hint}"
        )
    pb_, pf_ = baseline.parameters, followup.parameters
    differ = [k for k in SAMPLING_PARAMETERS if k in pb_ and k in pf_ and _norm(pb_[k]) != _norm(pf_[k])]
    if differ:
        raise InputError(
            "the two results were sampled differently (" + ", ".join(f"{k}: {pb_[k]!r} vs {pf_[k]!r}" for k in differ)
            + f"): a change would come from the settings; {hint}"
        )
    return {"n_vertices": nb, "area_mm2": float(area_b), "shape_rms_mm": rms, "vertices_in_other_zone": int((zb != zf).sum())}


def _norm(v):
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, (list, tuple)):
        return [round(float(x), 9) if isinstance(x, (int, float)) else x for x in v]
    if isinstance(v, float):
        return round(v, 9)
    return v


def _patch_labels(vertices: pd.DataFrame, frame: StemFrame, patch_mm: float) -> np.ndarray:
    """Patch of each vertex: ``patch_mm`` squares of height x arc length (at the stem's median radius)."""
    pts = vertices[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float) - frame.tip
    axis = np.asarray(frame.axis, dtype=float)
    radius = np.linalg.norm(pts - np.outer(pts @ axis, axis), axis=1)
    r_med = float(np.median(radius)) if len(radius) else 1.0
    arc = np.radians(vertices["azimuth_deg"].to_numpy(dtype=float)) * r_med
    h = vertices["height_mm"].to_numpy(dtype=float)
    ih = np.floor(h / patch_mm).astype(np.int64)
    ia = np.floor(arc / patch_mm).astype(np.int64)
    return ih * 100_000 + ia


def _spread_se(delta: np.ndarray, area: np.ndarray, patch: np.ndarray) -> tuple[float, int]:
    """Standard error of an area-weighted mean change from the scatter of patch means; (SE, number of patches)."""
    ok = np.isfinite(delta) & (area > 0)
    if ok.sum() < 2:
        return float("nan"), 0
    labels, inverse = np.unique(patch[ok], return_inverse=True)
    w = np.bincount(inverse, weights=area[ok])
    s = np.bincount(inverse, weights=area[ok] * delta[ok])
    means = s / w
    # Patches with little area (zone borders) carry little: weight by area, effective count by Kish.
    n_eff = w.sum() ** 2 / (w**2).sum()
    if labels.size < 3 or n_eff < 2:
        # Too few independent patches to measure the scatter of their means: the zone counts as one
        # independent sample, and its standard error is the spread of the change over its vertices.
        d, a = delta[ok], area[ok]
        return float(np.sqrt(np.average((d - np.average(d, weights=a)) ** 2, weights=a))), int(labels.size)
    mean = np.average(means, weights=w)
    var = np.average((means - mean) ** 2, weights=w) * labels.size / (labels.size - 1)
    return float(np.sqrt(var / n_eff)), int(labels.size)


def compare(baseline_dir, followup_dir, min_change_hu: float = MIN_CHANGE_HU, patch_mm: float = PATCH_MM,
            registration_sd_mm: float | None = None) -> Comparison:
    """Change from a baseline to a follow-up analysis of the same stem surface.

    Args:
        baseline_dir, followup_dir: result folders; the follow-up analysed with
            ``--baseline`` (same vertices, same zones).
        min_change_hu: smallest change of a zone's mean HU called significant (HU).
        patch_mm: patch size of the standard-error estimate (mm).
        registration_sd_mm: uncertainty (mm) of the stem's placement in the two CTs; ``None``: the
            follow-up's default (a quarter of the coarser voxel); 0 leaves misregistration out.

    Returns:
        a :class:`Comparison`. ``vertices``: ``vertex_id``, ``gruen_zone``,
        ``area_mm2``, ``hu_baseline``, ``hu_followup``, ``delta_hu``,
        ``delta_hu_z`` (change over the two scans' combined noise), with
        calibration on both also ``density_baseline_mg_cm3``,
        ``density_followup_mg_cm3``, ``delta_density_mg_cm3``, then
        ``class_baseline``, ``class_followup``, ``changed_class`` and
        ``class_transition`` (``cancellous_to_no_bone``, or ``unchanged``).
        ``zones``: see the README.

    Raises:
        InputError: missing results, or results of different stems or settings.
    """
    if not (math.isfinite(min_change_hu) and min_change_hu >= 0):
        raise InputError(f"the minimum change must be a non-negative number of HU, got {min_change_hu}")
    if registration_sd_mm is not None and not (math.isfinite(registration_sd_mm) and registration_sd_mm >= 0):
        raise InputError(f"the registration uncertainty must be a non-negative number of mm, got {registration_sd_mm}")
    if not (math.isfinite(patch_mm) and patch_mm > 0):
        raise InputError(f"the patch size must be a positive number of mm, got {patch_mm}")
    b = load_result(baseline_dir)
    f = load_result(followup_dir)
    checks = check_same_stem(b, f)
    warnings: list[str] = []
    vb, vf = b.vertices, f.vertices
    hu_b, hu_f = vb["hu"].to_numpy(dtype=float), vf["hu"].to_numpy(dtype=float)
    delta = hu_f - hu_b
    sd_b, sd_f = b.noise_sd_hu, f.noise_sd_hu
    combined = math.hypot(sd_b, sd_f) if math.isfinite(sd_b) and math.isfinite(sd_f) else float("nan")
    if not math.isfinite(combined):
        warnings.append("the noise of one scan is not recorded (result of an older version, or no soft tissue away "
                        "from the implant): significance rests on the spread of the change alone")
    area = vb["area_mm2"].to_numpy(dtype=float)
    zone = vb["gruen_zone"].to_numpy()
    cls_b = vb["contact_class"].astype(str).to_numpy()
    cls_f = vf["contact_class"].astype(str).to_numpy()
    changed = cls_b != cls_f
    transition = np.where(changed, np.char.add(np.char.add(cls_b.astype(str), "_to_"), cls_f.astype(str)), "unchanged")
    vertices = pd.DataFrame({
        "vertex_id": vb["vertex_id"].to_numpy(),
        "gruen_zone": zone,
        "area_mm2": area,
        "hu_baseline": hu_b,
        "hu_followup": hu_f,
        "delta_hu": delta,
        "delta_hu_z": delta / combined if math.isfinite(combined) and combined > 0 else np.full(len(delta), np.nan),
    })
    cal_b, cal_f = b.calibration, f.calibration
    density = "density_mg_cm3" in vb.columns and "density_mg_cm3" in vf.columns
    if density:
        if cal_b.get("material") != cal_f.get("material"):
            raise InputError(
                f"the two density calibrations are of different materials ({cal_b.get('material')} and {cal_f.get('material')}): "
                "densities of different reference materials do not compare; calibrate both with the same phantom material"
            )
        vertices["density_baseline_mg_cm3"] = vb["density_mg_cm3"].to_numpy(dtype=float)
        vertices["density_followup_mg_cm3"] = vf["density_mg_cm3"].to_numpy(dtype=float)
        vertices["delta_density_mg_cm3"] = vertices["density_followup_mg_cm3"] - vertices["density_baseline_mg_cm3"]
    elif ("density_mg_cm3" in vb.columns) != ("density_mg_cm3" in vf.columns):
        warnings.append("only one of the two results has a density calibration: density change not reported "
                        "(give --calibration to both analyses)")
    vertices["class_baseline"] = cls_b
    vertices["class_followup"] = cls_f
    vertices["changed_class"] = changed
    vertices["class_transition"] = transition

    names = [c[len("frac_"):] for c in b.zones.columns if c.startswith("frac_")]
    voxel = np.nanmax([b.voxel_mm, f.voxel_mm]) if np.isfinite([b.voxel_mm, f.voxel_mm]).any() else float("nan")
    # Patches narrower than 3 voxels share voxels (and partial-volume errors) with their neighbours: not independent.
    patch_used = max(patch_mm, PATCH_VOXELS * voxel) if math.isfinite(voxel) else patch_mm
    patch = _patch_labels(vb, b.frame, patch_used)
    if math.isfinite(voxel) and voxel > COARSE_VOXEL_MM:
        warnings.append(
            f"CT voxels of {voxel:.1f} mm: where the surface meets a steep edge (metal bloom, cortex) the HU depends on "
            "where the voxel grid falls, and that shifts whole zones alike between two scans, which the standard error "
            "does not see; read zone changes of less than about 100 HU as unconfirmed (see --min-change)"
        )
    reg_info = f.metadata.get("inputs", {}).get("baseline", {}).get("registration_sensitivity", {})
    sensitivity = reg_info.get("hu_per_mm", {}) if isinstance(reg_info, dict) else {}
    if registration_sd_mm is None:
        registration_sd_mm = float(reg_info.get("default_registration_sd_mm", 0.0)) if isinstance(reg_info, dict) else 0.0
    reg_sd = float(registration_sd_mm)
    if not sensitivity and reg_sd > 0:
        warnings.append("the follow-up result does not record its registration sensitivity (not analysed with --baseline): "
                        "misregistration is not allowed for in the significance")
    # With the projection scheme a vertex counts in its AP-view zone and in its lateral-view zone, as in zones.csv.
    projection = b.parameters.get("zone_scheme") == "projection" and {"gruen_zone_ap", "gruen_zone_lateral"} <= set(vb.columns)
    zb = b.zones.set_index(b.zones["zone"].astype(str))
    zf = f.zones.set_index(f.zones["zone"].astype(str))
    rows = []
    for label in [str(z) for z in ZONE_ORDER] + ["all"]:
        if label == "all":
            sel = zone > 0
        elif projection:
            sel = (vb["gruen_zone_ap"].to_numpy() == int(label)) | (vb["gruen_zone_lateral"].to_numpy() == int(label))
        else:
            sel = zone == int(label)
        rb, rf = zb.loc[label], zf.loc[label]
        area_s = float(min(rb["area_sampled_mm2"], rf["area_sampled_mm2"]))
        r = {
            "zone": label,
            "region": ZONE_REGIONS[int(label)] if label != "all" else "whole stem below the resection plane",
            "area_mm2": float(rb["area_mm2"]),
            "area_sampled_mm2": area_s,
            "hu_mean_baseline": float(rb["hu_mean"]),
            "hu_mean_followup": float(rf["hu_mean"]),
        }
        d = r["hu_mean_followup"] - r["hu_mean_baseline"]
        r["delta_hu_mean"] = d
        r["delta_hu_mean_pct"] = 100.0 * d / abs(r["hu_mean_baseline"]) if abs(r["hu_mean_baseline"]) >= 1.0 else float("nan")
        spread, n_patches = _spread_se(delta[sel], area[sel], patch[sel])
        floor = combined * voxel / math.sqrt(area_s) if math.isfinite(combined) and area_s > 0 and math.isfinite(voxel) else float("nan")
        se = float(np.nanmax([spread, floor])) if np.isfinite([spread, floor]).any() else float("nan")
        # A zone with no sampled vertex has no sensitivity (NaN, written to JSON as null).
        zone_sensitivity = sensitivity.get(label)
        reg = (float("nan") if zone_sensitivity is None else float(zone_sensitivity)) * reg_sd
        if math.isfinite(reg) and math.isfinite(se):
            se = math.hypot(se, reg)
        r["n_patches"] = n_patches
        r["se_spread_hu"] = spread
        r["se_noise_hu"] = floor
        r["se_registration_hu"] = reg
        r["se_hu"] = se
        r["z_hu"] = d / se if math.isfinite(se) and se > 0 else float("nan")
        r["significant"] = bool(math.isfinite(r["z_hu"]) and abs(r["z_hu"]) > Z_THRESHOLD and abs(d) >= min_change_hu)
        if density:
            s_b = float(cal_b["slope_hu_per_mg_cm3"])
            s_f = float(cal_f["slope_hu_per_mg_cm3"])
            db, df = float(rb["density_mean_mg_cm3"]), float(rf["density_mean_mg_cm3"])
            r["density_mean_baseline_mg_cm3"] = db
            r["density_mean_followup_mg_cm3"] = df
            r["delta_density_mean_mg_cm3"] = df - db
            r["delta_density_mean_pct"] = 100.0 * (df - db) / abs(db) if abs(db) >= 1.0 else float("nan")
            dd = vertices["delta_density_mg_cm3"].to_numpy(dtype=float)
            spread_d, _ = _spread_se(dd[sel], area[sel], patch[sel])
            floor_d = (math.hypot(sd_b / s_b, sd_f / s_f) * voxel / math.sqrt(area_s)
                       if math.isfinite(combined) and area_s > 0 and math.isfinite(voxel) else float("nan"))
            se_d = float(np.nanmax([spread_d, floor_d])) if np.isfinite([spread_d, floor_d]).any() else float("nan")
            if math.isfinite(reg) and math.isfinite(se_d):
                se_d = math.hypot(se_d, reg / s_f)
            min_d = min_change_hu / max(s_b, s_f)
            r["se_density_mg_cm3"] = se_d
            r["significant_density"] = bool(math.isfinite(se_d) and se_d > 0 and abs(df - db) > Z_THRESHOLD * se_d
                                            and abs(df - db) >= min_d)
        for n in names:
            r[f"delta_frac_{n}"] = float(rf.get(f"frac_{n}", np.nan)) - float(rb.get(f"frac_{n}", np.nan))
        sampled = sel & np.isfinite(hu_b) & np.isfinite(hu_f)
        changed_area = float(area[sampled & changed].sum())
        r["area_changed_class_mm2"] = changed_area
        r["frac_changed_class"] = changed_area / float(area[sampled].sum()) if area[sampled].sum() > 0 else float("nan")
        rows.append(r)
    zones = pd.DataFrame(rows)
    summary = {
        "baseline": str(b.path.resolve()),
        "followup": str(f.path.resolve()),
        "checks": checks,
        "noise_sd_hu": {"baseline": sd_b, "followup": sd_f, "combined": combined},
        "registration_sensitivity": reg_info,
        "registration_sd_mm": reg_sd,
        "voxel_mm": {"baseline": b.voxel_mm, "followup": f.voxel_mm},
        "significance": {
            "z_threshold": Z_THRESHOLD,
            "min_change_hu": float(min_change_hu),
            "patch_mm": float(patch_used),
            "method": "se_hu = hypot(max(sd of area-weighted patch means of the per-vertex change / sqrt(effective patch count), "
                      "sqrt(noise_baseline^2 + noise_followup^2) * voxel / sqrt(zone area)), registration sensitivity of the zone); "
                      "significant when "
                      "|delta_hu_mean| > z_threshold * se_hu and |delta_hu_mean| >= min_change_hu",
        },
        "calibration": {"baseline": cal_b, "followup": cal_f},
        "class_names": names,
        "warnings": warnings,
    }
    if b.metadata.get("inputs", {}).get("ct", {}).get("sha256") and (
            b.metadata["inputs"]["ct"].get("sha256") == f.metadata.get("inputs", {}).get("ct", {}).get("sha256")):
        warnings.append("the baseline and follow-up CT are the same file")
    surface = _change_surface(b.surface, vertices)
    return Comparison(vertices, zones, surface, b, f, summary, names, warnings)


def _change_surface(surface: vtk.vtkPolyData, vertices: pd.DataFrame) -> vtk.vtkPolyData:
    """The baseline surface with every numeric column of the vertex change table as a point array."""
    out = vtk.vtkPolyData()
    out.DeepCopy(surface)
    pdata = out.GetPointData()
    for col in vertices.columns:
        values = vertices[col].to_numpy()
        if values.dtype == bool:
            values = values.astype(np.uint8)
        if values.dtype.kind not in "fiub":
            continue
        arr = ns.numpy_to_vtk(np.ascontiguousarray(values), deep=True)
        arr.SetName(col)
        pdata.AddArray(arr)
    pdata.SetActiveScalars("delta_hu")
    return out


def save_comparison(comparison: Comparison, out_dir, overwrite: bool = False, pictures: bool = True) -> Path:
    """Write ``vertices_change.csv``, ``zones_change.csv``, ``change.vtp``, ``comparison.json`` and the pictures, atomically."""
    from .export import write_csv, write_json, write_result_folder
    from .mesh import write_polydata

    def writer(folder: Path) -> None:
        write_csv(comparison.vertices, folder / "vertices_change.csv")
        write_csv(comparison.zones, folder / "zones_change.csv")
        write_polydata(comparison.surface, folder / "change.vtp", space="RAS")
        if pictures:
            from .compare_plots import write_change_pictures

            write_change_pictures(comparison, folder)
        write_json({**comparison.summary, "warnings": list(comparison.warnings)}, folder / "comparison.json")

    return write_result_folder(out_dir, writer, overwrite)


# --------------------------------------------------------------------------- command line


def add_compare_parser(sub) -> None:
    """Register ``compare BASELINE FOLLOWUP --out DIR`` on an argparse subparsers object."""
    c = sub.add_parser("compare", help="change from a baseline to a follow-up result of the same stem (analyze --baseline)")
    c.add_argument("baseline", help="baseline result folder (analyze --out)")
    c.add_argument("followup", help="follow-up result folder (analyze --baseline BASELINE --out)")
    c.add_argument("--out", required=True, help="folder for the change tables and pictures")
    c.add_argument("--min-change", type=float, default=MIN_CHANGE_HU, metavar="HU",
                   help=f"smallest change of a zone's mean HU called significant (default {MIN_CHANGE_HU:g})")
    c.add_argument("--registration-sd", type=float, default=None, metavar="MM",
                   help="uncertainty of the stem's placement in the two CTs allowed for in the significance "
                   "(default a quarter of the coarser voxel; 0 leaves it out)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing result")
    c.add_argument("--no-pictures", action="store_true", help="tables only")
    c.add_argument("--quiet", action="store_true", help="no summary table")


def run_compare(args) -> int:
    """The ``compare`` subcommand."""
    import sys

    from .export import check_output_folder

    check_output_folder(args.out, args.overwrite)
    comparison = compare(args.baseline, args.followup, min_change_hu=args.min_change, registration_sd_mm=args.registration_sd)
    for w in comparison.warnings:
        print(f"warning: {w}", file=sys.stderr)
    save_comparison(comparison, args.out, overwrite=args.overwrite, pictures=not args.no_pictures)
    if not args.quiet:
        cols = ["zone", "hu_mean_baseline", "hu_mean_followup", "delta_hu_mean", "delta_hu_mean_pct", "se_hu", "significant"]
        if comparison.has_density:
            cols += ["delta_density_mean_mg_cm3", "significant_density"]
        print(comparison.zones[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0
