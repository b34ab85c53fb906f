"""CT volumes: reading from files and holding voxels with their geometry.

A :class:`Volume` is a voxel array in ``[k, j, i]`` order (slowest axis first,
as ``SimpleITK.GetArrayFromImage`` and Slicer's ``arrayFromVolume`` return it)
and a 4x4 IJK-to-RAS matrix that maps a voxel index ``(i, j, k, 1)`` to patient
RAS millimetres. The voxels keep their own type: an int16 CT stays int16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, native_stderr_silenced

#: Flip between LPS (DICOM, ITK, NIfTI via ITK) and RAS (Slicer) coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

VOLUME_FILE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


@dataclass
class Volume:
    """A scalar CT volume in Hounsfield units.

    Attributes:
        array: voxel values, shape ``(K, J, I)`` (slices, rows, columns), any
            real numeric type. HU after DICOM rescale.
        ijk_to_ras: 4x4 matrix mapping homogeneous voxel index ``(i, j, k, 1)``
            to RAS millimetres.
        source: where the volume came from (file path or a description).
        metadata: free-form facts gathered while reading (series UID, rescale).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    source: str = "<in-memory>"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float)
        validate_volume(self.array, self.ijk_to_ras)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along i, j, k in millimetres."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def ras_to_ijk(self) -> np.ndarray:
        """4x4 matrix mapping RAS millimetres to continuous voxel index."""
        return np.linalg.inv(self.ijk_to_ras)

    def bounds_ras(self) -> np.ndarray:
        """Axis-aligned RAS bounds of the voxel centres, ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` in mm."""
        ni, nj, nk = self.shape_ijk
        corners = np.array(
            [[i, j, k, 1.0] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)]
        )
        ras = corners @ self.ijk_to_ras.T
        return np.stack([ras[:, :3].min(axis=0), ras[:, :3].max(axis=0)])

    def nbytes(self) -> int:
        """Size of the voxel array in bytes."""
        return int(self.array.nbytes)


def validate_volume(array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    """Check that an array and matrix make a usable 3D scalar CT.

    Raises:
        InputError: for a 2D or vector image, a non-numeric type, a singular
            or non-affine matrix, or voxels that are all NaN.
    """
    if array.ndim != 3:
        if array.ndim == 4 and array.shape[-1] in (3, 4):
            raise InputError(
                f"the CT is a colour (RGB) image of shape {array.shape}: a CT must hold one scalar (HU) per voxel"
            )
        raise InputError(
            f"the CT must be a 3D image, got {array.ndim}D of shape {array.shape}: "
            "select the whole series or a 3D file, not a single slice"
        )
    if min(array.shape) < 2:
        raise InputError(
            f"the CT has only {min(array.shape)} slice(s) along one axis (shape {array.shape}): "
            "a 3D volume with at least 2 voxels along each axis is needed for interpolation"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"the CT voxel type {array.dtype} is not a real number type")
    if ijk_to_ras.shape != (4, 4):
        raise InputError(f"the IJK-to-RAS matrix must be 4x4, got {ijk_to_ras.shape}")
    if not np.all(np.isfinite(ijk_to_ras)):
        raise InputError("the IJK-to-RAS matrix contains NaN or infinite values")
    if not np.allclose(ijk_to_ras[3], [0, 0, 0, 1]):
        raise InputError("the IJK-to-RAS matrix is not affine (its last row must be 0 0 0 1)")
    if abs(np.linalg.det(ijk_to_ras[:3, :3])) < 1e-12:
        raise InputError("the IJK-to-RAS matrix is singular: a voxel spacing is zero or two axes are parallel")


def hu_range_warnings(volume: Volume) -> list[str]:
    """Warn when the voxel values do not look like Hounsfield units.

    A CT in HU has air near -1000 HU and fat near -100 HU, so some voxel is
    negative. Raw stored DICOM values without the rescale (intercept often
    -1024) start at 0 or above: every HU would be about 1024 too high and the
    contact classes would be wrong.
    """
    arr = volume.array
    if arr.size == 0:
        return []
    lo = float(np.nanmin(arr)) if np.issubdtype(arr.dtype, np.floating) else float(arr.min())
    if not lo >= 0:
        return []
    hi = float(np.nanmax(arr)) if np.issubdtype(arr.dtype, np.floating) else float(arr.max())
    return [
        f"the CT has no negative value (range {lo:g}..{hi:g}): it does not look like Hounsfield units "
        "(air is about -1000 HU) but like raw stored values without the DICOM rescale; the contact classes "
        "assume HU: check the rescale slope/intercept of the export (HU = stored x slope + intercept)"
    ]


def ijk_to_ras_from_itk(origin_lps, spacing, direction) -> np.ndarray:
    """IJK-to-RAS 4x4 matrix from ITK image geometry (which is LPS).

    Args:
        origin_lps: position of voxel (0, 0, 0) in LPS mm.
        spacing: voxel size along i, j, k in mm.
        direction: 3x3 direction cosines (row-major, as ``GetDirection()``).
    """
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)[None, :]
    m[:3, 3] = origin_lps
    return LPS_TO_RAS @ m


