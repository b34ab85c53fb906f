"""A catalogue of bad inputs, each with the exact behaviour the program owes the user.

Every case starts from the same valid baseline (the femur phantom written as
NRRD + STL, analysed with ``--remesh none`` so results compare exactly) and
changes one thing. The expected outcome is one of:

``error``
    an :class:`InputError` whose one-line message names the problem (the key
    words are asserted); on the command line exit code 2, exactly one line on
    stderr, and no output folder or hidden temporary folder left behind.
``warning``
    a result, with a warning that names the problem, and the affected
    vertices flagged (NaN HU, ``inside_ct`` False or class ``not_sampled``),
    while everything else equals the baseline.
``same``
    a result identical to the baseline (the defect is repaired on reading).

Output-folder faults (existing, read-only, full disk) are a second table at
the end. ROBUSTNESS.md lists the cases and what each gets.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import vtk
from ibc_helpers import shared_data_dir, sphere_arrays
from ImplantBoneContactLib import (
    AnalysisParameters,
    InputError,
    OutputError,
    Volume,
    analyze_files,
    read_volume,
    save_result,
    write_volume,
)
from ImplantBoneContactLib import export as export_module
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.mesh import triangle_areas, triangles

RESULT_FILES = ("vertices.csv", "zones.csv", "surface.vtp", "frame.json", "parameters.json")
LPS = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS flip of x and y
STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])


# --------------------------------------------------------------------------- files


def read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points (as stored, float64) and triangles of a binary STL, read with numpy (not the code under test)."""
    data = path.read_bytes()
    n = int.from_bytes(data[80:84], "little")
    corners = np.frombuffer(data, STL_RECORD, count=n, offset=84)["v"].reshape(-1, 3).astype(float)
    pts, inverse = np.unique(corners, axis=0, return_inverse=True)
    return pts, inverse.reshape(-1, 3)


def write_stl(path: Path, pts: np.ndarray, faces: np.ndarray, header: bytes = b"SPACE=LPS") -> Path:
    """Binary STL of triangles ``faces`` over ``pts`` (file coordinates)."""
    rec = np.zeros(len(faces), STL_RECORD)
    rec["v"] = np.asarray(pts)[np.asarray(faces)]
    path.write_bytes(header.ljust(80, b" ")[:80] + np.uint32(len(faces)).tobytes() + rec.tobytes())
    return path


def write_matrix(path: Path, m) -> Path:
    np.savetxt(path, np.asarray(m, dtype=float))
    return path


# --------------------------------------------------------------------------- baseline


@dataclass
class Baseline:
    folder: Path
    ct: Path
    model: Path
    volume: Volume
    file_pts: np.ndarray  # STL coordinates as stored (LPS)
    faces: np.ndarray
    result: object

    @property
    def ras_pts(self) -> np.ndarray:
        return self.file_pts * LPS


@pytest.fixture(scope="module")
def base(phantom_files) -> Baseline:
    paths = phantom_files
    folder = paths["ct"].parent
    pts, faces = read_stl(paths["model"])
    result = analyze_files(paths["ct"], paths["model"], AnalysisParameters(remesh="none"))
    return Baseline(folder, paths["ct"], paths["model"], read_volume(paths["ct"]), pts, faces, result)


@dataclass
class Inputs:
    ct: Path
    model: Path
    transform: Path | None = None
    params: dict = field(default_factory=dict)
    cli: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path, Baseline], Inputs]
    words: tuple[str, ...] = ()  # key words of the error or warning message, lower case
    outcome: str = "error"  # "error" | "warning" | "same"
    check: Callable[[object, Baseline], None] | None = None
    needs_shared_data: bool = False


def with_ct(path_fn):
    return lambda tmp, b: Inputs(ct=path_fn(tmp, b), model=b.model)


def with_model(path_fn):
    return lambda tmp, b: Inputs(ct=b.ct, model=path_fn(tmp, b))


def with_transform(path_fn):
    return lambda tmp, b: Inputs(ct=b.ct, model=b.model, transform=path_fn(tmp, b))


