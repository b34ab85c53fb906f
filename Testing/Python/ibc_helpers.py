"""Helpers shared by the tests (importable as ``ibc_helpers``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``$IBC_SHARED_DATA``."""
    env = os.environ.get("IBC_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A real data file, or skip the test with the reason."""
    p = shared_data_dir() / name
    if not p.exists():
        pytest.skip(f"real test file {p} not found (set IBC_SHARED_DATA)")
    return p


def nail_axis_ras(volume, threshold_hu: float = 2000.0) -> tuple:
    """The stem axis of the nail in the real post-operative pelvis CT, proximal point first (RAS mm).

    The implant is a nail with a neck screw: the automatic axis follows the screw and is refused (tip
    superior), so tests give the axis down the nail: the mean of its metal voxels in the lowest 7 mm of
    metal, straight down from 15 mm below the metal's top to its bottom.
    """
    k, j, i = np.nonzero(volume.array > threshold_hu)
    ras = np.c_[i, j, k, np.ones_like(i)] @ volume.ijk_to_ras.T
    low = ras[:, 2] < ras[:, 2].min() + 7.0
    x, y = ras[low, 0].mean(), ras[low, 1].mean()
    return ((x, y, ras[:, 2].max() - 15.0), (x, y, ras[:, 2].min()))


def frame_parameters(frame) -> dict:
    """AnalysisParameters fields that pin the frame to a known one."""
    return frame.parameter_fields()


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about x, y or z by ``degrees``."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def scanned_stem_placement() -> np.ndarray:
    """4x4 matrix placing the scanned stem (CAD frame) as a left femoral stem in RAS.

    In its CAD file (read as LPS) the stem runs along +x from the head to the
    tip, the neck points to -y and the flat sides face +-z. The placement maps
    the tip direction to inferior, the neck to patient right (medial of a left
    femur) and z to anterior, then shifts it into the phantom's canal region.
    """
    m = np.eye(4)
    m[:3, :3] = np.column_stack([[0, 0, -1], [-1, 0, 0], [0, 1, 0]]).astype(float)
    m[:3, 3] = [80.0, 20.0, 60.0]
    return m


def scanned_stem_in_phantom(phantom) -> np.ndarray:
    """4x4 matrix placing the scanned stem in a phantom's femoral canal, tip 130 mm below the cut.

    Same orientation as :func:`scanned_stem_placement`, expressed in the phantom's
    local frame (x medial, y anterior, z up); the CAD body centre (y = -11.8,
    z = 17.8 mm) goes onto the canal axis.
    """
    local = np.eye(4)
    local[:3, :3] = np.column_stack([[0, 0, -1], [-1, 0, 0], [0, 1, 0]]).astype(float)
    local[:3, 3] = [-11.8, -17.8, -130.0]
    return phantom.local_to_ras @ local


# ------------------------------------------------------------------------------------------------
# Surfaces and the independent implementations the library is compared with
# ------------------------------------------------------------------------------------------------
def vtk_sphere(radius: float = 20.0, center=(0.0, 0.0, 0.0), resolution: int = 40, phi_resolution: int | None = None):
    """A closed, outward-wound triangulated sphere (``vtkSphereSource``), radius and centre in mm;
    ``resolution`` points round the equator, ``phi_resolution`` (default the same) from pole to pole."""
    import vtk

    src = vtk.vtkSphereSource()
    src.SetRadius(radius)
    src.SetCenter(*center)
    src.SetThetaResolution(resolution)
    src.SetPhiResolution(phi_resolution or resolution)
    src.Update()
    return src.GetOutput()


def sphere_arrays(radius: float = 20.0, center=(0.0, 0.0, 0.0), resolution: int = 40,
                  phi_resolution: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`vtk_sphere` as float points (mm) and an (n, 3) array of outward triangles."""
    from vtk.util import numpy_support as ns

    poly = vtk_sphere(radius, center, resolution, phi_resolution)
    pts = ns.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    return pts, ns.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64)


def surface_toolbox_remesh(poly, subdivide: int, clusters: int):
    """The calls of ``SurfaceToolboxLogic.remesh`` (Slicer/SlicerSurfaceToolbox) on a vtkPolyData:
    vtkTriangleFilter, ``pyacvd.Clustering``, ``subdivide`` (when > -1), ``cluster``, ``create_mesh``."""
    import warnings

    import pyacvd
    import pyvista as pv
    import vtk

    tri_filter = vtk.vtkTriangleFilter()
    tri_filter.SetInputData(poly)
    tri_filter.Update()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyacvd 0.3.1 uses a pyvista attribute newer pyvista deprecates
        clus = pyacvd.Clustering(pv.wrap(tri_filter.GetOutput()))
        if subdivide > -1:
            clus.subdivide(subdivide)
        clus.cluster(clusters)
        out = vtk.vtkPolyData()
        out.DeepCopy(clus.create_mesh())
    return out


def probe_in_ijk(volume, pts_ras: np.ndarray, dtype=None, array_name: str = "hu"):
    """Probe Volume With Model's core, in memory: the voxels on an image of spacing 1 and origin 0, the
    points moved into IJK by a ``vtkTransformFilter`` with the RAS-to-IJK matrix, ``vtkProbeFilter``.

    ``dtype``: the voxel type of the image (default: the CT's own; the CLI keeps it, so an int16 CT
    gives rounded values). Returns ``(values, valid, probed)``: the probed values (in that type), the
    ``vtkValidPointMask`` as booleans, and the probe's output polydata (points in IJK).
    """
    import vtk
    from vtk.util import numpy_support as ns

    arr = np.ascontiguousarray(volume.array, dtype=dtype if dtype is not None else volume.array.dtype)
    nk, nj, ni = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(ni, nj, nk)
    scalars = ns.numpy_to_vtk(arr.reshape(-1), deep=True, array_type=ns.get_vtk_array_type(arr.dtype))
    scalars.SetName(array_name)
    image.GetPointData().SetScalars(scalars)
    vpts = vtk.vtkPoints()
    vpts.SetData(ns.numpy_to_vtk(np.ascontiguousarray(pts_ras, dtype=float), deep=True))
    poly = vtk.vtkPolyData()
    poly.SetPoints(vpts)
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(np.asarray(volume.ras_to_ijk, dtype=float).ravel())
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    to_ijk = vtk.vtkTransformFilter()
    to_ijk.SetTransform(transform)
    to_ijk.SetInputData(poly)
    probe = vtk.vtkProbeFilter()
    probe.SetSourceData(image)
    probe.SetInputConnection(to_ijk.GetOutputPort())
    probe.Update()
    out = probe.GetOutput()
    values = ns.vtk_to_numpy(out.GetPointData().GetArray(array_name)).copy()
    valid = ns.vtk_to_numpy(out.GetPointData().GetArray("vtkValidPointMask")).astype(bool)
    return values, valid, out


def metal_surface_of(volume, threshold: float = 2000.0):
    """The implant's surface from a CT's own metal (RAS mm): voxels >= ``threshold`` HU, the largest
    connected part, iso-surface at ``threshold``.

    Where the implant leaves the scan at the inferior edge, three slices of metal are added below
    it so that the surface closes (the nail of the real post-operative CT does).
    """
    import SimpleITK as sitk
    import vtk
    from ImplantBoneContactLib.mesh import transform_polydata
    from vtk.util import numpy_support as ns

    arr = volume.array
    mask = sitk.GetImageFromArray((arr >= threshold).astype(np.uint8))
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(mask)))
    largest = labels == 1
    field = np.where(largest, arr, np.minimum(arr, threshold - 500)).astype(np.float32)
    pad = 3
    field = np.concatenate([np.repeat(np.where(largest[:1], 3000.0, -1000.0).astype(np.float32), pad, axis=0), field])
    nk, nj, ni = field.shape
    image = vtk.vtkImageData()
    image.SetDimensions(ni, nj, nk)
    image.SetOrigin(0, 0, -pad)
    image.GetPointData().SetScalars(ns.numpy_to_vtk(field.ravel(), deep=True))
    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputData(image)
    contour.SetValue(0, threshold)
    contour.Update()
    return transform_polydata(contour.GetOutput(), volume.ijk_to_ras)


def blurred_metal_plane_ct(metal: float = 3500.0, tissue: float = 0.0, sigma: float = 0.8, voxel: float = 0.5,
                           n_i: int = 30, n_jk: int = 16, plane: float = 0.0, x0: float = -4.5,
                           tissue_by_j=None):
    """A CT of metal for x < ``plane`` and tissue beyond (HU), read at voxel centres from the blurred step
    ``tissue + (metal - tissue) G(x - plane)``, G a Gaussian-blurred step of ``sigma`` mm (a sharp step at 0).

    ``voxel`` mm cubic voxels, ``n_i`` columns along x from ``x0`` mm, ``n_jk`` rows along y and z centred on 0;
    ``tissue_by_j``: a tissue HU per row along y instead of one."""
    from ImplantBoneContactLib.volume import Volume

    x = x0 + voxel * np.arange(n_i)
    if sigma > 0:
        share = np.array([0.5 * math.erfc((v - plane) / (sigma * math.sqrt(2.0))) for v in x])
    else:
        share = (x < plane) * 1.0
    t = np.full(n_jk, float(tissue)) if tissue_by_j is None else np.asarray(tissue_by_j, float)
    a = (t[None, :, None] + (metal - t)[None, :, None] * share[None, None, :]).repeat(n_jk, axis=0)
    m = np.diag([voxel, voxel, voxel, 1.0])
    m[:3, 3] = [x0, -0.5 * voxel * (n_jk - 1), -0.5 * voxel * (n_jk - 1)]
    return Volume(array=a.astype(np.float32), ijk_to_ras=m)


def plane_points(n: int = 10, x: float = 0.0, half: float = 2.5, y0: float = 0.0) -> tuple:
    """``n`` x ``n`` points on the plane at ``x`` mm (y from ``y0 - half`` to ``y0 + half``, z within ``half``)
    and their normals, all +x."""
    y, z = np.meshgrid(y0 + np.linspace(-half, half, n), np.linspace(-half, half, n), indexing="ij")
    pts = np.stack([np.full(y.size, x), y.ravel(), z.ravel()], axis=1)
    return pts, np.tile([1.0, 0.0, 0.0], (pts.shape[0], 1))


def vtk_contour_segments(pts: np.ndarray, faces: np.ndarray, t_pts: np.ndarray, values) -> tuple:
    """The segments (start points, end points; RAS mm) vtkContourFilter cuts from the triangle mesh
    ``pts``/``faces`` where the per-point scalar ``t_pts`` equals each of ``values``: the independent
    reference for the library's own plane cut."""
    from ImplantBoneContactLib.mesh import polydata_from_arrays
    from vtkmodules.util import numpy_support as ns
    from vtkmodules.vtkFiltersCore import vtkContourFilter

    poly = polydata_from_arrays(pts, faces)
    poly.GetPointData().SetScalars(ns.numpy_to_vtk(np.ascontiguousarray(t_pts), deep=True))
    contour = vtkContourFilter()
    contour.SetInputData(poly)
    contour.SetNumberOfContours(len(values))
    for i, v in enumerate(values):
        contour.SetValue(i, float(v))
    contour.Update()
    out = contour.GetOutput()
    cpts = ns.vtk_to_numpy(out.GetPoints().GetData()).astype(float)
    lines = out.GetLines()
    assert np.all(np.diff(ns.vtk_to_numpy(lines.GetOffsetsArray())) == 2)  # every line is one segment
    conn = ns.vtk_to_numpy(lines.GetConnectivityArray())
    return cpts[conn[0::2]], cpts[conn[1::2]]


def points_on_an_ellipsoid(n: int = 20) -> tuple:
    """``n`` points spread over an ellipsoid (semi-axes 20, 12, 9 mm; a Fibonacci lattice) and their outward normals."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    u = np.column_stack([np.sqrt(1.0 - z * z) * np.cos(phi), np.sqrt(1.0 - z * z) * np.sin(phi), z])
    axes = np.array([20.0, 12.0, 9.0])
    normals = u / axes
    return u * axes, normals / np.linalg.norm(normals, axis=1, keepdims=True)


def edges_repeated_on_an_ellipsoid(values, n: int = 20) -> tuple:
    """The ellipsoid's ``n`` points (:func:`points_on_an_ellipsoid`), once per value, each time with that value as
    the points' own metal edge (mm): ``(points, normals, own edges)`` for the rigid edge placement."""
    pts, nrm = points_on_an_ellipsoid(n)
    k = len(values)
    return np.tile(pts, (k, 1)), np.tile(nrm, (k, 1)), np.repeat(np.asarray(values, float), n)