def itk_geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """Inverse of :func:`ijk_to_ras_from_itk`: ``(origin_lps, spacing, direction)``."""
    m = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing[None, :]
    return tuple(m[:3, 3]), tuple(spacing), tuple(direction.ravel())


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT from NRRD, NIfTI, MetaImage, a DICOM file or a DICOM series folder.

    Geometry (origin, spacing, direction cosines) is taken from the file and
    turned into an IJK-to-RAS matrix. A DICOM series is sorted by slice
    position and its rescale slope/intercept are applied (by GDCM), so the
    values are HU. Voxels keep their type unless the rescale makes them
    fractional.

    Args:
        path: image file, or a folder holding one DICOM series.
        series_uid: which series to read when a DICOM folder holds several.

    Raises:
        InputError: missing, empty or unreadable file; a folder with no DICOM
            series or several series and no ``series_uid``; a series with
            missing slices; a 2D or colour image.
    """
    sitk = _sitk()
    p = Path(path)
    if not p.exists():
        raise InputError(f"CT not found: {p}")
    metadata: dict = {}
    if p.is_dir():
        with native_stderr_silenced():
            image = _read_dicom_series(p, series_uid, metadata)
    else:
        if p.stat().st_size == 0:
            raise InputError(f"the CT file is empty (0 bytes): {p}")
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            with native_stderr_silenced():
                reader.ReadImageInformation()
                image = reader.Execute()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = next((line for line in first if "ERROR" in line or "rror" in line), first[-1] if first else "")
            if "Refusing to change spacing" in str(exc):
                raise InputError(
                    f"the CT {p} states a voxel spacing of 0 mm along one axis: its geometry is broken; "
                    "fix the spacing in the header (ElementSpacing / space directions / pixdim) or export the CT again"
                ) from None
            raise InputError(
                f"cannot read the CT {p}: not an image SimpleITK can read, or the file is truncated "
                f"({detail.strip()[:200]}); supported: NRRD, NIfTI, MetaImage, DICOM"
            ) from None
        _check_nifti_complete(p)
        _check_nifti_qform_sform(p, image.GetSize())
    return _volume_from_sitk(image, str(p), metadata)


def _nifti_header(p: Path) -> bytes:
    import gzip

    with (gzip.open(p, "rb") if p.name.lower().endswith(".gz") else open(p, "rb")) as fh:
        return fh.read(348)


def nifti_qform_sform(p: str | os.PathLike) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The two voxel-to-world matrices a NIfTI-1 header may state: ``(qform, sform)``, 4x4, NIfTI world (RAS) mm.

    ``None`` for a form whose code is 0 (not set), and for both when the file is not NIfTI-1.
    """
    import struct

    hdr = _nifti_header(Path(p))
    if len(hdr) < 348:
        return None, None
    for endian in "<>":
        if struct.unpack(endian + "i", hdr[:4])[0] == 348:
            break
    else:
        return None, None
    qform_code, sform_code = struct.unpack(endian + "hh", hdr[252:256])
    pixdim = struct.unpack(endian + "8f", hdr[76:108])
    qb, qc, qd, qx, qy, qz = struct.unpack(endian + "6f", hdr[256:280])
    srow = np.array(struct.unpack(endian + "12f", hdr[280:328]), dtype=float).reshape(3, 4)
    qform = sform = None
    if qform_code > 0:
        qa = float(np.sqrt(max(0.0, 1.0 - (qb * qb + qc * qc + qd * qd))))
        r = np.array(
            [
                [qa * qa + qb * qb - qc * qc - qd * qd, 2 * (qb * qc - qa * qd), 2 * (qb * qd + qa * qc)],
                [2 * (qb * qc + qa * qd), qa * qa + qc * qc - qb * qb - qd * qd, 2 * (qc * qd - qa * qb)],
                [2 * (qb * qd - qa * qc), 2 * (qc * qd + qa * qb), qa * qa + qd * qd - qc * qc - qb * qb],
            ]
        )
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        qform = np.eye(4)
        qform[:3, :3] = r * np.array([pixdim[1], pixdim[2], qfac * pixdim[3]])[None, :]
        qform[:3, 3] = (qx, qy, qz)
    if sform_code > 0:
        sform = np.eye(4)
        sform[:3, :] = srow
    return qform, sform