def cut_file(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def garbage(dst: Path, n: int = 100_000) -> Path:
    dst.write_bytes(np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes())
    return dst


def ct_variant(b: Baseline, tmp: Path, array: np.ndarray, name: str = "ct.nrrd", ijk_to_ras=None) -> Path:
    write_volume(Volume(array, b.volume.ijk_to_ras if ijk_to_ras is None else ijk_to_ras), tmp / name, compress=False)
    return tmp / name


def model_variant(b: Baseline, tmp: Path, pts=None, faces=None, header=b"SPACE=LPS", name="model.stl") -> Path:
    return write_stl(tmp / name, b.file_pts if pts is None else pts, b.faces if faces is None else faces, header)


# ----- CT cases


def _nifti(tmp: Path, b: Baseline, name: str) -> Path:
    write_volume(b.volume, tmp / f"full{name}", compress=False)
    return cut_file(tmp / f"full{name}", tmp / f"ct{name}", 0.6)


def _ct_2d(tmp, b):
    sitk.WriteImage(sitk.GetImageFromArray(b.volume.array[100]), str(tmp / "slice.nrrd"))
    return tmp / "slice.nrrd"


def _ct_single_slice(tmp, b):
    image = sitk.GetImageFromArray(b.volume.array[100:101])  # 3D, one slice thick
    sitk.WriteImage(image, str(tmp / "one_slice.nrrd"))
    return tmp / "one_slice.nrrd"


def _ct_rgb(tmp, b):
    rgb = np.repeat(((b.volume.array.astype(float) + 1000) / 12).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp / "rgb.nrrd"))
    return tmp / "rgb.nrrd"


def _ct_rgb_png(tmp, b):
    rgb = np.zeros((64, 64, 3), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp / "photo.png"))
    return tmp / "photo.png"


def _ct_all_nan(tmp, b):
    return ct_variant(b, tmp, np.full(b.volume.array.shape, np.nan, np.float32))


def _patch_centre(b: Baseline) -> np.ndarray:
    """A vertex on the lateral side at mid-height of the stem (RAS mm)."""
    v = b.result.vertices
    h = v["height_mm"].to_numpy()
    lateral = np.abs(v["azimuth_deg"].to_numpy() - 180) < 20
    i = np.argmin(np.where(lateral, np.abs(h - 0.5 * h.max()), np.inf))
    return v[["x_mm", "y_mm", "z_mm"]].to_numpy()[i]


PATCH_RADIUS_MM = 6.0


def _voxel_centres(volume: Volume) -> np.ndarray:
    """RAS of every voxel centre, ``(K, J, I, 3)`` float32 (mm)."""
    nk, nj, ni = volume.array.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij", sparse=True)
    m = volume.ijk_to_ras
    out = np.empty((nk, nj, ni, 3), np.float32)
    for d in range(3):
        out[..., d] = m[d, 0] * i + m[d, 1] * j + m[d, 2] * k + m[d, 3]
    return out


def _ct_patch(value: float):
    def make(tmp, b):
        arr = b.volume.array.astype(np.float32)
        dist = np.linalg.norm(_voxel_centres(b.volume) - _patch_centre(b), axis=-1)
        arr[dist <= PATCH_RADIUS_MM] = value
        return ct_variant(b, tmp, arr)

    return make


def _check_patch(result, b: Baseline) -> None:
    v = result.vertices
    ref = b.result.vertices
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    d = np.linalg.norm(pts - _patch_centre(b), axis=1)
    hu = v["hu"].to_numpy()
    flagged = ~np.isfinite(hu)
    assert not np.isinf(hu).any(), "infinite HU must be reported as NaN"
    assert flagged.any()
    # The trilinear neighbours of a flagged vertex reach into the patch: within one voxel diagonal of it.
    assert d[flagged].max() <= PATCH_RADIUS_MM + np.sqrt(3) + 1e-6
    assert flagged[d <= PATCH_RADIUS_MM - np.sqrt(3)].all()
    assert (v["contact_class"][flagged] == "not_sampled").all()
    assert v["inside_ct"].all()
    np.testing.assert_array_equal(hu[~flagged], ref["hu"].to_numpy()[~flagged])
    # The statistics leave out the triangles that touch a flagged vertex (the patch is far below the cut), and
    # the integration points whose own trilinear neighbours reach the patch: nothing further than that.
    faces = triangles(result.surface)
    touching = flagged[faces].any(axis=1)
    assert (v["gruen_zone"].to_numpy()[faces[touching]] > 0).all()
    lost = triangle_areas(pts, faces[touching]).sum()
    edge = np.linalg.norm(pts[faces[:, 0]] - pts[faces[:, 1]], axis=1).max()
    near = np.linalg.norm(pts[faces].mean(axis=1) - _patch_centre(b), axis=1) <= PATCH_RADIUS_MM + np.sqrt(3) + edge
    all_row = result.zones.set_index("zone").loc["all"]
    ref_all = b.result.zones.set_index("zone").loc["all"]
    missing = ref_all["area_sampled_mm2"] - all_row["area_sampled_mm2"]
    assert lost - 1e-9 <= missing <= lost + triangle_areas(pts, faces[near & ~touching]).sum() + 1e-9


