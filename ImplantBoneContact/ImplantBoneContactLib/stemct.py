"""Synthetic post-operative CTs of a stem surface at a known pose, for registration tests and benchmarks.

The stem (any closed surface) is voxelised at its pose (voxel centres inside
the surface are metal), bone is put around it, the metal blooms into its
surroundings, and the whole is blurred by a Gaussian point spread and given
noise, as a clinical CT shows an implant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vtkmodules.util import numpy_support as ns

from . import vtkclasses as vtk
from .mesh import points, transform_polydata
from .volume import Volume


@dataclass
class StemCTSpec:
    """Settings of a synthetic post-operative CT.

    Attributes:
        voxel_mm: isotropic voxel size (mm).
        metal_hu: HU of the metal (before blur).
        bone_hu: HU of the bone within ``bone_mm`` of the stem; soft tissue (40 HU) beyond.
        bone_mm: thickness of the bone around the stem (mm).
        bloom_hu: metal bloom added to the surroundings (HU at the metal's edge, Gaussian 1.5 mm).
        blur_sigma_mm: Gaussian point spread of the scanner (mm).
        noise_hu: standard deviation of Gaussian noise (HU).
        margin_mm: CT margin around the stem (mm).
        cement_mm: thickness of a cement mantle (1800 HU) around the stem, 0 for none (mm).
        seed: noise seed.
    """

    voxel_mm: float = 0.7
    metal_hu: float = 3500.0
    bone_hu: float = 700.0
    bone_mm: float = 8.0
    bloom_hu: float = 600.0
    blur_sigma_mm: float = 0.7
    noise_hu: float = 20.0
    margin_mm: float = 20.0
    cement_mm: float = 0.0
    seed: int = 0


def voxelize(surface: vtk.vtkPolyData, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int]) -> np.ndarray:
    """Boolean ``(K, J, I)`` array: True where the voxel centre lies inside the closed surface (RAS mm)."""
    ijk_poly = transform_polydata(surface, np.linalg.inv(ijk_to_ras))
    stencil = vtk.vtkPolyDataToImageStencil()
    stencil.SetInputData(ijk_poly)
    stencil.SetOutputOrigin(0.0, 0.0, 0.0)
    stencil.SetOutputSpacing(1.0, 1.0, 1.0)
    nk, nj, ni = shape_kji
    stencil.SetOutputWholeExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    to_image = vtk.vtkImageStencilToImage()
    to_image.SetInputConnection(stencil.GetOutputPort())
    to_image.SetInsideValue(1)
    to_image.SetOutsideValue(0)
    to_image.SetOutputScalarTypeToUnsignedChar()
    to_image.Update()
    arr = ns.vtk_to_numpy(to_image.GetOutput().GetPointData().GetScalars())
    return arr.reshape(nk, nj, ni).astype(bool)


def stem_ct(
    surface: vtk.vtkPolyData,
    matrix_ras: np.ndarray | None = None,
    spec: StemCTSpec | None = None,
    extra_metal: list | None = None,
) -> Volume:
    """A post-operative CT of ``surface`` moved by ``matrix_ras`` (model -> CT, RAS).

    Args:
        surface: closed stem surface (RAS mm).
        matrix_ras: 4x4 pose of the stem in the CT (identity if ``None``).
        spec: CT settings.
        extra_metal: ``[(centre_ras, radius_mm), ...]`` metal balls added beside the stem (a modular head).

    Returns:
        An int16 :class:`Volume` (HU) on an axis-aligned grid around the stem.
    """
    import SimpleITK as sitk

    spec = spec or StemCTSpec()
    m = np.eye(4) if matrix_ras is None else np.asarray(matrix_ras, dtype=float)
    moved = transform_polydata(surface, m)
    pts = points(moved)
    lo = pts.min(0) - spec.margin_mm
    hi = pts.max(0) + spec.margin_mm
    for c, r in extra_metal or []:
        lo = np.minimum(lo, np.asarray(c) - r - spec.margin_mm)
        hi = np.maximum(hi, np.asarray(c) + r + spec.margin_mm)
    v = float(spec.voxel_mm)
    n = np.ceil((hi - lo) / v).astype(int) + 1
    geom = np.eye(4)
    geom[:3, :3] *= v
    geom[:3, 3] = lo
    shape = (int(n[2]), int(n[1]), int(n[0]))
    metal = voxelize(moved, geom, shape)
    for c, r in extra_metal or []:
        c_ijk = (np.asarray(c, dtype=float) - lo) / v
        lo_b = np.maximum(np.floor(c_ijk - r / v).astype(int), 0)
        hi_b = np.minimum(np.ceil(c_ijk + r / v).astype(int) + 1, [shape[2], shape[1], shape[0]])
        kk, jj, ii = np.meshgrid(*(np.arange(lo_b[d], hi_b[d]) for d in (2, 1, 0)), indexing="ij")
        ball = (ii - c_ijk[0]) ** 2 + (jj - c_ijk[1]) ** 2 + (kk - c_ijk[2]) ** 2 <= (r / v) ** 2
        metal[lo_b[2]:hi_b[2], lo_b[1]:hi_b[1], lo_b[0]:hi_b[0]] |= ball
    img = sitk.GetImageFromArray(metal.astype(np.uint8))
    img.SetSpacing((v, v, v))
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    hu = np.where(dist <= spec.bone_mm, np.float32(spec.bone_hu), np.float32(40.0)).astype(np.float32)
    if spec.cement_mm > 0:
        hu[(dist > 0) & (dist <= spec.cement_mm)] = 1800.0
    if spec.bloom_hu > 0:
        bloom = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(metal.astype(np.float32)), sigma=[1.5 / v] * 3))
        hu += np.float32(2.0 * spec.bloom_hu) * bloom
    hu[metal] = spec.metal_hu
    if spec.blur_sigma_mm > 0:
        hu = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(hu), sigma=[spec.blur_sigma_mm / v] * 3))
    if spec.noise_hu > 0:
        hu = hu + np.random.default_rng(spec.seed).normal(0.0, spec.noise_hu, hu.shape).astype(np.float32)
    array = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Volume(array=array, ijk_to_ras=geom, source="synthetic post-operative CT")


def random_rigid(rng: np.random.Generator, centre: np.ndarray, long_axis: np.ndarray, max_shift_mm: float = 30.0,
                 max_tilt_deg: float = 30.0) -> np.ndarray:
    """A random rigid move of a stem about ``centre``: any turn about its long axis, up to
    ``max_tilt_deg`` about the two others, a shift up to ``max_shift_mm`` (RAS mm)."""
    from .register import _rodrigues

    axis = np.asarray(long_axis, dtype=float)
    axis /= np.linalg.norm(axis)
    spin = _rodrigues(axis * np.radians(rng.uniform(0.0, 360.0)))
    perp = np.cross(axis, rng.normal(size=3))
    perp /= np.linalg.norm(perp)
    tilt = _rodrigues(perp * np.radians(rng.uniform(-max_tilt_deg, max_tilt_deg)))
    r = tilt @ spin
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.0, max_shift_mm) / np.linalg.norm(shift)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + shift
    return m
