"""A deterministic proximal-femur CT phantom with a femoral stem, and its ground truth.

The phantom is defined analytically in a local frame (mm): ``z`` up along the
femoral canal (proximal), ``x`` medial, ``y`` anterior, origin on the canal
axis at the neck cut (resection level). A rigid placement (a small tilt and a
shift, mirrored for a right femur) takes it into patient RAS.

Tissues (HU before blur):

=========== ===================================================================
air         -1000, outside the thigh
soft tissue 40, a soft-tissue cylinder of radius 65 mm around the bone
cortical    1500 proximally rising to 1800 distally; an elliptic shell whose
            outer size narrows distally (24 x 19 mm half-axes at the cut,
            14.5 x 14.5 mm at 120 mm below) while its thickness grows from
            1.5 mm to 6.5 mm, as from metaphysis to diaphysis
cancellous  400 HU at the cut falling to 200 HU at 60 mm below; fills the canal
            down to 65 mm below the cut
marrow      30, the diaphyseal canal below that
=========== ===================================================================

The stem (a tapered body with a rounded-rectangle section, a rounded tip,
a neck at 135 degrees and a head) sits in the canal: its distal third fills
the narrow diaphysis (cortical contact), its proximal-lateral shoulder
touches the thin metaphyseal cortex, the calcar side and the middle sit in
cancellous bone and marrow. The truth at any point, on the surface or at any
offset from it, is the tissue of the analytic model at that point.

The CT is the tissue HU at each voxel centre, blurred by a Gaussian point
spread function (default sigma 0.6 mm, like a clinical scanner), with
optional noise. With ``metal=True`` the stem voxels are 3500 HU and bloom
into the surrounding bone, as in a post-operative CT.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support as ns

from . import vtkclasses as vtk
from .frame import StemFrame
from .mesh import points, polydata_from_arrays, prepare_surface, signed_volume, triangles, write_polydata
from .volume import Volume, write_volume

AIR, SOFT_TISSUE, MARROW, CANCELLOUS, CORTICAL = 0, 1, 2, 3, 4
TISSUE_NAMES = {AIR: "air", SOFT_TISSUE: "soft_tissue", MARROW: "marrow", CANCELLOUS: "cancellous", CORTICAL: "cortical"}

# Femur geometry (local frame, mm).
_BONE_TOP_Z = 0.0
_DIAPHYSIS_DEPTH = 120.0
_CANCELLOUS_BOTTOM_Z = -65.0
_SOFT_TISSUE_RADIUS = 65.0

# Stem geometry (local frame, mm).
_TIP_Z = -130.0
_SHOULDER_Z = 12.0
_TIP_CAP = 12.0
_NECK_START = np.array([2.0, 0.0, 1.0])
_NECK_DIR = np.array([np.sin(np.radians(45.0)), 0.0, np.cos(np.radians(45.0))])
_NECK_LENGTH = 38.0
_NECK_RADIUS = 7.0
_HEAD_RADIUS = 14.0


@dataclass
class PhantomSpec:
    """Settings of the phantom.

    Attributes:
        voxel_mm: isotropic voxel size (mm).
        side: ``"left"`` or ``"right"`` femur.
        metal: put metal (3500 HU, blooming) in the stem voxels: a post-operative CT.
        blur_sigma_mm: Gaussian point spread of the scanner (mm).
        noise_hu: standard deviation of added Gaussian noise (HU); 0 for none.
        tilt_deg: rotation of the femur about the patient's A axis then R axis (degrees).
        oblique_ct: give the CT grid a rotated direction matrix (degrees about S), to
            exercise geometry handling; 0 keeps it axis-aligned.
        seed: random seed for the noise.
        metal_hu: HU of the stem voxels with ``metal`` (before blur).
        bloom_hu: with ``metal``, extra HU added around the stem (the metal's bloom beyond the scanner's
            blur): this times the stem mask smoothed by a Gaussian of ``bloom_sigma_mm``; 0 for none.
        bloom_sigma_mm: reach of that bloom (mm).
    """

    voxel_mm: float = 0.7
    side: str = "left"
    metal: bool = False
    blur_sigma_mm: float = 0.6
    noise_hu: float = 0.0
    tilt_deg: tuple[float, float] = (6.0, 4.0)
    oblique_ct: float = 0.0
    seed: int = 0
    metal_hu: float = 3500.0
    bloom_hu: float = 1200.0
    bloom_sigma_mm: float = 1.5


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class FemurPhantom:
    """The phantom: CT, stem surface, true frame and true tissue anywhere."""

    def __init__(self, spec: PhantomSpec | None = None) -> None:
        self.spec = spec or PhantomSpec()
        if self.spec.side not in ("left", "right"):
            raise ValueError("side must be left or right")
        # Local -> RAS: a left femur has medial = +R; a right one is its mirror.
        rot = _rot("y", self.spec.tilt_deg[0]) @ _rot("x", self.spec.tilt_deg[1])
        mirror = np.diag([1.0, 1.0, 1.0]) if self.spec.side == "left" else np.diag([-1.0, 1.0, 1.0])
        self.local_to_ras = np.eye(4)
        self.local_to_ras[:3, :3] = mirror @ rot
        # A left femur lies on the patient's left (RAS x < 0), its medial side toward +x.
        self.local_to_ras[:3, 3] = mirror @ np.array([-80.0, 20.0, -60.0])
        self.ras_to_local = np.linalg.inv(self.local_to_ras)

    # ----- geometry in the local frame -----
    @staticmethod
    def _bone_profile(z: np.ndarray):
        s = np.clip(-z / _DIAPHYSIS_DEPTH, 0.0, 1.0)
        a_out = 24.0 - 9.5 * s
        b_out = 19.0 - 4.5 * s
        t = 1.5 + 5.0 * s
        return a_out, b_out, a_out - t, b_out - t, s

    def _tissue_local(self, p: np.ndarray) -> np.ndarray:
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        a_out, b_out, a_in, b_in, _ = self._bone_profile(z)
        in_bone_range = z <= _BONE_TOP_Z
        outer = (x / a_out) ** 2 + (y / b_out) ** 2 <= 1.0
        inner = (x / a_in) ** 2 + (y / b_in) ** 2 <= 1.0
        label = np.full(x.shape, AIR, dtype=np.int8)
        label[x * x + y * y <= _SOFT_TISSUE_RADIUS**2] = SOFT_TISSUE
        bone = in_bone_range & outer
        label[bone & ~inner] = CORTICAL
        canal = bone & inner
        label[canal & (z > _CANCELLOUS_BOTTOM_Z)] = CANCELLOUS
        label[canal & (z <= _CANCELLOUS_BOTTOM_Z)] = MARROW
        return label

    def _hu_local(self, p: np.ndarray) -> np.ndarray:
        label = self._tissue_local(p)
        z = p[..., 2]
        _, _, _, _, s = self._bone_profile(z)
        hu = np.empty(label.shape, dtype=np.float32)
        hu[label == AIR] = -1000.0
        hu[label == SOFT_TISSUE] = 40.0
        hu[label == MARROW] = 30.0
        canc = label == CANCELLOUS
        hu[canc] = 400.0 - 200.0 * np.clip(-z[canc] / 60.0, 0.0, 1.0)
        cort = label == CORTICAL
        hu[cort] = 1500.0 + 300.0 * s[cort]
        return hu

    @staticmethod
    def stem_function_local(p: np.ndarray) -> np.ndarray:
        """Implicit function of the stem (about mm from the surface; negative inside)."""
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        u = np.clip((z - _TIP_Z) / (_SHOULDER_Z - _TIP_Z), 0.0, 1.0)
        half_w = 10.6 + 6.2 * u  # medial-lateral half width
        half_d = 10.0 + 1.5 * u  # anterior-posterior half depth
        centre_x = -5.5 * np.clip((z + 60.0) / 60.0, 0.0, 1.0)  # proximal body leans lateral
        cap = np.clip((_TIP_Z + _TIP_CAP - z) / _TIP_CAP, 0.0, 1.0)
        shrink = np.sqrt(np.clip(1.0 - cap**2, 1e-4, 1.0))
        w = half_w * shrink
        d = half_d * shrink
        r = (np.abs((x - centre_x) / w) ** 4 + np.abs(y / d) ** 4) ** 0.25
        f_body = (r - 1.0) * np.minimum(w, d)
        f_body = np.maximum(f_body, z - _SHOULDER_Z)
        f_body = np.maximum(f_body, _TIP_Z - z)
        rel = p - _NECK_START
        t = np.clip(rel @ _NECK_DIR, 0.0, _NECK_LENGTH)
        closest = _NECK_START + t[..., None] * _NECK_DIR
        f_neck = np.linalg.norm(p - closest, axis=-1) - _NECK_RADIUS
        head_c = _NECK_START + _NECK_LENGTH * _NECK_DIR
        f_head = np.linalg.norm(p - head_c, axis=-1) - _HEAD_RADIUS
        return np.minimum(np.minimum(f_body, f_neck), f_head)

    # ----- RAS API -----
    def _to_local(self, pts_ras: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts_ras, dtype=float)
        return pts @ self.ras_to_local[:3, :3].T + self.ras_to_local[:3, 3]

    def tissue_at(self, pts_ras: np.ndarray) -> np.ndarray:
        """True tissue label (AIR, SOFT_TISSUE, MARROW, CANCELLOUS, CORTICAL) at RAS points."""
        return self._tissue_local(self._to_local(pts_ras))

    def true_hu_at(self, pts_ras: np.ndarray) -> np.ndarray:
        """Tissue HU at RAS points, before blur and noise."""
        return self._hu_local(self._to_local(pts_ras)).astype(float)

    def distance_to_tissue_boundary(self, pts_ras: np.ndarray, radius_mm: float, n_dirs: int = 26) -> np.ndarray:
        """True where no other tissue lies within ``radius_mm`` (probed along 26 directions)."""
        local = self._to_local(pts_ras)
        base = self._tissue_local(local)
        dirs = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float)
        dirs /= np.linalg.norm(dirs, axis=1)[:, None]
        same = np.ones(base.shape, dtype=bool)
        for frac in (0.5, 1.0):
            for d in dirs:
                same &= self._tissue_local(local + frac * radius_mm * d) == base
        return same

    def true_frame(self, tip_length_mm: float = 10.0) -> StemFrame:
        """The frame the phantom was built in, as a :class:`StemFrame` in RAS."""
        r = self.local_to_ras[:3, :3]
        t = self.local_to_ras[:3, 3]
        axis = r @ np.array([0.0, 0.0, -1.0])
        medial = r @ np.array([1.0, 0.0, 0.0])
        anterior = r @ np.array([0.0, 1.0, 0.0])
        tip = r @ np.array([0.0, 0.0, _TIP_Z]) + t
        # The local x axis follows the canal axis, which is the stem axis here.
        return StemFrame(
            proximal_point=r @ np.array([0.0, 0.0, _SHOULDER_Z]) + t,
            axis=axis,
            medial=medial,
            anterior=anterior,
            tip=tip,
            resection_point=t.copy(),
            resection_normal=-axis,
            side=self.spec.side,
            tip_length_mm=tip_length_mm,
            provenance={"axis": "phantom truth", "medial": "phantom truth", "resection": "phantom truth"},
        )

    def make_stem_surface(self, spacing_mm: float = 0.5, target_triangles: int = 40000) -> vtk.vtkPolyData:
        """The stem surface in RAS: contour of the implicit stem, then decimated."""
        lo = np.array([-25.0, -16.0, _TIP_Z - 2.0])
        head_c = _NECK_START + _NECK_LENGTH * _NECK_DIR
        hi = np.array([head_c[0] + _HEAD_RADIUS + 2.0, 16.0, head_c[2] + _HEAD_RADIUS + 2.0])
        n = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
        zs = lo[2] + spacing_mm * np.arange(n[2])
        ys = lo[1] + spacing_mm * np.arange(n[1])
        xs = lo[0] + spacing_mm * np.arange(n[0])
        field = np.empty((n[2], n[1], n[0]), dtype=np.float32)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        for k, z in enumerate(zs):
            p = np.stack([gx, gy, np.full_like(gx, z)], axis=-1)
            field[k] = self.stem_function_local(p)
        image = vtk.vtkImageData()
        image.SetDimensions(int(n[0]), int(n[1]), int(n[2]))
        image.SetSpacing(spacing_mm, spacing_mm, spacing_mm)
        image.SetOrigin(*lo)
        arr = ns.numpy_to_vtk(field.ravel(), deep=True)
        arr.SetName("f")
        image.GetPointData().SetScalars(arr)
        contour = vtk.vtkFlyingEdges3D()
        contour.SetInputData(image)
        contour.SetValue(0, 0.0)
        contour.ComputeNormalsOff()
        contour.ComputeGradientsOff()
        contour.Update()
        surf = prepare_surface(contour.GetOutput(), "phantom stem")
        n_tri = surf.GetNumberOfPolys()
        if n_tri > target_triangles:
            dec = vtk.vtkQuadricDecimation()
            dec.SetInputData(surf)
            dec.SetTargetReduction(1.0 - target_triangles / n_tri)
            dec.VolumePreservationOn()
            dec.Update()
            surf = prepare_surface(dec.GetOutput(), "phantom stem")
        local_pts = points(surf)
        ras = local_pts @ self.local_to_ras[:3, :3].T + self.local_to_ras[:3, 3]
        faces = triangles(surf)
        # Outward triangle order, as a CAD export has it (the contour's order depends on the sign convention).
        if signed_volume(ras, faces) < 0:
            faces = faces[:, ::-1]
        return polydata_from_arrays(ras, faces)

    def ct_geometry(self) -> np.ndarray:
        """IJK-to-RAS matrix of the phantom CT: covers the thigh from above the head to below the tip."""
        v = self.spec.voxel_mm
        lo_local = np.array([-70.0, -70.0, _TIP_Z - 40.0])
        hi_local = np.array([70.0, 70.0, 60.0])
        corners = np.array([[x, y, z] for x in (lo_local[0], hi_local[0]) for y in (lo_local[1], hi_local[1]) for z in (lo_local[2], hi_local[2])])
        ras = corners @ self.local_to_ras[:3, :3].T + self.local_to_ras[:3, 3]
        direction = _rot("z", self.spec.oblique_ct)
        # Bounds of the corners in the CT's own (possibly rotated) axes.
        in_ct = ras @ direction
        lo, hi = in_ct.min(0), in_ct.max(0)
        shape = np.ceil((hi - lo) / v).astype(int) + 1
        m = np.eye(4)
        m[:3, :3] = direction * v
        m[:3, 3] = direction @ lo
        self._ct_shape = (int(shape[2]), int(shape[1]), int(shape[0]))
        return m

    def make_ct(self) -> Volume:
        """The phantom CT (int16 HU) with its geometry."""
        import SimpleITK as sitk

        m = self.ct_geometry()
        nk, nj, ni = self._ct_shape
        hu = np.empty((nk, nj, ni), dtype=np.float32)
        metal = np.zeros((nk, nj, ni), dtype=np.float32) if self.spec.metal else None
        jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
        for k in range(nk):
            ijk = np.stack([ii, jj, np.full_like(ii, k)], axis=-1).astype(float)
            ras = ijk @ m[:3, :3].T + m[:3, 3]
            local = ras @ self.ras_to_local[:3, :3].T + self.ras_to_local[:3, 3]
            hu[k] = self._hu_local(local)
            if metal is not None:
                metal[k] = self.stem_function_local(local) <= 0
        v = self.spec.voxel_mm
        if metal is not None:
            bloom = sitk.GetArrayFromImage(
                sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(metal), sigma=[self.spec.bloom_sigma_mm / v] * 3)
            )
            hu = np.where(metal > 0, self.spec.metal_hu, hu + self.spec.bloom_hu * bloom).astype(np.float32)
        if self.spec.blur_sigma_mm > 0:
            hu = sitk.GetArrayFromImage(
                sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(hu), sigma=[self.spec.blur_sigma_mm / v] * 3)
            )
        if self.spec.noise_hu > 0:
            rng = np.random.default_rng(self.spec.seed)
            hu = hu + rng.normal(0.0, self.spec.noise_hu, hu.shape).astype(np.float32)
        array = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
        return Volume(array=array, ijk_to_ras=m, source="phantom", metadata={"phantom": asdict(self.spec)})

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``phantom_ct.nrrd``, ``phantom_stem.stl`` (LPS, as Slicer saves) and ``phantom_truth.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ct = self.make_ct()
        paths = {"ct": folder / "phantom_ct.nrrd", "model": folder / "phantom_stem.stl", "truth": folder / "phantom_truth.json"}
        write_volume(ct, paths["ct"])
        write_polydata(self.make_stem_surface(), paths["model"], space="LPS")
        truth = {"spec": asdict(self.spec), "frame": self.true_frame().to_dict(), "local_to_ras": self.local_to_ras.tolist(),
                 "tissues": TISSUE_NAMES}
        paths["truth"].write_text(json.dumps(truth, indent=2), encoding="utf-8")
        return paths


class ContactPhantom(FemurPhantom):
    """The femur phantom's stem in bone whose contact is plain: cortical on some sides, cancellous on the others.

    Around the stem (local frame, below the neck cut), within 4 mm of its surface: cortical bone where the
    direction from the canal axis lies within 90 degrees of ``contact_azimuth_deg`` (towards anterior-medial),
    cancellous bone elsewhere, with a 4 mm cortex beyond it; the same tissue fills the stem's own volume, as in
    a pre-operative CT where the stem is only planned. Soft tissue beyond. The layers are 4 mm of the stem's
    implicit function, which is a distance along the body: there the tissue just outside the stem is the
    same from its surface to 4 mm out, a truth that does not depend on the depth it is read at. On the
    rounded tip the function grows faster than the distance, so the layer under the tip is thinner along
    the normal (down to 1 mm; under 2 mm on about a tenth of the tip zones' area): a thin cortex on the
    metal with soft tissue beyond, the hard case of a post-operative CT.
    """

    contact_azimuth_deg = 40.0
    layer_mm = 4.0

    def _tissue_local(self, p: np.ndarray) -> np.ndarray:
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        label = np.full(x.shape, AIR, dtype=np.int8)
        label[x * x + y * y <= _SOFT_TISSUE_RADIUS**2] = SOFT_TISSUE
        f = self.stem_function_local(p)
        theta = np.arctan2(y, x + 3.0)
        contact = np.cos(theta - np.radians(self.contact_azimuth_deg)) > 0.0
        bone = z <= _BONE_TOP_Z
        near = bone & (f <= self.layer_mm)
        label[near & contact] = CORTICAL
        label[near & ~contact] = CANCELLOUS
        label[bone & (f > self.layer_mm) & (f <= 2 * self.layer_mm) & ~contact] = CORTICAL
        return label