def _ct_nan_around_model(tmp, b):
    arr = b.volume.array.astype(np.float32)
    lo, hi = b.ras_pts.min(0) - 3, b.ras_pts.max(0) + 3
    c = _voxel_centres(b.volume)
    arr[np.all((c >= lo) & (c <= hi), axis=-1)] = np.nan
    return ct_variant(b, tmp, arr)


def _ct_raw_unrescaled(tmp, b):
    # Stored values of a CT exported without its RescaleIntercept of -1024.
    return ct_variant(b, tmp, (b.volume.array.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16))


def _check_raw(result, b):
    np.testing.assert_allclose(result.vertices["hu"], b.result.vertices["hu"] + 1024, rtol=0, atol=1e-9)


def _ct_cropped(tmp, b):
    """Drop the slices below 25 mm above the stem tip: the distal stem leaves the CT."""
    m = b.volume.ijk_to_ras
    k0 = int(np.ceil((b.ras_pts[:, 2].min() + 25.0 - m[2, 3]) / m[2, 2]))
    crop = m.copy()
    crop[:3, 3] = m[:3, 3] + k0 * m[:3, 2]
    return ct_variant(b, tmp, b.volume.array[k0:], ijk_to_ras=crop)


def _check_cropped(result, b):
    v = result.vertices
    ct_bottom = read_volume(result.inputs["ct"]["path"]).bounds_ras()[0, 2]
    z = v["z_mm"].to_numpy()
    inside = v["inside_ct"].to_numpy()
    assert not inside[z < ct_bottom - 0.01].any()
    assert inside[z > ct_bottom + 0.01].all()
    assert np.isnan(v["hu"].to_numpy()[~inside]).all()
    assert (v["contact_class"][~inside] == "not_sampled").all()
    # Where the CT is unchanged, so is every number (a vertex within 0.002 voxel below the
    # new bottom is clamped onto it, as vtkProbeFilter does, so it is left out here).
    kept = z >= ct_bottom
    np.testing.assert_array_equal(v["hu"].to_numpy()[kept], b.result.vertices["hu"].to_numpy()[kept])
    zones, ref = result.zones.set_index("zone"), b.result.zones.set_index("zone")
    # A zone none of whose triangles reaches below the CT keeps every number.
    untouched = [z_ for z_ in map(str, range(1, 15)) if zones.loc[z_, "area_sampled_mm2"] == zones.loc[z_, "area_mm2"]]
    assert {"1", "7", "8", "14"} <= set(untouched)
    pd.testing.assert_frame_equal(zones.loc[untouched], ref.loc[untouched], rtol=1e-12)
    assert zones.loc["4", "area_sampled_mm2"] < zones.loc["4", "area_mm2"]


# ----- DICOM cases (real compressed series from the shared data)


def _dicom_files() -> list[Path]:
    d = shared_data_dir() / "abdomen_ct_dicom"
    if not d.is_dir():
        pytest.skip(f"real DICOM series not found at {d} (set IBC_SHARED_DATA)")
    return sorted(p for p in d.iterdir() if p.is_file())


def _dicom_two_series(tmp, b):
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp / "dicom"
    folder.mkdir()
    uid = generate_uid()
    for f in _dicom_files():
        shutil.copy(f, folder / f.name)
        ds = pydicom.dcmread(f)  # pixel data stay JPEG 2000, untouched: only the UIDs change
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"copy_{f.name}")
    return folder


def _dicom_missing_slice(tmp, b):
    folder = tmp / "dicom"
    folder.mkdir()
    for i, f in enumerate(_dicom_files()):
        if i != 9:
            shutil.copy(f, folder / f.name)
    return folder


def _dicom_damaged_slice(tmp, b):
    folder = tmp / "dicom"
    folder.mkdir()
    for i, f in enumerate(_dicom_files()):
        # Cut inside the header: a cut inside the JPEG 2000 data is rejected the same way,
        # but GDCM takes 7-18 s to give up on it.
        cut_file(f, folder / f.name, 0.02 if i == 9 else 1.0)
    return folder


def _dicom_single_file(tmp, b):
    return _dicom_files()[0]


def _folder_without_dicom(tmp, b):
    (tmp / "notdicom").mkdir()
    (tmp / "notdicom" / "readme.txt").write_text("no images here\n")
    return tmp / "notdicom"


# ----- mesh cases


def _stl_ascii(tmp, b) -> Path:
    lines = ["solid stem"]
    for tri in b.file_pts[b.faces]:
        lines += ["facet normal 0 0 0", " outer loop", *(f"  vertex {x:.9g} {y:.9g} {z:.9g}" for x, y, z in tri), " endloop", "endfacet"]
    lines.append("endsolid stem")
    (tmp / "ascii_full.stl").write_text("\n".join(lines) + "\n")
    return cut_file(tmp / "ascii_full.stl", tmp / "model.stl", 0.5)