#: Largest distance (mm) between where a NIfTI file's qform and sform put a corner voxel before the file is refused.
NIFTI_FORM_TOLERANCE_MM = 0.5


def _check_nifti_qform_sform(p: Path, size_ijk) -> None:
    """Refuse a NIfTI file whose qform and sform both are set and put the voxels in different places.

    ITK follows the sform, other programs the qform: the same file then lands
    in two places, and there is no telling which the scanner meant.
    """
    name = p.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    qform, sform = nifti_qform_sform(p)
    if qform is None or sform is None:
        return
    n = [max(int(v) - 1, 0) for v in list(size_ijk)[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    distance = float(np.max(np.linalg.norm((corners @ qform.T - corners @ sform.T)[:, :3], axis=1)))
    if distance > NIFTI_FORM_TOLERANCE_MM:
        raise InputError(
            f"the NIfTI header of {p} states two geometries that disagree: its qform and its sform put a corner "
            f"voxel {distance:.1f} mm apart (qform origin {np.round(qform[:3, 3], 1).tolist()}, "
            f"sform origin {np.round(sform[:3, 3], 1).tolist()} mm, NIfTI RAS); programs differ in which they "
            "follow (ITK and Slicer: the sform): fix the header so that both agree, or set the wrong one's code to 0"
        )


def _check_nifti_complete(p: Path) -> None:
    """Refuse a NIfTI file that holds fewer voxel bytes than its header announces.

    ITK reads a truncated ``.nii`` or ``.nii.gz`` without an error and fills
    the missing voxels with 0 HU, which would pass for soft tissue.
    """
    import gzip
    import struct
    import zlib

    name = p.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    compressed = name.endswith(".gz")
    try:
        with (gzip.open(p, "rb") if compressed else open(p, "rb")) as fh:
            hdr = fh.read(540)
            size = len(hdr)
            if compressed:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    size += len(chunk)
            else:
                size = p.stat().st_size
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise InputError(f"the CT {p} is truncated or damaged: its compressed data ends early; copy or export it again") from None
    for endian in "<>":
        if len(hdr) >= 348 and struct.unpack(endian + "i", hdr[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", hdr[40:56])
            bitpix = struct.unpack(endian + "h", hdr[72:74])[0]
            offset = int(struct.unpack(endian + "f", hdr[108:112])[0])
            break
        if len(hdr) >= 540 and struct.unpack(endian + "i", hdr[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", hdr[14:16])[0]
            dim = struct.unpack(endian + "8q", hdr[16:80])
            offset = struct.unpack(endian + "q", hdr[168:176])[0]
            break
    else:
        return
    n_dim = min(max(int(dim[0]), 0), 7)
    needed = offset + int(np.prod([max(int(d), 1) for d in dim[1 : n_dim + 1]], dtype=np.int64)) * max(int(bitpix), 8) // 8
    if size < needed:
        raise InputError(
            f"the CT {p} is truncated: its header announces {needed} bytes of image data and header, the file holds "
            f"{size}; copy or export it again"
        )


_EMPTY_UID = '(empty UID, --series-uid "")'


def _read_dicom_series(folder: Path, series_uid: str | None, metadata: dict):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    uids = list(reader.GetGDCMSeriesIDs(str(folder)) or [])
    if not uids:
        raise InputError(f"no DICOM series found in folder {folder}: point --ct at a folder of DICOM slices or at an image file")
    if series_uid is None:
        if len(uids) > 1:
            raise InputError(
                f"the folder {folder} holds {len(uids)} DICOM series "
                f"({', '.join(u or _EMPTY_UID for u in uids)}): choose one with --series-uid"
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        raise InputError(f"series {series_uid} is not in {folder}; found: {', '.join(uids)}")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    if len(files) >= 2:
        positions, orientations = _slice_headers(files)
        kept = _slices_of_one_orientation(files, positions, orientations, metadata)
        files = [files[i] for i in kept]
        _check_slice_spacing([positions[i] for i in kept], [orientations[i] for i in kept])
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM series in {folder}: {str(exc).strip().splitlines()[-1][:200]}") from None
    metadata["series_uid"] = series_uid
    metadata["n_files"] = len(files)
    for key, tag in (
        ("series_instance_uid", "0020|000e"),
        ("rescale_slope", "0028|1053"),
        ("rescale_intercept", "0028|1052"),
        ("modality", "0008|0060"),
    ):
        if reader.HasMetaDataKey(0, tag):
            metadata[key] = reader.GetMetaData(0, tag).strip()
    return image


#: Largest difference of a direction cosine (ImageOrientationPatient) between slices of one orientation.
ORIENTATION_TOLERANCE = 1e-3


def _slice_headers(files: list[str]) -> tuple[list, list]:
    """ImagePositionPatient (mm, ``(3,)``) and ImageOrientationPatient (``(6,)``) of each file, ``None`` where absent."""
    sitk = _sitk()
    positions, orientations = [], []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"cannot read DICOM file {f}: the file is damaged") from None
        values = [_dicom_numbers(r.GetMetaData(tag) if r.HasMetaDataKey(tag) else "", f, tag)
                  for tag in ("0020|0032", "0020|0037")]
        positions.append(values[0])
        orientations.append(values[1])
    return positions, orientations


def _dicom_numbers(text: str, file: str, tag: str) -> np.ndarray | None:
    """A multi-valued DICOM number (``a\\b\\c``) as an array, ``None`` when empty; refused when it is not numbers
    (SimpleITK 2.5.7 refused such a file when reading its header; 2.4.1, Slicer 5.8's, read it)."""
    if not text.strip():
        return None
    try:
        return np.array([float(v) for v in text.split("\\")])
    except ValueError:
        raise InputError(f"cannot read DICOM file {file}: its tag {tag} is not a list of numbers ({text.strip()[:40]})") from None


def _same_orientation(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= ORIENTATION_TOLERANCE


def _slices_of_one_orientation(files: list[str], positions: list, orientations: list, metadata: dict) -> list[int]:
    """Which slices are the CT: those of the series' main orientation, sorted by position when others were left out.

    A localizer (scout) image saved with the series' UID has another ImageOrientationPatient; stacked with the
    axial slices it would be read as one more slice and stretch or shift the whole volume (on 10 slices 2 mm
    apart, one more gave 11 slices 1.8 mm apart). The slices are grouped by orientation (cosines within
    :data:`ORIENTATION_TOLERANCE`); the largest group is the CT and the others are left out, counted in
    ``metadata["left_out_slices"]`` (:func:`geometry_warnings` says so), as Slicer's DICOM import splits such a
    series by orientation. Two largest groups of equal size cannot be told apart: refused.

    Returns:
        Indices into ``files``: all of them, in their order, for a series of one orientation.
    """
    groups: list[list[int]] = []
    for i, o in enumerate(orientations):
        for g in groups:
            if _same_orientation(o, orientations[g[0]]):
                g.append(i)
                break
        else:
            groups.append([i])
    if len(groups) == 1:
        return list(range(len(files)))
    groups.sort(key=len, reverse=True)
    if len(groups[0]) == len(groups[1]):
        raise InputError(
            f"the DICOM series mixes slice orientations: {len(groups[0])} slices of one and {len(groups[1])} of "
            f"another ({len(groups)} orientations in {len(files)} files), so which is the CT is unclear; "
            "export the CT's slices alone, or give a folder that holds only them"
        )
    kept = groups[0]
    left = sorted(i for g in groups[1:] for i in g)
    metadata["left_out_slices"] = len(left)
    metadata["left_out_example"] = Path(files[left[0]]).name
    o = orientations[kept[0]]
    if o is not None and o.shape == (6,) and all(positions[i] is not None and positions[i].shape == (3,) for i in kept):
        normal = np.cross(o[:3], o[3:])
        kept = sorted(kept, key=lambda i: float(positions[i] @ normal))
    return kept


def _check_slice_spacing(positions: list, orientations: list) -> None:
    """Refuse a series whose slice positions (from :func:`_slice_headers`) have a gap (a missing slice)."""
    if len(positions) < 3:
        return
    if any(p is None for p in positions):
        return
    normal = next((np.cross(o[:3], o[3:]) for o in orientations if o is not None), None)
    if normal is None:
        return
    _check_gantry_tilt(np.asarray(positions), normal)
    z = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(z)
    typical = float(np.median(gaps))
    if typical <= 0:
        raise InputError("the DICOM series has slices at the same position: it may hold two series mixed together")
    if np.any(gaps > 1.5 * typical):
        n_missing = int(np.round(gaps[gaps > 1.5 * typical] / typical - 1).sum())
        raise InputError(
            f"the DICOM series has a gap: about {n_missing} slice(s) missing "
            f"(spacing {typical:.3g} mm, largest gap {gaps.max():.3g} mm); re-export the complete series"
        )
    # The reader stacks the slices evenly from the first to the last: how far that puts each from its own position.
    even = z[0] + np.arange(z.size) * (z[-1] - z[0]) / (z.size - 1)
    off = float(np.max(np.abs(z - even)))
    if off > MAX_SLICE_MISPLACEMENT * typical:
        raise InputError(
            f"the DICOM slices are not equally spaced (gaps {gaps.min():.3g} to {gaps.max():.3g} mm): stacked evenly, "
            f"a slice would lie {off:.2g} mm from its own position; resample the series to a regular grid first "
            "(Slicer's DICOM import with acquisition geometry regularization, or dcm2niix)"
        )


#: Largest distance, as a share of the typical slice spacing, between a slice's own position and where the evenly
#: stacked volume puts it: a fifth of a slice (0.2 mm at 1 mm slices; positions written to 0.1 mm, as some scanners
#: do, are off by 0.05 mm at most).
MAX_SLICE_MISPLACEMENT = 0.2

#: Largest angle (degrees) between the line through the slice positions and the slice normal.
MAX_SLICE_TILT_DEG = 0.5


def _check_gantry_tilt(positions: np.ndarray, normal: np.ndarray) -> None:
    """Refuse a series whose slice positions drift sideways (a gantry tilt): it cannot be stacked straight.

    The slices are planes with normal ``normal`` (ImageOrientationPatient);
    stacked straight, slice ``n`` is placed at ``origin + n * spacing * normal``.
    When the ImagePositionPatient of the slices moves within the slice plane
    too, every slice would be misplaced by that sideways drift.
    """
    normal = normal / np.linalg.norm(normal)
    along = positions @ normal
    order = np.argsort(along)
    pos = positions[order]
    height = float(along[order[-1]] - along[order[0]])
    if height <= 0:
        return
    sideways = pos - np.outer(pos @ normal, normal)
    drift = float(np.linalg.norm(sideways[-1] - sideways[0]))
    angle = float(np.degrees(np.arctan2(drift, height)))
    if angle > MAX_SLICE_TILT_DEG:
        raise InputError(
            f"the DICOM slices shift sideways by {drift:.1f} mm over {height:.1f} mm of slices (a gantry tilt of "
            f"{angle:.1f} degrees): stacked straight, every voxel would be misplaced; resample the series to an "
            "orthogonal grid first (Slicer's DICOM import with acquisition geometry regularization, or dcm2niix)"
        )


class _ImageBuffer:
    """Holds a SimpleITK image and exposes its voxel buffer to numpy (see :func:`_array_view`)."""

    def __init__(self, image, view: np.ndarray) -> None:
        self.sitk_image = image
        self.__array_interface__ = view.__array_interface__


def _array_view(image) -> np.ndarray:
    """The voxels of a SimpleITK image as a numpy array, without copying them.

    ``GetArrayFromImage`` copies, so reading a CT held it twice at the peak
    (0.6 GB more for a 512 x 512 x 1200 int16 CT). The view shares the image's
    buffer; its ``base`` is an object that holds the image (numpy collapses
    chains of array views, but not past a non-array base), so the buffer
    lives as long as any array derived from it.
    """
    sitk = _sitk()
    return np.asarray(_ImageBuffer(image, sitk.GetArrayViewFromImage(image)))


def _volume_from_sitk(image, source: str, metadata: dict) -> Volume:
    if image.GetDimension() != 3:
        size = image.GetSize()
        if image.GetDimension() == 2:  # a 3D image one voxel thick is refused by validate_volume (1 slice)
            raise InputError(
                f"the CT {source} is a 2D image (size {size}): give a 3D volume or a DICOM series folder"
            )
        raise InputError(f"the CT {source} has {image.GetDimension()} dimensions: a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"the CT {source} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(a colour or vector image): a CT holds one HU value per voxel"
        )
    _check_direction_cosines(image, source, metadata)
    array = _array_view(image)
    ijk_to_ras = ijk_to_ras_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    if np.issubdtype(array.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        if n_bad:
            metadata["non_finite_voxels"] = n_bad
        if n_bad == array.size:
            raise InputError(f"every voxel of the CT {source} is NaN or infinite: the file holds no HU values")
    return Volume(array=array, ijk_to_ras=ijk_to_ras, source=source, metadata=metadata)


#: Largest departure from unit length of a direction cosine column, and from 90 degrees (as a cosine) between two.
DIRECTION_TOLERANCE = 1e-3


def _check_direction_cosines(image, source: str, metadata: dict) -> None:
    """Refuse direction cosines that are not unit vectors; record (and warn about) a sheared grid.

    Columns of length other than 1 disagree with the stated voxel spacing (the
    file says two sizes for one voxel). Unit columns that are not at right
    angles describe a sheared grid (as a gantry tilt makes): the matrix is
    used as stated, and ``metadata["shear_deg"]`` makes :func:`geometry_warnings` say so.
    """
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(f"the CT {source} states a voxel spacing of {spacing.tolist()} mm: spacings must be positive")
    lengths = np.linalg.norm(d, axis=0)
    if np.any(np.abs(lengths - 1.0) > DIRECTION_TOLERANCE):
        raise InputError(
            f"the CT {source} states its geometry in ways that disagree: its direction cosines have lengths "
            f"{np.round(lengths, 4).tolist()} instead of 1, so a voxel would measure {np.round(lengths * spacing, 4).tolist()} mm "
            f"while the spacing says {np.round(spacing, 4).tolist()} mm; fix the header (direction / space directions)"
        )
    cosines = np.abs((d / lengths).T @ (d / lengths) - np.eye(3))
    if cosines.max() > DIRECTION_TOLERANCE:
        i, j = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
        angle = float(np.degrees(np.arccos(np.clip(((d[:, i] / lengths[i]) @ (d[:, j] / lengths[j])), -1, 1))))
        metadata["shear_deg"] = round(abs(90.0 - angle), 3)
        metadata["shear_axes"] = f"{'ijk'[i]}{'ijk'[j]}"


#: Voxels larger than this (mm, along any axis) are too coarse for cortical contact: cortex is 2-6 mm thick.
MAX_USEFUL_VOXEL_MM = 3.0


def geometry_warnings(volume: Volume) -> list[str]:
    """Warnings about the CT's geometry: voxels too coarse for bone contact, DICOM slices of another orientation left
    out, a sheared voxel grid."""
    out = []
    spacing = volume.spacing_mm
    if float(spacing.max()) > MAX_USEFUL_VOXEL_MM + 1e-3:
        out.append(
            f"the CT's voxels are {' x '.join(f'{v:.3g}' for v in spacing)} mm: larger than {MAX_USEFUL_VOXEL_MM:g} mm, "
            "cortical bone (2-6 mm thick) blurs into its neighbours and contact classes are unreliable; use a CT "
            "reconstructed with thinner slices"
        )
    left_out = volume.metadata.get("left_out_slices")
    if left_out:
        out.append(
            f"{left_out} DICOM file(s) of the series have another slice orientation than its other slices (a localizer "
            f"or scout image saved with the series, e.g. {volume.metadata.get('left_out_example', '')}): they were "
            "left out of the CT"
        )
    shear = volume.metadata.get("shear_deg")
    if not shear:
        return out
    axes = volume.metadata.get("shear_axes", "")
    return out + [
        f"the CT's voxel grid is sheared: axes {axes[:1]} and {axes[1:]} meet at {90 - shear:.1f} degrees instead of 90 "
        "(a gantry tilt, or a header error); it is sampled with the matrix as stated, but Slicer and most viewers "
        "drop the shear: check the CT geometry, or resample it to an orthogonal grid"
    ]


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a volume with its geometry to any format SimpleITK writes (NRRD, NIfTI, MHA)."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(volume.array)
    origin, spacing, direction = itk_geometry_from_ijk_to_ras(volume.ijk_to_ras)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=compress)