def _model_nan(tmp, b):
    pts = b.file_pts.copy()
    pts[5] = np.nan
    return model_variant(b, tmp, pts)


def _model_lines_only(tmp, b):
    (tmp / "lines.vtk").write_text(
        "# vtk DataFile Version 3.0\nlines\nASCII\nDATASET POLYDATA\nPOINTS 3 float\n0 0 0 10 0 0 0 10 0\nLINES 1 4\n3 0 1 2\n"
    )
    return tmp / "lines.vtk"


def _model_metres(tmp, b):
    return model_variant(b, tmp, b.file_pts / 1000.0)


def _model_metres_inside(tmp, b):
    c = b.file_pts.mean(0)
    return model_variant(b, tmp, c + (b.file_pts - c) / 1000.0)


def _model_ras_as_lps(tmp, b):
    # RAS coordinates written without a SPACE header: read as LPS, as Slicer does.
    return model_variant(b, tmp, b.ras_pts, header=b"exported by a CAD tool")


def _model_moved(offset_ras):
    return lambda tmp, b: model_variant(b, tmp, b.file_pts + np.asarray(offset_ras) * LPS)


def _model_with_hole(tmp, b):
    centre = _patch_centre(b) * LPS
    tri_centres = b.file_pts[b.faces].mean(axis=1)
    keep = np.linalg.norm(tri_centres - centre, axis=1) > 2.5
    return model_variant(b, tmp, faces=b.faces[keep])


def _model_fin(tmp, b):
    a, c = b.faces[0][:2]
    tip = 0.5 * (b.file_pts[a] + b.file_pts[c]) + np.array([0.0, 0.0, 1.5])
    pts = np.vstack([b.file_pts, tip])
    return model_variant(b, tmp, pts, np.vstack([b.faces, [[a, c, len(b.file_pts)]]]))


def _model_degenerate(tmp, b):
    n = len(b.file_pts)
    f = b.faces
    # Repeated corners, and new collinear points (exact in float32) that make zero-area triangles.
    collinear = np.array([[100.0 + 0.5 * k, 20.0, -50.0] for k in range(30)])
    pts = np.vstack([b.file_pts, collinear])
    extra = [[f[i, 0], f[i, 0], f[i, 1]] for i in range(0, 3000, 30)] + [[n + i, n + i + 1, n + i + 2] for i in range(0, 27, 3)]
    return model_variant(b, tmp, pts, np.vstack([f, extra]))


def _model_duplicates(tmp, b):
    f = b.faces
    return model_variant(b, tmp, faces=np.vstack([f, f[::40], f[5::40, ::-1]]))


def _model_inverted(tmp, b):
    return model_variant(b, tmp, faces=b.faces[:, ::-1])


def _model_triangle_strips(tmp, b):
    """The stem as triangle strips in a legacy VTK file (LPS, as there is no SPACE header)."""
    from ImplantBoneContactLib.mesh import polydata_from_arrays

    stripper = vtk.vtkStripper()
    stripper.SetInputData(polydata_from_arrays(b.file_pts, b.faces))
    stripper.Update()
    assert stripper.GetOutput().GetNumberOfStrips() > 0
    writer = vtk.vtkPolyDataWriter()
    writer.SetInputData(stripper.GetOutput())
    writer.SetFileTypeToBinary()
    writer.SetFileName(str(tmp / "strips.vtk"))
    writer.Write()
    return tmp / "strips.vtk"


def _model_two_parts(tmp, b):
    # A loose 3 mm bead 25 mm lateral of the stem, inside the CT.
    bead, bead_faces = sphere_arrays(3.0, _patch_centre(b) - 25.0 * b.result.frame.medial, resolution=16)
    pts = np.vstack([b.file_pts, bead * LPS])
    return model_variant(b, tmp, pts, np.vstack([b.faces, bead_faces + len(b.file_pts)]))


def _hu_unchanged_where_vertices_kept(result, b):
    """Offset 0: HU depends on the vertex position only, so kept vertices keep their HU exactly."""
    ref = b.result.vertices.set_index(["x_mm", "y_mm", "z_mm"])["hu"]
    got = result.vertices.set_index(["x_mm", "y_mm", "z_mm"])["hu"]
    common = got.index.intersection(ref.index)
    assert len(common) >= 0.98 * len(ref)
    np.testing.assert_array_equal(got.loc[common].to_numpy(), ref.loc[common].to_numpy())


def _check_two_parts(result, b):
    _hu_unchanged_where_vertices_kept(result, b)
    assert len(result.vertices) == len(b.result.vertices) + len(sphere_arrays(3.0, resolution=16)[0])


# ----- transform cases


def _bspline(tmp, b):
    tx = sitk.BSplineTransformInitializer(sitk.Image([16, 16, 16], sitk.sitkFloat32), [3, 3, 3])
    sitk.WriteTransform(tx, str(tmp / "bspline.tfm"))
    return tmp / "bspline.tfm"


def _displacement(tmp, b):
    tx = sitk.DisplacementFieldTransform(sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3))
    sitk.WriteTransform(tx, str(tmp / "field.h5"))
    return tmp / "field.h5"


def _transform_text(text: str):
    def make(tmp, b):
        (tmp / "t.txt").write_text(text)
        return tmp / "t.txt"

    return make


# ----- parameter cases


def _resection_below_tip(tmp, b):
    f = b.result.frame
    point, normal = f.tip + 20.0 * f.axis, -f.axis
    return Inputs(
        ct=b.ct,
        model=b.model,
        params={"resection_point": tuple(point), "resection_normal": tuple(normal)},
        cli=[f"--resection-plane={','.join(map(str, point))}:{','.join(map(str, normal))}"],
    )


def _resection_along_axis(tmp, b):
    f = b.result.frame
    point, normal = f.tip - 60.0 * f.axis, f.medial
    return Inputs(
        ct=b.ct,
        model=b.model,
        params={"resection_point": tuple(point), "resection_normal": tuple(normal)},
        cli=[f"--resection-plane={','.join(map(str, point))}:{','.join(map(str, normal))}"],
    )


def _classes(spec: str):
    return lambda tmp, b: Inputs(ct=b.ct, model=b.model, params={"classes": spec}, cli=["--classes", spec])


CASES = [
    # CT files
    Case("ct_missing", with_ct(lambda t, b: t / "absent.nrrd"), ("ct not found",)),
    Case("ct_empty_file", with_ct(lambda t, b: (t / "ct.nrrd").write_bytes(b"") or t / "ct.nrrd"), ("empty", "0 bytes")),
    Case("ct_truncated_nrrd", with_ct(lambda t, b: cut_file(b.ct, t / "ct.nrrd")), ("cannot read the ct", "truncated")),
    Case("ct_truncated_nifti", with_ct(lambda t, b: _nifti(t, b, ".nii")), ("truncated", "header announces")),
    Case("ct_truncated_nifti_gz", with_ct(lambda t, b: _nifti(t, b, ".nii.gz")), ("truncated", "compressed data ends early")),
    Case("ct_binary_garbage", with_ct(lambda t, b: garbage(t / "ct.nrrd")), ("cannot read the ct",)),
    Case("ct_garbage_named_nifti_gz", with_ct(lambda t, b: garbage(t / "ct.nii.gz")), ("cannot read the ct",)),
    Case("ct_2d_image", with_ct(_ct_2d), ("2d image",)),
    Case("ct_single_slice", with_ct(_ct_single_slice), ("1 slice",)),
    Case("ct_rgb_volume", with_ct(_ct_rgb), ("3 components", "colour")),
    Case("ct_rgb_photo_png", with_ct(_ct_rgb_png), ("2d image",)),
    Case("ct_all_nan", with_ct(_ct_all_nan), ("every voxel", "nan")),
    Case("ct_nan_where_model_lies", with_ct(_ct_nan_around_model), ("no vertex got a finite hu",)),
    Case("ct_nan_patch", with_ct(_ct_patch(np.nan)), ("nan or infinite",), "warning", _check_patch),
    Case("ct_infinite_patch", with_ct(_ct_patch(np.inf)), ("nan or infinite",), "warning", _check_patch),
    Case("ct_raw_values_no_rescale", with_ct(_ct_raw_unrescaled), ("raw stored values", "rescale"), "warning", _check_raw),
    Case("ct_folder_without_dicom", with_ct(_folder_without_dicom), ("no dicom series",)),
    Case("dicom_two_series", with_ct(_dicom_two_series), ("2 dicom series", "--series-uid"), needs_shared_data=True),
    Case("dicom_missing_slice", with_ct(_dicom_missing_slice), ("gap", "1 slice(s) missing"), needs_shared_data=True),
    Case("dicom_damaged_slice", with_ct(_dicom_damaged_slice), ("slice(s) missing",), needs_shared_data=True),
    Case("dicom_single_file", with_ct(_dicom_single_file), ("1 slice",), needs_shared_data=True),
    # mesh files
    Case("model_missing", with_model(lambda t, b: t / "absent.stl"), ("model not found",)),
    Case("model_empty_file", with_model(lambda t, b: (t / "m.stl").write_bytes(b"") or t / "m.stl"), ("empty", "0 bytes")),
    Case("model_truncated_binary_stl", with_model(lambda t, b: cut_file(b.model, t / "m.stl")), ("truncated", "40000 triangles")),
    Case("model_truncated_ascii_stl", with_model(_stl_ascii), ("truncated", "endsolid")),
    Case("model_binary_garbage_stl", with_model(lambda t, b: garbage(t / "m.stl")), ("not a valid stl",)),
    Case("model_binary_garbage_vtp", with_model(lambda t, b: garbage(t / "m.vtp")), ("cannot read the model", "vtp")),
    Case("model_unsupported_type", with_model(lambda t, b: shutil.copy(b.model, t / "m.txt") and t / "m.txt"), ("unsupported model file type",)),
    Case("model_nan_coordinates", with_model(_model_nan), ("nan or infinite coordinates",)),
    Case("model_lines_no_surface", with_model(_model_lines_only), ("no surface cells",)),
    Case("model_in_metres", with_model(_model_metres), ("metres",)),
    Case("model_in_metres_inside_ct", with_model(_model_metres_inside), ("only", "metres")),
    Case("model_ras_read_as_lps", with_model(_model_ras_as_lps), ("does not overlap", "ras read as lps", "--model-space")),
    Case("model_fully_outside", with_model(_model_moved([0, 0, 400])), ("does not overlap", "registration")),
    Case("model_partly_outside_ct", with_ct(_ct_cropped), ("lie outside the ct", "inside_ct = false"), "warning", _check_cropped),
    Case("model_open_surface", with_model(_model_with_hole), ("open", "boundary edges"), "warning", _hu_unchanged_where_vertices_kept),
    Case("model_non_manifold_edge", with_model(_model_fin), ("non-manifold",), "warning", _hu_unchanged_where_vertices_kept),
    Case("model_disconnected_parts", with_model(_model_two_parts), ("2 disconnected parts",), "warning", _check_two_parts),
    Case("model_degenerate_triangles", with_model(_model_degenerate), outcome="same"),
    Case("model_duplicate_triangles", with_model(_model_duplicates), outcome="same"),
    Case("model_inverted_normals", with_model(_model_inverted), outcome="same"),
    Case("model_triangle_strips_vtk", with_model(_model_triangle_strips), outcome="same"),
    # transforms
    Case("transform_missing", with_transform(lambda t, b: t / "absent.txt"), ("transform file not found",)),
    Case("transform_identity_text", with_transform(lambda t, b: write_matrix(t / "t.txt", np.eye(4))), outcome="same"),
    Case("transform_singular", with_transform(lambda t, b: write_matrix(t / "t.txt", np.diag([1, 1, 0, 1]))), ("singular",)),
    Case("transform_non_rigid_scale", with_transform(lambda t, b: write_matrix(t / "t.txt", np.diag([1, 1, 1.5, 1]))), ("not rigid",)),
    Case("transform_shear", with_transform(lambda t, b: write_matrix(t / "t.txt", [[1, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), ("not rigid",)),
    Case("transform_mirror", with_transform(lambda t, b: write_matrix(t / "t.txt", np.diag([-1, 1, 1, 1]))), ("mirrors",)),
    Case("transform_nan", with_transform(lambda t, b: write_matrix(t / "t.txt", np.full((4, 4), np.nan))), ("not a finite 4x4",)),
    Case("transform_3x3_matrix", with_transform(lambda t, b: write_matrix(t / "t.txt", np.eye(3))), ("4x4",)),
    Case("transform_text_garbage", with_transform(_transform_text("rotate a bit to the left\nthen up\n")), ("cannot read", "4x4")),
    Case("transform_bspline_itk", with_transform(_bspline), ("bsplinetransform", "not a linear transform")),
    Case("transform_displacement_field", with_transform(_displacement), ("displacementfieldtransform", "not a linear transform")),
    # parameters
    Case("classes_overlap", _classes("soft:-inf:200,bone:150:inf"), ("overlap",)),
    Case("classes_reversed_band", _classes("soft:-inf:200,bone:900:700"), ("empty or reversed",)),
    Case("resection_removes_everything", _resection_below_tip, ("leaves no part of the stem",)),
    Case("resection_along_axis", _resection_along_axis, ("tilted", "60 degrees")),
]
CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


def _build(case: Case, tmp_path: Path, base: Baseline) -> Inputs:
    if case.needs_shared_data:
        _dicom_files()
    return case.make(tmp_path, base)


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name))


def _comparable(vertices: pd.DataFrame) -> pd.DataFrame:
    return vertices.drop(columns=["vertex_id"]).sort_values(["x_mm", "y_mm", "z_mm"]).reset_index(drop=True)


def _assert_same_result(result, base: Baseline) -> None:
    pd.testing.assert_frame_equal(_comparable(result.vertices), _comparable(base.result.vertices), rtol=1e-9, atol=1e-9)
    pd.testing.assert_frame_equal(result.zones, base.result.zones, rtol=1e-9, atol=1e-9)
    assert result.warnings == base.result.warnings


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_library_behaviour(case: Case, tmp_path: Path, base: Baseline) -> None:
    inputs = _build(case, tmp_path, base)
    params = AnalysisParameters(remesh="none", **inputs.params)
    if case.outcome == "error":
        with pytest.raises(InputError) as info:
            analyze_files(inputs.ct, inputs.model, params, transform=inputs.transform)
        message = str(info.value)
        assert "\n" not in message
        for word in case.words:
            assert word in message.lower(), f"{word!r} not in {message!r}"
        return
    result = analyze_files(inputs.ct, inputs.model, params, transform=inputs.transform)
    if case.outcome == "same":
        _assert_same_result(result, base)
        return
    new = [w for w in result.warnings if w not in base.result.warnings]
    assert any(all(word in w.lower() for word in case.words) for w in new), new
    if case.check is not None:
        case.check(result, base)


def _run_cli(inputs: Inputs, out: Path, *extra: str) -> int:
    argv = ["analyze", "--ct", str(inputs.ct), "--model", str(inputs.model), "--out", str(out)]
    if inputs.transform is not None:
        argv += ["--transform", str(inputs.transform)]
    return main([*argv, "--remesh", "none", "--quiet", "--no-pictures", *inputs.cli, *extra])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_command_line_behaviour(case: Case, tmp_path: Path, base: Baseline, capfd) -> None:
    inputs = _build(case, tmp_path, base)
    out = tmp_path / "results"
    capfd.readouterr()
    rc = _run_cli(inputs, out)
    captured = capfd.readouterr()  # file-descriptor level: C++ library output would show here too
    lines = captured.err.strip().splitlines()
    assert _hidden_leftovers(tmp_path) == []
    if case.outcome == "error":
        assert rc == 2
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("implant-bone-contact: error: ")
        for word in case.words:
            assert word in lines[0].lower()
        assert captured.out == ""
        assert not out.exists()
        return
    assert rc == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert all(line.startswith("warning: ") for line in lines), captured.err
    if case.outcome == "warning":
        assert any(all(word in line.lower() for word in case.words) for line in lines), captured.err
    else:
        assert len(lines) == len(base.result.warnings)
    zones = pd.read_csv(out / "zones.csv")
    assert len(zones) == 15 and list(zones["zone"].astype(str))[-1] == "all"


# --------------------------------------------------------------------------- companions


def test_ras_model_analysed_right_once_its_space_is_given(tmp_path: Path, base: Baseline) -> None:
    model = _model_ras_as_lps(tmp_path, base)
    result = analyze_files(base.ct, model, AnalysisParameters(remesh="none", model_space="RAS"))
    _assert_same_result(result, base)


def test_two_series_folder_reads_the_chosen_series(tmp_path: Path) -> None:
    files = _dicom_files()
    folder = _dicom_two_series(tmp_path, None)
    original = read_volume(files[0].parent)
    import pydicom

    copy_uid = str(pydicom.dcmread(next(folder.glob("copy_*")), stop_before_pixels=True).SeriesInstanceUID)
    chosen = read_volume(folder, series_uid=copy_uid)
    np.testing.assert_array_equal(chosen.array, original.array)
    np.testing.assert_allclose(chosen.ijk_to_ras, original.ijk_to_ras)


def test_rigid_itk_transform_file_is_accepted(tmp_path: Path, base: Baseline) -> None:
    """An Euler3D .tfm (what a rigid registration saves) moves the model like the same 4x4 text matrix."""
    tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, 0.0, (0.0, 0.0, 0.0))
    tx.SetTranslation((2.0, -1.0, 3.0))  # ITK resampling direction, LPS
    sitk.WriteTransform(tx, str(tmp_path / "rigid.tfm"))
    moving_ras = np.eye(4)
    moving_ras[:3, 3] = -np.array([2.0, -1.0, 3.0]) * LPS
    write_matrix(tmp_path / "rigid.txt", moving_ras)
    a = analyze_files(base.ct, base.model, AnalysisParameters(remesh="none"), transform=tmp_path / "rigid.tfm")
    b = analyze_files(base.ct, base.model, AnalysisParameters(remesh="none"), transform=tmp_path / "rigid.txt")
    pd.testing.assert_frame_equal(a.vertices, b.vertices, rtol=1e-12, atol=1e-9)
    shifted = base.ras_pts[0] + moving_ras[:3, 3]
    assert np.min(np.linalg.norm(a.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy() - shifted, axis=1)) < 1e-4


# --------------------------------------------------------------------------- output folder faults


def _fsync_fails_on_call(monkeypatch, n: int, err: int = errno.ENOSPC) -> None:
    """The n-th fsync in export raises: the disk filled up after some files were written."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] >= n:
            raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(export_module.os, "fsync", fsync)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _make_read_only(folder: Path) -> bool:
    """chmod the folder read-only; as root also make it immutable. False if it stays writable."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(folder, os.W_OK):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    return not os.access(folder, os.W_OK)


def _undo_read_only(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(stat.S_IRWXU)


@dataclass(frozen=True)
class OutputCase:
    id: str
    words: tuple[str, ...]
    existing: bool = False  # an earlier result is in --out
    overwrite: bool = False
    fault: Callable | None = None  # fault(monkeypatch, tmp_path) before the run
    out_name: str = "results"


def _out_is_file(monkeypatch, tmp):
    (tmp / "results").write_text("a file, not a folder\n")


def _permission_denied(monkeypatch, tmp):
    def mkdtemp(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(export_module.tempfile, "mkdtemp", mkdtemp)


def _vtk_writer_fails(monkeypatch, tmp):
    def write_polydata(*a, **k):
        raise OSError("VTK could not write surface.vtp")

    monkeypatch.setattr(export_module, "write_polydata", write_polydata)


OUTPUT_CASES = [
    OutputCase("out_exists_without_overwrite", ("already holds results", "--overwrite"), existing=True),
    OutputCase("out_is_a_file", ("is a file",), fault=_out_is_file),
    OutputCase("out_permission_denied", ("permission denied",), fault=_permission_denied),
    OutputCase("out_disk_full_mid_write", ("no space left",), fault=lambda mp, t: _fsync_fails_on_call(mp, 2)),
    OutputCase("out_disk_full_while_replacing", ("no space left",), existing=True, overwrite=True, fault=lambda mp, t: _fsync_fails_on_call(mp, 3)),
    OutputCase("out_io_error_mid_write", ("input/output error",), fault=lambda mp, t: _fsync_fails_on_call(mp, 1, errno.EIO)),
    OutputCase("out_mesh_writer_fails", ("vtk could not write",), existing=True, overwrite=True, fault=_vtk_writer_fails),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[c.id for c in OUTPUT_CASES])
def test_output_faults(case: OutputCase, tmp_path: Path, base: Baseline, monkeypatch, capfd) -> None:
    out = tmp_path / case.out_name
    before = None
    if case.existing:
        save_result(base.result, out, pictures=False)
        before = _snapshot(out)
    if case.fault is not None:
        case.fault(monkeypatch, tmp_path)
    # Library
    with pytest.raises(OutputError) as info:
        save_result(base.result, out, overwrite=case.overwrite, pictures=False)
    assert all(w in str(info.value).lower() for w in case.words), str(info.value)
    # Command line, same fault
    capfd.readouterr()
    rc = _run_cli(Inputs(base.ct, base.model), out, *(["--overwrite"] if case.overwrite else []))
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("implant-bone-contact: error: ")
    assert all(w in err[0].lower() for w in case.words), err
    # Nothing lost, nothing half-written.
    assert _hidden_leftovers(tmp_path) == []
    if before is not None:
        assert _snapshot(out) == before
    elif out.is_dir():
        pytest.fail(f"a partial result folder was left: {list(out.iterdir())}")


def test_read_only_parent_folder(tmp_path: Path, base: Baseline, capfd) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    if not _make_read_only(parent):
        _undo_read_only(parent)
        pytest.skip("cannot make a read-only folder here (root without chattr)")
    try:
        with pytest.raises(OutputError, match="permission denied"):
            save_result(base.result, parent / "results", pictures=False)
        capfd.readouterr()
        rc = _run_cli(Inputs(base.ct, base.model), parent / "results")
        err = capfd.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "permission denied" in err[0]
        assert list(parent.iterdir()) == []
    finally:
        _undo_read_only(parent)


def test_existing_empty_folder_is_used(tmp_path: Path, base: Baseline) -> None:
    out = tmp_path / "results"
    out.mkdir()
    save_result(base.result, out, pictures=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert _hidden_leftovers(tmp_path) == []


def test_overwrite_replaces_whole_result(tmp_path: Path, base: Baseline) -> None:
    out = tmp_path / "results"
    save_result(base.result, out, pictures=False)
    (out / "stale_from_an_older_version.csv").write_text("x\n1\n")
    save_result(base.result, out, overwrite=True, pictures=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert _hidden_leftovers(tmp_path) == []
