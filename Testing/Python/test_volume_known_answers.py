"""Known answers for the CT reader (volume.py): volumes of a few voxels, NIfTI headers written byte by byte,
DICOM series of a few 3 x 4-pixel slices written with pydicom, and SimpleITK images, all built here, so every
matrix, count and message follows from the construction. Each test names the bug it catches. Milliseconds to
a fraction of a second each (the DICOM series are uncompressed and tiny)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ImplantBoneContactLib import InputError, Volume, read_volume, write_volume
from ImplantBoneContactLib import volume as vm

pydicom = pytest.importorskip("pydicom")


# --------------------------------------------------------------------------- builders


def nifti1_bytes(shape=(4, 3, 2), endian="<", pixdim=(1.0, 1.0, 1.0), qfac=1.0, qform_code=0, sform_code=0,
                 quatern=(0.0, 0.0, 0.0), qoffset=(0.0, 0.0, 0.0), srow=None, dim0=3, extra_dims=(1, 1, 1, 1),
                 bitpix=16, datatype=4, voxels=None) -> bytes:
    """A NIfTI-1 file (348-byte header, 4 extension bytes, voxels at offset 352), written field by field after
    the NIfTI-1 standard: sizeof_hdr at 0, dim at 40, datatype and bitpix at 70, pixdim at 76, vox_offset at
    108, qform/sform codes at 252, quatern b c d and qoffset at 256, srow_x/y/z at 280, magic at 344."""
    h = bytearray(352)
    struct.pack_into(endian + "i", h, 0, 348)
    struct.pack_into(endian + "8h", h, 40, dim0, *shape, *extra_dims)
    struct.pack_into(endian + "hh", h, 70, datatype, bitpix)
    struct.pack_into(endian + "8f", h, 76, qfac, *pixdim, 0.0, 0.0, 0.0, 0.0)
    struct.pack_into(endian + "f", h, 108, 352.0)
    struct.pack_into(endian + "hh", h, 252, qform_code, sform_code)
    struct.pack_into(endian + "6f", h, 256, *quatern, *qoffset)
    if srow is not None:
        struct.pack_into(endian + "12f", h, 280, *np.asarray(srow, dtype=float).ravel())
    h[344:348] = b"n+1\0"
    if voxels is None:
        voxels = np.arange(int(np.prod(shape)), dtype=endian + "i2").tobytes()
    return bytes(h) + voxels


def nifti2_bytes(shape=(4, 3, 2), endian="<", bitpix=16, voxel_bytes=None) -> bytes:
    """A NIfTI-2 file: 540-byte header (sizeof_hdr 540 at 0, datatype and bitpix at 12, int64 dim at 16,
    int64 vox_offset at 168), 4 extension bytes, voxels at offset 544."""
    h = bytearray(544)
    struct.pack_into(endian + "i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into(endian + "hh", h, 12, 4, bitpix)
    struct.pack_into(endian + "8q", h, 16, 3, *shape, 1, 1, 1, 1)
    struct.pack_into(endian + "q", h, 168, 544)
    n = int(np.prod(shape)) * bitpix // 8 if voxel_bytes is None else voxel_bytes
    return bytes(h) + b"\1" * n


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.lower().endswith(".gz") else data)
    return path


def dicom_series(folder: Path, positions, orientation=(1, 0, 0, 0, 1, 0), uid="1.2.826.0.1.3680043.2.1125.1",
                 slopes=None, intercepts=None, modality="CT", rows=3, cols=4, pixel_spacing=(0.5, 0.25),
                 orientations=None):
    """One uncompressed CT slice per position (ImagePositionPatient, mm), stored values ``100 * n`` in slice
    ``n``, rescale slope 1 and intercept -1024 unless given per slice; ``orientations`` gives each slice its own
    ImageOrientationPatient instead of ``orientation``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n, pos in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{uid}.{n + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{uid.rsplit('.', 1)[-1]}_{n:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"{uid}.{n + 1}"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
        ds.SeriesInstanceUID = uid
        ds.Modality = modality
        ds.PatientID = "phantom"
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in (orientation if orientations is None else orientations[n])]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = 1.0 if slopes is None else slopes[n]
        ds.RescaleIntercept = -1024.0 if intercepts is None else intercepts[n]
        ds.PixelData = np.full((rows, cols), 100 * n, dtype="<i2").tobytes()
        save_dicom(ds, path)
        files.append(path)
    return files


def save_dicom(ds, path) -> None:
    """Write a dataset as a DICOM file with its preamble and file meta, on pydicom 3 and on pydicom 2.x (the
    Python 3.9 environment, where the encoding is set on the dataset)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def message(excinfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- the Volume and its checks


def test_volume_shape_spacing_inverse_bounds_and_size_of_an_oblique_grid():
    """Column norms are the spacings (not row norms: the matrix is chosen so the two differ), the shape is
    reported i, j, k from a k, j, i array, and the bounds span the first to the last voxel centre along each
    axis. Catches: norms along the wrong axis, a corner at index 1 or n-2 or n, min and max swapped or over the
    wrong axis, the homogeneous 1 changed, an integer matrix kept as integers."""
    m = np.eye(4)
    m[:3, :3] = [[0.0, -3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]]  # i -> +y 2 mm, j -> -x 3 mm, k -> +z 5 mm
    m[:3, 3] = [10.0, 20.0, 30.0]
    v = Volume(np.zeros((3, 4, 5), np.int16), m)  # k = 3, j = 4, i = 5
    assert v.shape_ijk == (5, 4, 3)
    np.testing.assert_allclose(v.spacing_mm, [2.0, 3.0, 5.0])
    # i in {0, 4}: y = 20 + 2 i in {20, 28}; j in {0, 3}: x = 10 - 3 j in {1, 10}; k in {0, 2}: z in {30, 40}
    np.testing.assert_allclose(v.bounds_ras(), [[1.0, 20.0, 30.0], [10.0, 28.0, 40.0]])
    np.testing.assert_allclose(v.ras_to_ijk @ [1.0, 28.0, 40.0, 1.0], [4.0, 3.0, 2.0, 1.0])
    assert v.nbytes() == 3 * 4 * 5 * 2 and isinstance(v.nbytes(), int)
    assert v.ijk_to_ras.dtype == np.float64
    w = Volume(np.zeros((2, 2, 2)), [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert w.ijk_to_ras.dtype == np.float64  # an integer matrix is stored as float: a half-voxel shift stays
    w.ijk_to_ras[:3, 3] += 0.5
    np.testing.assert_array_equal(w.ijk_to_ras[:3, 3], [0.5, 0.5, 0.5])


def test_volume_keeps_its_source_and_metadata():
    """The constructor keeps what it is given. Catches: a reader that drops the source name."""
    v = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), source="ct.nrrd", metadata={"a": 1})
    assert (v.source, v.metadata) == ("ct.nrrd", {"a": 1})
    assert Volume(np.zeros((2, 2, 2)), np.eye(4)).source == "<in-memory>"


@pytest.mark.parametrize(
    ("array", "matrix", "expected"),
    [
        (np.zeros((5, 5)), np.eye(4), "the CT must be a 3D image, got 2D of shape (5, 5): "
         "select the whole series or a 3D file, not a single slice"),
        (np.zeros((2, 2, 2, 5)), np.eye(4), "the CT must be a 3D image, got 4D of shape (2, 2, 2, 5): "
         "select the whole series or a 3D file, not a single slice"),
        (np.zeros((2, 2, 2, 3)), np.eye(4), "the CT is a colour (RGB) image of shape (2, 2, 2, 3): "
         "a CT must hold one scalar (HU) per voxel"),
        (np.zeros((2, 2, 2, 4)), np.eye(4), "the CT is a colour (RGB) image of shape (2, 2, 2, 4): "
         "a CT must hold one scalar (HU) per voxel"),
        (np.zeros((3, 1, 4)), np.eye(4), "the CT has only 1 slice(s) along one axis (shape (3, 1, 4)): "
         "a 3D volume with at least 2 voxels along each axis is needed for interpolation"),
        (np.zeros((2, 2, 2), bool), np.eye(4), "the CT voxel type bool is not a real number type"),
        (np.zeros((2, 2, 2), complex), np.eye(4), "the CT voxel type complex128 is not a real number type"),
        (np.zeros((2, 2, 2)), np.eye(3), "the IJK-to-RAS matrix must be 4x4, got (3, 3)"),
        (np.zeros((2, 2, 2)), np.diag([1.0, np.nan, 1.0, 1.0]), "the IJK-to-RAS matrix contains NaN or infinite values"),
        (np.zeros((2, 2, 2)), np.diag([1.0, 1.0, np.inf, 1.0]), "the IJK-to-RAS matrix contains NaN or infinite values"),
        (np.zeros((2, 2, 2)), np.diag([1.0, 1.0, 1.0, 2.0]),
         "the IJK-to-RAS matrix is not affine (its last row must be 0 0 0 1)"),
        (np.zeros((2, 2, 2)), [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.5, 0, 1]],
         "the IJK-to-RAS matrix is not affine (its last row must be 0 0 0 1)"),
        (np.zeros((2, 2, 2)), np.diag([1e-5, 1e-5, 1e-3, 1.0]),
         "the IJK-to-RAS matrix is singular: a voxel spacing is zero or two axes are parallel"),
        (np.zeros((2, 2, 2)), [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
         "the IJK-to-RAS matrix is singular: a voxel spacing is zero or two axes are parallel"),
    ],
    ids=["2d", "4d_5_components", "rgb", "rgba", "one_slice", "bool", "complex", "3x3", "nan", "inf",
         "last_row_2", "last_row_shear", "det_1e-13", "parallel_axes"],
)
def test_validate_volume_refuses_with_the_exact_message(array, matrix, expected):
    """Each refusal says what is wrong in a fixed sentence. Catches: a check dropped or inverted, the
    colour test accepting 5 components or missing 4, the slice minimum moved, a message lost or changed."""
    with pytest.raises(InputError) as e:
        Volume(array, matrix)
    assert message(e) == expected


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.float32, np.float64])
def test_validate_volume_accepts_two_voxels_per_axis_of_any_real_type(dtype):
    """The smallest usable CT (2 x 2 x 2) of every real type, and a tiny but regular matrix (det 1e-9).
    Catches: the minimum raised to 3 voxels, integers or floats refused, the singularity limit raised."""
    Volume(np.zeros((2, 2, 2), dtype), np.diag([1e-3, 1e-3, 1e-3, 1.0]))


# --------------------------------------------------------------------------- HU and geometry warnings


@pytest.mark.parametrize(
    ("values", "expected_range"),
    [
        (np.array([0, 3, 1020, 7], np.int16), "0..1020"),  # 0 is not negative: raw stored values start there
        (np.array([24.5, np.nan, 2000.0, 30.0]), "24.5..2000"),  # NaN voxels do not hide the range
        (np.array([24.5, np.nan, 2000.0, 30.0], np.float32), "24.5..2000"),  # of any float type
    ],
)
def test_hu_range_warning_names_the_range_of_a_ct_without_negative_values(values, expected_range):
    """A CT whose smallest value is 0 (raw DICOM stored values) is warned about, with its range; NaN voxels
    (outside the reconstruction) are skipped. Catches: the limit moved to > 0 or >= 1, NaN propagated into
    the range (min or max of a float array taken without nanmin/nanmax), min and max swapped, the advice lost."""
    v = Volume(np.resize(values, (2, 2, 2)), np.eye(4))
    assert vm.hu_range_warnings(v) == [
        f"the CT has no negative value (range {expected_range}): it does not look like Hounsfield units "
        "(air is about -1000 HU) but like raw stored values without the DICOM rescale; the contact classes "
        "assume HU: check the rescale slope/intercept of the export (HU = stored x slope + intercept)"
    ]


@pytest.mark.parametrize("values", [np.array([-1, 5, 9, 3], np.int16), np.array([np.nan, -0.5, 3.0, 2.0]),
                                    np.array([-1000.0, 0.0, 1.0, 2.0], np.float32)])
def test_no_hu_range_warning_once_one_voxel_is_negative(values):
    """One value below 0 HU (even -0.5, even next to NaN) means HU. Catches: the test inverted, NaN taken
    as the minimum (no warning either way, but nanmin on integers is checked by the other test)."""
    assert vm.hu_range_warnings(Volume(np.resize(values, (2, 2, 2)), np.eye(4))) == []


def test_hu_range_warnings_of_an_emptied_volume_are_none():
    """A volume whose voxels were replaced by an empty array after construction gives no warning rather than
    failing on the minimum of nothing. Catches: the empty-array guard dropped or inverted."""
    v = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))
    v.array = np.zeros((0, 2, 2), np.int16)
    assert vm.hu_range_warnings(v) == []


def test_geometry_warning_for_voxels_over_3_mm_and_none_at_3_mm():
    """3.0 mm voxels (and 3.0009 mm, within 1e-3) are accepted, 3.01 mm are warned about with each spacing to 3 significant digits.
    Catches: the limit moved (>= at exactly 3.001, or a tolerance of 1 mm), the spacing list or its separator changed."""
    assert vm.geometry_warnings(Volume(np.zeros((2, 2, 2)), np.diag([3.0, 0.5, 3.0, 1.0]))) == []
    assert vm.geometry_warnings(Volume(np.zeros((2, 2, 2)), np.diag([0.5, 0.75, 3.0009, 1.0]))) == []
    assert vm.geometry_warnings(Volume(np.zeros((2, 2, 2)), np.diag([3.001, 0.75, 1.0, 1.0]))) == []  # the limit itself
    w = vm.geometry_warnings(Volume(np.zeros((2, 2, 2)), np.diag([0.5, 0.75, 3.01, 1.0])))
    assert w == [
        "the CT's voxels are 0.5 x 0.75 x 3.01 mm: larger than 3 mm, "
        "cortical bone (2-6 mm thick) blurs into its neighbours and contact classes are unreliable; use a CT "
        "reconstructed with thinner slices"
    ]


def test_geometry_warning_for_a_sheared_grid_names_its_axes_and_angle():
    """A shear recorded by the reader is reported with the two axes and the angle they meet at (90 - 2.5);
    with coarse voxels too, both warnings, coarse first. Catches: the shear ignored or always reported, the
    axes split wrongly, 90 + shear, the list joined wrongly."""
    v = Volume(np.zeros((2, 2, 2)), np.diag([4.0, 1.0, 1.0, 1.0]), metadata={"shear_deg": 2.5, "shear_axes": "jk"})
    w = vm.geometry_warnings(v)
    assert len(w) == 2 and w[0].startswith("the CT's voxels are 4 x 1 x 1 mm")
    assert w[1] == (
        "the CT's voxel grid is sheared: axes j and k meet at 87.5 degrees instead of 90 "
        "(a gantry tilt, or a header error); it is sampled with the matrix as stated, but Slicer and most viewers "
        "drop the shear: check the CT geometry, or resample it to an orthogonal grid"
    )
    assert vm.geometry_warnings(Volume(np.zeros((2, 2, 2)), np.eye(4), metadata={"shear_deg": 0.0})) == []
    only_angle = vm.geometry_warnings(Volume(np.zeros((2, 2, 2)), np.eye(4), metadata={"shear_deg": 1.0}))
    assert only_angle[0].startswith("the CT's voxel grid is sheared: axes  and  meet at 89.0 degrees")


# --------------------------------------------------------------------------- ITK geometry


def test_itk_geometry_to_ijk_to_ras_and_back_by_hand():
    """LPS origin (1, 2, 3), spacing (0.5, 2, 4), direction with i along L-P diagonal: the RAS matrix has x and
    y negated and each column scaled by its spacing; the inverse gives the three back. Catches: spacing
    applied to rows, the LPS flip dropped, the origin or a row of 4 taken, integer direction or spacing."""
    c = math.sqrt(0.5)
    direction = [c, -c, 0.0, c, c, 0.0, 0.0, 0.0, 1.0]  # row-major; column i = (c, c, 0), j = (-c, c, 0)
    m = vm.ijk_to_ras_from_itk((1, 2, 3), (0.5, 2, 4), direction)
    expected = np.array([[-0.5 * c, 2 * c, 0, -1], [-0.5 * c, -2 * c, 0, -2], [0, 0, 4, 3], [0, 0, 0, 1]])
    np.testing.assert_allclose(m, expected, atol=1e-12)
    origin, spacing, back = vm.itk_geometry_from_ijk_to_ras(m)
    assert len(origin) == 3 and len(spacing) == 3 and len(back) == 9
    np.testing.assert_allclose(origin, (1, 2, 3), atol=1e-12)
    np.testing.assert_allclose(spacing, (0.5, 2, 4), atol=1e-12)
    np.testing.assert_allclose(back, direction, atol=1e-12)
    # integer inputs (a matrix of ints, int spacings) give the same floats, not truncated ones
    m_int = vm.ijk_to_ras_from_itk((1, 2, 3), np.array([1, 2, 3]), np.array([0, 1, 0, 1, 0, 0, 0, 0, 1]))
    np.testing.assert_array_equal(m_int[:3, :3], [[0, -2, 0], [-1, 0, 0], [0, 0, 3]])
    o, s, d = vm.itk_geometry_from_ijk_to_ras(np.array([[2, 0, 0, 5], [0, 3, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1]]))
    np.testing.assert_allclose(s, (2, 3, 1))
    np.testing.assert_allclose(d, [-1, 0, 0, 0, -1, 0, 0, 0, 1])
    np.testing.assert_allclose(o, (-5, -6, 7))


@pytest.mark.parametrize(("compress", "encoding"), [(True, "gzip"), (False, "raw")])
def test_write_volume_compresses_only_when_asked(tmp_path, compress, encoding):
    """write_volume writes a compressed NRRD by default and a raw one with compress=False. Catches: the
    compress argument ignored or inverted."""
    write_volume(Volume(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4)), tmp_path / "a.nrrd", compress)
    header = (tmp_path / "a.nrrd").read_bytes().split(b"\n\n")[0].decode()
    assert f"encoding: {encoding}" in header
    if compress:
        write_volume(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "b.nrrd")
        assert "encoding: gzip" in (tmp_path / "b.nrrd").read_bytes().split(b"\n\n")[0].decode()


# --------------------------------------------------------------------------- read_volume: files


def test_missing_empty_and_unknown_files_are_refused_by_name(tmp_path):
    """Catches: the empty-file test changed to 1 byte (a 1-byte file must reach the reader and be called
    unreadable instead), the messages lost."""
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "none.nrrd")
    assert message(e) == f"CT not found: {tmp_path / 'none.nrrd'}"
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "empty.nrrd")
    assert message(e) == f"the CT file is empty (0 bytes): {tmp_path / 'empty.nrrd'}"
    (tmp_path / "one.nrrd").write_bytes(b"x")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "one.nrrd")
    assert message(e).startswith(f"cannot read the CT {tmp_path / 'one.nrrd'}: not an image SimpleITK can read")
    assert message(e).endswith("; supported: NRRD, NIfTI, MetaImage, DICOM")


def test_zero_spacing_file_gets_its_own_message(tmp_path):
    """ITK refuses a 0 mm spacing with 'Refusing to change spacing'; the user is told the spacing is 0.
    Catches: the test on ITK's words changed (case, negation), which gives the generic message instead."""
    p = tmp_path / "zero.mha"
    p.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementSpacing = 1 0 1\n"
                  b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 16)
    with pytest.raises(InputError) as e:
        read_volume(p)
    assert message(e) == (
        f"the CT {p} states a voxel spacing of 0 mm along one axis: its geometry is broken; "
        "fix the spacing in the header (ElementSpacing / space directions / pixdim) or export the CT again"
    )


class _FailingReader:
    """Stands in for SimpleITK's ImageFileReader: raises the given exception text on reading."""

    text = ""

    def SetFileName(self, name):  # noqa: N802 (SimpleITK's name)
        pass

    def ReadImageInformation(self):  # noqa: N802
        raise RuntimeError(self.text)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("Exception thrown in X: file.cxx:99:\nsitk::ERROR: Unable to read\nmore context", "sitk::ERROR: Unable to read"),
        ("Exception in X:\nan Error while decoding\nlast line", "an Error while decoding"),
        ("first line\nsecond line\n  last line  ", "last line"),
        ("   ", ""),
        ("top\nERROR: " + "x" * 300, "ERROR: " + "x" * 193),
    ],
    ids=["ERROR_line", "Error_line", "last_line", "empty", "cut_at_200"],
)
def test_unreadable_file_message_quotes_the_line_naming_the_error(tmp_path, monkeypatch, text, detail):
    """Of ITK's multi-line exception the first line with 'ERROR' (or 'rror', as in 'Error') is quoted, else
    the last line, cut to 200 characters. Catches: another line quoted, the last-line fallback changed, the
    cut moved."""
    p = tmp_path / "ct.nrrd"
    p.write_bytes(b"something")
    reader = type("R", (_FailingReader,), {"text": text})
    fake = type("FakeSitk", (), {"ImageFileReader": reader})
    monkeypatch.setattr(vm, "_sitk", lambda: fake)
    with pytest.raises(InputError) as e:
        read_volume(p)
    assert message(e) == (
        f"cannot read the CT {p}: not an image SimpleITK can read, or the file is truncated "
        f"({detail}); supported: NRRD, NIfTI, MetaImage, DICOM"
    )


def test_read_volume_records_its_source_and_reads_every_voxel(tmp_path):
    """An image file read back: source is the path as text, voxels and geometry as written. Catches: the
    source dropped or replaced."""
    p = tmp_path / "ct.nrrd"
    write_volume(Volume(np.arange(-4, 4, dtype=np.int16).reshape(2, 2, 2), np.diag([0.5, 0.5, 2.0, 1.0])), p)
    v = read_volume(p)
    assert v.source == str(p)
    np.testing.assert_array_equal(v.array.ravel(), np.arange(-4, 4))


def test_2d_image_4d_image_and_vector_image_are_refused(tmp_path):
    """A 2D file, a 3D file one voxel thick, a 4D file (also with an axis of 1 voxel) and a 3-component 3D
    file, each with its message (the one-voxel-thick 3D file is refused by the volume check, with the slice
    count). Catches: a 4D image with a 1-voxel axis called 2D, a thick one taken for 2D, the size left out of
    the 2D message, the 4D and vector messages lost."""
    sitk.WriteImage(sitk.Image([4, 3], sitk.sitkInt16), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "flat.nrrd")
    assert message(e) == f"the CT {tmp_path / 'flat.nrrd'} is a 2D image (size (4, 3)): give a 3D volume or a DICOM series folder"
    sitk.WriteImage(sitk.Image([3, 2, 2, 1], sitk.sitkInt16), str(tmp_path / "four1.nrrd"))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "four1.nrrd")
    assert message(e) == f"the CT {tmp_path / 'four1.nrrd'} has 4 dimensions: a 3D volume is needed"
    thin = sitk.Image([4, 3, 1], sitk.sitkInt16)
    sitk.WriteImage(thin, str(tmp_path / "thin.nrrd"))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "thin.nrrd")
    assert message(e) == ("the CT has only 1 slice(s) along one axis (shape (1, 3, 4)): "
                          "a 3D volume with at least 2 voxels along each axis is needed for interpolation")
    two = sitk.Image([4, 2, 3], sitk.sitkInt16)  # 2 voxels along j: a volume
    sitk.WriteImage(two, str(tmp_path / "two.nrrd"))
    assert read_volume(tmp_path / "two.nrrd").shape_ijk == (4, 2, 3)
    sitk.WriteImage(sitk.Image([2, 2, 2, 2], sitk.sitkInt16), str(tmp_path / "four.nrrd"))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "four.nrrd")
    assert message(e) == f"the CT {tmp_path / 'four.nrrd'} has 4 dimensions: a 3D volume is needed"
    sitk.WriteImage(sitk.Image([2, 2, 2], sitk.sitkVectorInt16, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "rgb.nrrd")
    assert message(e) == (
        f"the CT {tmp_path / 'rgb.nrrd'} has 3 components per voxel "
        "(a colour or vector image): a CT holds one HU value per voxel"
    )


def test_non_finite_voxels_are_counted_and_an_all_nan_ct_refused(tmp_path):
    """3 of 8 voxels NaN or infinite: counted in the metadata; all 8: refused. An integer CT has no count.
    Catches: the count inverted (finite voxels counted) or lost, the all-NaN test inverted."""
    a = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    a.flat[[1, 4, 6]] = [np.nan, np.inf, -np.inf]
    write_volume(Volume(a, np.eye(4)), tmp_path / "some.nrrd")
    assert read_volume(tmp_path / "some.nrrd").metadata == {"non_finite_voxels": 3}
    write_volume(Volume(np.full((2, 2, 2), np.nan, np.float32), np.eye(4)), tmp_path / "all.nrrd")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "all.nrrd")
    assert message(e) == f"every voxel of the CT {tmp_path / 'all.nrrd'} is NaN or infinite: the file holds no HU values"
    write_volume(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "int.nrrd")
    assert read_volume(tmp_path / "int.nrrd").metadata == {}


# --------------------------------------------------------------------------- direction cosines


class _Geometry:
    """Stands in for a SimpleITK image: only its direction and spacing are read."""

    def __init__(self, direction, spacing=(1.0, 1.0, 1.0)):
        self._d, self._s = tuple(float(v) for v in np.ravel(direction)), tuple(spacing)

    def GetDirection(self):  # noqa: N802 (SimpleITK's name)
        return self._d

    def GetSpacing(self):  # noqa: N802
        return self._s


@pytest.mark.parametrize("spacing", [(1.0, -0.5, 1.0), (1.0, 0.0, 1.0), (np.nan, 1.0, 1.0), (1.0, 1.0, np.inf)])
def test_non_positive_or_non_finite_spacing_is_refused(spacing):
    """Catches: 0 mm let through (< instead of <=), NaN or infinity let through (and instead of or)."""
    with pytest.raises(InputError) as e:
        vm._check_direction_cosines(_Geometry(np.eye(3), spacing), "ct.nrrd", {})
    assert message(e) == f"the CT ct.nrrd states a voxel spacing of {list(spacing)} mm: spacings must be positive"


def test_direction_columns_not_of_unit_length_are_refused_with_the_lengths():
    """Column j has length 1.00234 (rows stay unit, so only column norms see it): refused, naming the lengths,
    the voxel sizes they imply and the spacing, to 4 decimals. Catches: row norms, the tolerance crossed,
    the rounding changed."""
    d = np.eye(3)
    d[1, 1] = 1.00234
    with pytest.raises(InputError) as e:
        vm._check_direction_cosines(_Geometry(d, (0.5, 2.0, 1.23456)), "ct.nrrd", {})
    assert message(e) == (
        "the CT ct.nrrd states its geometry in ways that disagree: its direction cosines have lengths "
        "[1.0, 1.0023, 1.0] instead of 1, so a voxel would measure [0.5, 2.0047, 1.2346] mm "
        "while the spacing says [0.5, 2.0, 1.2346] mm; fix the header (direction / space directions)"
    )


def test_direction_with_a_row_longer_than_1_but_unit_columns_is_accepted():
    """Unit columns whose rows are not unit (a shear of the columns' frame) pass the length check.
    Catches: the lengths taken along rows."""
    c = math.sqrt(0.5)
    d = np.array([[1.0, c, 0.0], [0.0, c, 0.0], [0.0, 0.0, 1.0]])  # row 0 has length sqrt(1.5)
    md: dict = {}
    vm._check_direction_cosines(_Geometry(d), "ct", md)
    assert md == {"shear_deg": 45.0, "shear_axes": "ij"}


def test_column_length_within_tolerance_is_accepted():
    """Length 1.0009 (< 1e-3 off) passes and records no shear. Catches: the tolerance made strict or
    scaled."""
    d = np.eye(3)
    d[2, 2] = 1.0009
    md: dict = {}
    vm._check_direction_cosines(_Geometry(d), "ct", md)
    assert md == {}


def test_cosine_of_exactly_the_tolerance_is_not_a_shear():
    """Columns (1, 0, 0) and (0.001, sqrt(1 - 1e-6), 0): unit length, cosine exactly 1e-3 (0.057 degrees off
    square), the tolerance itself: not recorded. Catches: > made >=."""
    d = np.array([[1.0, 0.001, 0.0], [0.0, math.sqrt(1 - 1e-6), 0.0], [0.0, 0.0, 1.0]])
    md: dict = {}
    vm._check_direction_cosines(_Geometry(d), "ct", md)
    assert md == {}


def test_shear_angle_is_measured_between_normalised_columns():
    """Columns i = 1.0009 (1, 0, 0) and j = 1.0009 (cos 60, sin 60, 0), both within the length tolerance: the
    angle between them is 60 degrees (a shear of 30.0) only once each is divided by its length. Catches: a
    column multiplied by its length instead."""
    c = 1.0009
    d = np.array([[c, c * 0.5, 0.0], [0.0, c * math.sqrt(3) / 2, 0.0], [0.0, 0.0, 1.0]])
    md: dict = {}
    vm._check_direction_cosines(_Geometry(d), "ct", md)
    assert md == {"shear_deg": 30.0, "shear_axes": "ij"}


def test_shear_between_j_and_k_is_recorded_in_degrees():
    """Column k tilted by 3 degrees towards j: a shear of 3.0 degrees between j and k (the largest off-diagonal
    cosine, first of the symmetric pair); spacing 2 mm does not enter. Catches: normalisation by multiplying,
    the angle from the sum of the identity, the clip, the rounding to 3 decimals, the axis letters."""
    t = math.radians(3.0)
    d = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, math.sin(t)], [0.0, 0.0, math.cos(t)]])
    md: dict = {}
    vm._check_direction_cosines(_Geometry(d, (2.0, 2.0, 2.0)), "ct", md)
    assert md == {"shear_deg": 3.0, "shear_axes": "jk"}
    d2 = np.array([[1.0, 0.0, math.sin(-0.0123)], [0.0, 1.0, 0.0], [0.0, 0.0, math.cos(0.0123)]])
    md2: dict = {}
    vm._check_direction_cosines(_Geometry(d2, (0.5, 0.5, 0.5)), "ct", md2)
    assert md2 == {"shear_deg": round(math.degrees(0.0123), 3), "shear_axes": "ik"}
    assert md2["shear_deg"] == 0.705


def test_direction_cosines_of_a_file_read_are_checked(tmp_path):
    """The check runs on every file read, on the file's own name and metadata: a NRRD with a sheared
    direction (written by SimpleITK as stated) comes back with the shear recorded. Catches: the check given
    no source or no metadata."""
    image = sitk.Image([2, 2, 2], sitk.sitkInt16)
    t = math.radians(5.0)
    image.SetDirection((1.0, math.sin(t), 0.0, 0.0, math.cos(t), 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "sheared.nrrd"))
    v = read_volume(tmp_path / "sheared.nrrd")
    assert v.metadata == {"shear_deg": 5.0, "shear_axes": "ij"}
    bad = sitk.Image([2, 2, 2], sitk.sitkInt16)
    bad.SetDirection((1.0, 0.0, 0.0, 0.0, 1.01, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(bad, str(tmp_path / "long.mha"))  # MetaImage keeps direction and spacing apart
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "long.mha")
    assert message(e).startswith(f"the CT {tmp_path / 'long.mha'} states its geometry in ways that disagree")


# --------------------------------------------------------------------------- NIfTI qform and sform


def _rotation(axis, degrees) -> np.ndarray:
    """Rodrigues' formula: rotation by ``degrees`` about unit ``axis`` (independent of quaternions)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * kx + (1 - math.cos(t)) * kx @ kx


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("name", ["q.nii", "q.nii.gz", "Q.NII.GZ"])
@pytest.mark.parametrize("qfac", [1.0, -1.0, 0.0, 0.5])
def test_qform_is_the_rotation_of_its_quaternion_times_the_voxel_size(tmp_path, endian, name, qfac):
    """Quaternion of a 40-degree turn about (1, 2, 3): b, c, d = sin(20) (1, 2, 3) / |(1, 2, 3)|; the qform is
    Rodrigues' rotation with columns scaled by (0.5, 0.75, qfac 2.0), offset (1, -2, 3). Every element of the
    rotation is non-zero, so a sign or factor changed in any one of the nine is seen. qfac (pixdim[0]) is -1
    when negative and 1 otherwise, 0 included (the standard's rule for files that leave it 0). Catches: element
    formulas, qfac ignored or doubled or read from pixdim[1] or taken as -1 at 0 or 0.5, big-endian or gzip files not read, the case of
    the suffix."""
    axis = np.array([1.0, 2.0, 3.0]) / math.sqrt(14.0)
    b, c, d = math.sin(math.radians(20.0)) * axis
    write(tmp_path / name, nifti1_bytes(endian=endian, qform_code=1, quatern=(b, c, d), qoffset=(1.0, -2.0, 3.0),
                                        pixdim=(0.5, 0.75, 2.0), qfac=qfac))
    qform, sform = vm.nifti_qform_sform(tmp_path / name)
    assert sform is None
    expected = np.eye(4)
    expected[:3, :3] = _rotation(axis, 40.0) * np.array([0.5, 0.75, (-1.0 if qfac < 0 else 1.0) * 2.0])
    expected[:3, 3] = (1.0, -2.0, 3.0)
    np.testing.assert_allclose(qform, expected, atol=1e-6)


def test_qform_code_2_and_sform_code_2_are_set_forms(tmp_path):
    """Codes above 1 (aligned, Talairach, MNI) set the form too; the sform is its three rows. Catches: code
    tests changed to > 1 or >= 0."""
    srow = [[0.0, -2.0, 0.0, 5.0], [1.5, 0.0, 0.0, -6.0], [0.0, 0.0, 3.0, 7.0]]
    write(tmp_path / "a.nii", nifti1_bytes(qform_code=2, sform_code=2, srow=srow, pixdim=(2.0, 2.0, 2.0)))
    qform, sform = vm.nifti_qform_sform(tmp_path / "a.nii")
    np.testing.assert_allclose(sform, np.vstack([srow, [0, 0, 0, 1]]))
    np.testing.assert_allclose(qform, np.diag([2.0, 2.0, 2.0, 1.0]))  # b = c = d = 0: identity rotation
    write(tmp_path / "b.nii", nifti1_bytes(qform_code=1, sform_code=1, srow=srow))
    qform, sform = vm.nifti_qform_sform(tmp_path / "b.nii")
    np.testing.assert_allclose(sform[:3], srow)
    write(tmp_path / "c.nii", nifti1_bytes(qform_code=0, sform_code=0, srow=srow))
    assert vm.nifti_qform_sform(tmp_path / "c.nii") == (None, None)


def test_qform_with_unnormalised_quaternion_uses_a_of_zero(tmp_path):
    """b, c, d = (0.6, 0.8, 0): b^2 + c^2 + d^2 = 1, so a = 0, a 180-degree turn about (0.6, 0.8, 0), written
    out by hand; then (0.3, 0.4, 0), where a = sqrt(0.75) depends on c. Catches: a clipped at 1 instead of
    0, the sum of squares with a sign changed."""
    b, c, d = 0.6, 0.8, 0.0
    write(tmp_path / "a.nii", nifti1_bytes(qform_code=1, quatern=(b, c, d)))
    qform, _ = vm.nifti_qform_sform(tmp_path / "a.nii")
    # a = 0, b^2 + c^2 = 1: R = [[b^2 - c^2, 2bc, 0], [2bc, c^2 - b^2, 0], [0, 0, -1]] (180 degrees about (b, c, 0))
    np.testing.assert_allclose(qform[:3, :3], [[-0.28, 0.96, 0.0], [0.96, 0.28, 0.0], [0.0, 0.0, -1.0]], atol=1e-6)
    b, c, d = 0.3, 0.4, 0.0  # a = sqrt(1 - 0.25) = sqrt(0.75): the c term matters in a
    write(tmp_path / "b.nii", nifti1_bytes(qform_code=1, quatern=(b, c, d)))
    qform, _ = vm.nifti_qform_sform(tmp_path / "b.nii")
    a = math.sqrt(0.75)
    np.testing.assert_allclose(qform[0, 0], a * a + b * b - c * c, atol=1e-6)
    np.testing.assert_allclose(qform[2, 0], -2 * a * c, atol=1e-6)


@pytest.mark.parametrize("data", [b"", b"\0" * 100, b"\1" * 348, struct.pack("<i", 349) + b"\0" * 400,
                                  struct.pack("<i", 347) + b"\0" * 400])
def test_qform_sform_of_a_file_that_is_not_nifti1_are_none(tmp_path, data):
    """Short files and headers whose first int is not 348 in either byte order (nor NIfTI-2's 540) hold no
    forms. Catches: a 347-byte header read, sizeof_hdr compared with 349."""
    write(tmp_path / "x.nii", data)
    assert vm.nifti_qform_sform(tmp_path / "x.nii") == (None, None)


def test_qform_sform_of_a_header_of_exactly_348_bytes(tmp_path):
    """A 348-byte file (header only) is NIfTI-1. Catches: the length test made <= 348 or < 349."""
    write(tmp_path / "h.nii", nifti1_bytes(sform_code=1, srow=[[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]])[:348])
    qform, sform = vm.nifti_qform_sform(tmp_path / "h.nii")
    assert qform is None
    np.testing.assert_allclose(sform[:3, 3], [1, 2, 3])


def test_negative_form_codes_set_no_form(tmp_path):
    """A negative code (an invalid header) sets no form: codes are signed shorts. Catches: the codes read as
    unsigned (65535 > 0)."""
    write(tmp_path / "n.nii", nifti1_bytes(qform_code=-1, sform_code=-1, srow=[[1, 0, 0, 9], [0, 1, 0, 0], [0, 0, 1, 0]]))
    assert vm.nifti_qform_sform(tmp_path / "n.nii") == (None, None)


def _forms_file(tmp_path, name, shift_last_corner_mm, origin_shift=(0.0, 0.0, 0.0), shape=(4, 3, 2)):
    """qform: identity rotation, 1 mm voxels, origin (1, 2, 3) + origin_shift; sform: 1 mm voxels but the k
    column (1 + shift / (nk - 1)) long, origin (1, 2, 3), so the two agree at k = 0 and the corners at the last
    k differ by ``shift_last_corner_mm`` along z."""
    nk = shape[2]
    srow = [[1, 0, 0, 1.0], [0, 1, 0, 2.0], [0, 0, 1.0 + shift_last_corner_mm / (nk - 1), 3.0]]
    return write(tmp_path / name, nifti1_bytes(shape=shape, qform_code=1, sform_code=1, srow=srow,
                                               qoffset=tuple(np.add((1.0, 2.0, 3.0), origin_shift))))


@pytest.mark.parametrize("name", ["f.nii", "f.nii.gz", "F.NII", "F.NII.GZ"])
def test_qform_and_sform_apart_at_the_far_corner_are_refused(tmp_path, name):
    """The forms agree at voxel (0, 0, 0) and part along k only: 0.75 mm apart at k = nk - 1 is refused, in
    every spelling of the suffix. Catches: only the origin compared, the last index taken as n or n - 2, a
    corner missed, the homogeneous 1 changed, the suffix test inverted or case-sensitive."""
    p = _forms_file(tmp_path, name, 0.75, shape=(4, 3, 3))
    with pytest.raises(InputError) as e:
        read_volume(p)
    assert message(e) == (
        f"the NIfTI header of {p} states two geometries that disagree: its qform and its sform put a corner "
        "voxel 0.8 mm apart (qform origin [1.0, 2.0, 3.0], sform origin [1.0, 2.0, 3.0] mm, NIfTI RAS); "
        "programs differ in which they follow (ITK and Slicer: the sform): fix the header so that both agree, "
        "or set the wrong one's code to 0"
    )


def test_qform_sform_message_gives_both_origins_to_a_tenth(tmp_path):
    """Origins (1.66, 2, 3) and (1, 2, 3), the forms otherwise equal: refused, 'voxel 0.7 mm apart', the qform
    origin printed 1.7. Catches: origins printed from the wrong column or rows, rounded to 2 decimals."""
    p = _forms_file(tmp_path, "o.nii", 0.0, origin_shift=(0.66, 0.0, 0.0))
    with pytest.raises(InputError) as e:
        read_volume(p)
    assert "voxel 0.7 mm apart (qform origin [1.7, 2.0, 3.0], sform origin [1.0, 2.0, 3.0] mm, NIfTI RAS)" in message(e)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("where", ["far", "near"])
def test_qform_and_sform_compared_at_both_ends_of_each_axis(tmp_path, axis, where):
    """Size 5 x 3 x 2 (last indices 4, 2, 1). 'far': the sform's column ``axis`` is 0.6 / n longer, so the forms
    agree at index 0 and are 0.6 mm apart only at the last index n along that axis. 'near': the sform's origin
    is 0.6 mm further along the axis and its column 0.6 / n shorter, so they agree at the last index and are
    0.6 mm apart only at index 0. Refused in each case. Catches: a corner index 0 replaced by 1, the last index
    of one axis taken from another axis's size."""
    n = (4, 2, 1)[axis]
    srow = np.hstack([np.eye(3), np.zeros((3, 1))])
    if where == "far":
        srow[axis, axis] = 1.0 + 0.6 / n
    else:
        srow[axis, axis] = 1.0 - 0.6 / n
        srow[axis, 3] = 0.6
    p = write(tmp_path / "c.nii", nifti1_bytes(shape=(5, 3, 2), qform_code=1, sform_code=1, srow=srow))
    with pytest.raises(InputError, match="voxel 0.6 mm apart"):
        vm._check_nifti_qform_sform(p, (5, 3, 2))


def test_qform_and_sform_exactly_half_a_millimetre_apart_are_accepted(tmp_path):
    """Origins 0.5 mm apart (exact in float32), the limit itself: accepted. Catches: > made >=."""
    read_volume(_forms_file(tmp_path, "h.nii", 0.0, origin_shift=(0.5, 0.0, 0.0)))


def test_qform_sform_message_rounds_both_origins_to_a_tenth(tmp_path):
    """sform origin (1.04, 2.26, -3.31), qform origin (0, 0, 0), same axes: printed [1.0, 2.3, -3.3] and
    [0.0, 0.0, 0.0], 4.2 mm apart (sqrt(1.04^2 + 2.26^2 + 3.31^2) = 4.14). Catches: the sform origin rounded
    to 0 or 2 decimals."""
    srow = [[1, 0, 0, 1.04], [0, 1, 0, 2.26], [0, 0, 1, -3.31]]
    p = write(tmp_path / "r.nii", nifti1_bytes(qform_code=1, sform_code=1, srow=srow))
    with pytest.raises(InputError) as e:
        vm._check_nifti_qform_sform(p, (4, 3, 2))
    assert "voxel 4.1 mm apart (qform origin [0.0, 0.0, 0.0], sform origin [1.0, 2.3, -3.3] mm, NIfTI RAS)" in message(e)


def test_qform_and_sform_within_half_a_millimetre_are_accepted(tmp_path):
    """0.45 mm apart at the far corner (along one axis) is accepted, and so are 0.35 mm along x and y at
    each of 8 corners (the largest corner distance counts, not a sum over corners or coordinates).
    Catches: the limit made strict (>=) or lowered, norms summed over corners or taken with the 4th
    coordinate."""
    read_volume(_forms_file(tmp_path, "a.nii", 0.45))
    read_volume(_forms_file(tmp_path, "b.nii", 0.0, origin_shift=(0.35, 0.35, 0.0)))


def test_qform_sform_not_checked_on_other_formats_or_with_one_form(tmp_path):
    """A NIfTI file with only one form is read; the forms check looks only at NIfTI files (a MetaImage named
    .mha is not parsed). Catches: the one-form early return dropped (an error on None)."""
    write(tmp_path / "q.nii", nifti1_bytes(qform_code=1, qoffset=(5.0, 6.0, 7.0)))
    v = read_volume(tmp_path / "q.nii")
    np.testing.assert_allclose(v.ijk_to_ras[:3, 3], (5.0, 6.0, 7.0))


def test_qform_sform_check_reads_the_size_of_the_image_it_is_given(tmp_path):
    """Direct call with the image size: forms agreeing at the origin and 0.25 mm apart per k step part by
    0.75 mm at k = 3 of a 4-slice image, by 0.25 mm at k = 1 of a 2-slice one. Catches: the size's first
    three entries not the ones used (a 4th entry read), n - 1 changed, a 1-voxel axis given a last index of 1."""
    srow = [[1, 0, 0, 0.0], [0, 1, 0, 0.0], [0, 0, 1.25, 0.0]]
    p = write(tmp_path / "s.nii", nifti1_bytes(shape=(2, 2, 2), qform_code=1, sform_code=1, srow=srow))
    vm._check_nifti_qform_sform(p, (2, 2, 2))
    vm._check_nifti_qform_sform(p, (2, 2, 2, 9))
    with pytest.raises(InputError):
        vm._check_nifti_qform_sform(p, (2, 2, 4))
    srow = [[1, 0, 0, 0.0], [0, 1, 0, 0.0], [0, 0, 1.75, 0.0]]  # 0.75 mm apart at k = 1
    p = write(tmp_path / "t.nii", nifti1_bytes(shape=(2, 2, 2), qform_code=1, sform_code=1, srow=srow))
    vm._check_nifti_qform_sform(p, (1, 1, 1))  # one voxel: only the origin, where they agree
    with pytest.raises(InputError):
        vm._check_nifti_qform_sform(p, (1, 1, 2))
    vm._check_nifti_qform_sform(tmp_path / "s.nrrd", (9, 9, 9))  # not NIfTI: not even opened


# --------------------------------------------------------------------------- NIfTI completeness


def _truncated_message(p, needed, size):
    return (f"the CT {p} is truncated: its header announces {needed} bytes of image data and header, the file "
            f"holds {size}; copy or export it again")


def _whole_passes_cut_refused(folder: Path, name: str, data: bytes, cut: int, needed: int) -> None:
    """``data`` written whole passes the completeness check; without its last ``cut`` bytes it is refused naming
    ``needed`` bytes announced and what the file holds."""
    vm._check_nifti_complete(write(folder / name, data))
    p = write(folder / ("short_" + name), data[:-cut])
    with pytest.raises(InputError) as e:
        vm._check_nifti_complete(p)
    assert message(e) == _truncated_message(p, needed, len(data) - cut)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("name", ["t.nii", "t.nii.gz"])
def test_nifti_one_byte_short_is_refused_and_complete_one_read(tmp_path, endian, name):
    """4 x 3 x 2 int16 voxels after a 352-byte offset: 352 + 48 = 400 bytes. The complete file reads, one
    byte short (a whole gzip stream of 399 bytes for .nii.gz) is refused naming 400 and 399. Catches: the
    byte order, the dims, bitpix or offset read from the wrong place, the size of a .nii.gz counted
    compressed, < made <=."""
    full = nifti1_bytes(endian=endian)
    assert len(full) == 400
    v = read_volume(write(tmp_path / name, full))
    np.testing.assert_array_equal(v.array.ravel(), np.arange(24))
    p = write(tmp_path / ("short_" + name), full[:-1])
    with pytest.raises(InputError) as e:
        read_volume(p)
    assert message(e) == _truncated_message(p, 400, 399)


def test_nifti_gz_larger_than_the_first_read_is_counted_whole(tmp_path):
    """8 x 8 x 8 int16 = 1024 bytes after 352: the size of a .nii.gz is counted past the header read
    (540 bytes) through every chunk. Catches: only the first chunk or the header counted."""
    full = nifti1_bytes(shape=(8, 8, 8))
    assert len(full) == 1376
    _whole_passes_cut_refused(tmp_path, "big.nii.gz", full, 2, 1376)


def test_nifti_gz_whose_compressed_stream_ends_early_is_refused(tmp_path):
    """Catches: the gzip error not turned into an InputError, or its message lost."""
    z = gzip.compress(nifti1_bytes(shape=(8, 8, 8)))
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(z[: len(z) // 2])
    with pytest.raises(InputError) as e:
        vm._check_nifti_complete(p)
    assert message(e) == f"the CT {p} is truncated or damaged: its compressed data ends early; copy or export it again"
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(z[:20] + b"\xff" * 40 + z[60:])  # corrupt deflate data: zlib.error or BadGzipFile
    with pytest.raises(InputError, match="truncated or damaged"):
        vm._check_nifti_complete(bad)


@pytest.mark.parametrize(
    ("kwargs", "n_bytes", "needed"),
    [
        ({"dim0": 3, "extra_dims": (7, 7, 7, 7)}, 48, 400),  # dims beyond dim[0] are not voxels
        ({"dim0": 4, "extra_dims": (0, 1, 1, 1)}, 48, 400),  # a zero dim counts as 1
        ({"dim0": 4, "extra_dims": (2, 1, 1, 1)}, 96, 448),  # a 4th dim counts
        ({"dim0": 7, "extra_dims": (2, 1, 1, 3)}, 288, 640),  # dims 1..7
        ({"dim0": 9, "extra_dims": (1, 1, 1, 2)}, 96, 448),  # dim[0] over 7 is 7
        ({"dim0": -1}, 2, 354),  # no dims: one voxel
        ({"bitpix": 1, "datatype": 1}, 24, 376),  # 1-bit voxels counted as whole bytes
        ({"bitpix": 64, "datatype": 64}, 192, 544),
    ],
    ids=["dims_past_dim0", "zero_dim", "4d", "7d", "dim0_9", "dim0_negative", "bitpix_1", "bitpix_64"],
)
def test_nifti_size_announced_by_dim_and_bitpix(tmp_path, kwargs, n_bytes, needed):
    """The announced size is offset + product of dim[1..dim[0]] (each at least 1, dim[0] clipped to 0..7) x
    max(bitpix, 8) / 8 bytes, computed here by hand for each header. Exactly that many bytes pass, one fewer
    is refused. Catches: the dim range, the clips, the per-voxel size."""
    data = nifti1_bytes(voxels=b"\0" * n_bytes, **kwargs)
    assert len(data) == needed
    _whole_passes_cut_refused(tmp_path, "ok.nii", data, 1, needed)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nifti2_size_is_read_from_its_64_bit_fields(tmp_path, endian):
    """NIfTI-2: 544 + 4 x 3 x 2 x 2 = 592 bytes. Catches: the NIfTI-2 branch's offsets or formats."""
    data = nifti2_bytes(endian=endian)
    assert len(data) == 592
    _whole_passes_cut_refused(tmp_path, "n2.nii", data, 3, 592)
    p = write(tmp_path / "n2_short.nii.gz", nifti2_bytes(endian=endian, bitpix=8, voxel_bytes=20))
    with pytest.raises(InputError) as e:
        vm._check_nifti_complete(p)
    assert message(e) == _truncated_message(p, 568, 564)


def test_nifti1_header_alone_is_truncated(tmp_path):
    """A file of the 348 header bytes only announces 352 + 48 bytes. Catches: a header of exactly 348 bytes
    not taken for NIfTI-1 (> 348 or >= 349)."""
    p = write(tmp_path / "h.nii", nifti1_bytes()[:348])
    with pytest.raises(InputError) as e:
        vm._check_nifti_complete(p)
    assert message(e) == _truncated_message(p, 400, 348)


def test_negative_bitpix_is_counted_as_one_byte_not_as_a_huge_size(tmp_path):
    """A NIfTI-1 header with bitpix -16 (wrong; ITK reads the voxels by their datatype, int16): the voxel size
    is at least 8 bits, so the complete 400-byte file is read, not refused as truncated. NIfTI-2 likewise
    (direct check), a negative dim[0] there counts as no dims, a negative vox_offset as itself. Catches: bitpix,
    dims or the offset read unsigned."""
    v = read_volume(write(tmp_path / "b.nii", nifti1_bytes(bitpix=-16)))
    np.testing.assert_array_equal(v.array.ravel(), np.arange(24))
    vm._check_nifti_complete(write(tmp_path / "b2.nii", nifti2_bytes(bitpix=-16, voxel_bytes=24)))
    data = bytearray(nifti2_bytes(voxel_bytes=2))
    struct.pack_into("<q", data, 16, -1)  # dim[0] = -1: one voxel of 2 bytes after 544
    vm._check_nifti_complete(write(tmp_path / "d2.nii", bytes(data)))
    with pytest.raises(InputError) as e:
        vm._check_nifti_complete(write(tmp_path / "d2_short.nii", bytes(data[:-1])))
    assert message(e) == _truncated_message(tmp_path / "d2_short.nii", 546, 545)
    data = bytearray(nifti2_bytes())
    struct.pack_into("<q", data, 168, -8)  # vox_offset -8: announces -8 + 48 bytes, fewer than the file holds
    vm._check_nifti_complete(write(tmp_path / "o2.nii", bytes(data)))


def test_nifti_completeness_checks_only_nifti_files_of_any_case(tmp_path):
    """Upper-case suffixes are NIfTI too; other formats and files that are not NIfTI are let through to the
    reader. Catches: the suffix test case-sensitive or inverted, a non-NIfTI header refused."""
    short = nifti1_bytes()[:-1]
    for name in ("T.NII", "T.NII.GZ", "t.Nii.Gz"):
        with pytest.raises(InputError, match="is truncated"):
            vm._check_nifti_complete(write(tmp_path / name, short))
    vm._check_nifti_complete(write(tmp_path / "t.nrrd", short))
    vm._check_nifti_complete(write(tmp_path / "t.nii.bak", short))
    vm._check_nifti_complete(write(tmp_path / "junk.nii", b"\7" * 600))
    vm._check_nifti_complete(write(tmp_path / "tiny.nii", b"\0" * 10))


# --------------------------------------------------------------------------- DICOM series


def test_dicom_series_is_stacked_by_position_with_rescale_and_metadata(tmp_path):
    """Four slices 1 mm apart at z = 10..13, written in reverse file order: stacked by position, stored
    100 n plus intercept -1024, geometry from the first slice. Metadata: the series, the file count and the
    first slice's rescale and modality. Catches: metadata keys or tags changed, taken from slice 1, the
    1 mm spacing taken for a duplicate (typical <= 1)."""
    uid = "1.2.826.0.1.3680043.2.1125.7"
    dicom_series(tmp_path / "s", [(0.0, 0.0, 13.0 - z) for z in range(4)], uid=uid,
                 intercepts=[-1024.0, -1000.0, -1000.0, -1000.0])
    v = read_volume(tmp_path / "s")
    assert v.array.shape == (4, 3, 4)
    # file 0 lies at z = 13, the top: stored 0 there; the lowest slice (z = 10) is file 3, stored 300
    np.testing.assert_array_equal(v.array[:, 0, 0], [300 - 1000, 200 - 1000, 100 - 1000, 0 - 1024])
    expected = np.diag([-0.25, -0.5, 1.0, 1.0])  # columns 0.25 mm along L (RAS -x), rows 0.5 mm along P
    expected[2, 3] = 10.0
    np.testing.assert_allclose(v.ijk_to_ras, expected)
    assert v.metadata == {
        "series_uid": uid, "n_files": 4, "series_instance_uid": uid, "rescale_slope": "1.0",
        "rescale_intercept": "-1000.0", "modality": "CT",
    }


def test_single_file_series_is_refused_as_2d(tmp_path):
    """A folder holding one slice reads as one slice thick: refused for its single slice (not a crash on the
    metadata of a second slice). Catches: metadata read from slice 1."""
    dicom_series(tmp_path / "one", [(0.0, 0.0, 0.0)])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "one")
    assert message(e) == ("the CT has only 1 slice(s) along one axis (shape (1, 3, 4)): "
                          "a 3D volume with at least 2 voxels along each axis is needed for interpolation")


def test_folder_with_two_series_needs_a_choice_and_reads_the_chosen(tmp_path):
    """Two series of 3 slices in one folder: refused naming both, and each read when chosen; an unknown UID is
    refused naming those present. Catches: the several-series test moved to > 2, the chosen UID not passed on,
    the lists joined wrongly."""
    a, b = "1.2.826.0.1.3680043.2.1125.21", "1.2.826.0.1.3680043.2.1125.22"
    folder = tmp_path / "two"
    dicom_series(folder, [(0.0, 0.0, z) for z in (0.0, 1.0, 2.0)], uid=a)
    dicom_series(folder, [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 6.0)], uid=b)
    with pytest.raises(InputError) as e:
        read_volume(folder)
    assert message(e) == f"the folder {folder} holds 2 DICOM series ({a}, {b}): choose one with --series-uid"
    va, vb = read_volume(folder, series_uid=a), read_volume(folder, series_uid=b)
    assert (va.array.shape[0], vb.array.shape[0]) == (3, 4)
    assert (va.metadata["series_uid"], vb.metadata["n_files"]) == (a, 4)
    with pytest.raises(InputError) as e:
        read_volume(folder, series_uid="1.2.3")
    assert message(e) == f"series 1.2.3 is not in {folder}; found: {a}, {b}"


def test_series_uid_given_for_a_folder_of_one_series_is_checked(tmp_path):
    """Naming the series that is there reads it. Catches: the membership test inverted."""
    uid = "1.2.826.0.1.3680043.2.1125.31"
    dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in (0.0, 1.0, 2.0)], uid=uid)
    assert read_volume(tmp_path / "s", series_uid=uid).metadata["series_uid"] == uid


def test_series_the_reader_fails_on_is_refused_with_the_last_line_of_the_error(tmp_path, monkeypatch):
    """When the series reader itself fails (after the slice checks passed), the last line of its error is
    quoted, cut to 200 characters. Catches: another line quoted, the cut moved, the message lost."""

    class FailingSeriesReader(sitk.ImageSeriesReader):
        def Execute(self):  # noqa: N802 (SimpleITK's name)
            raise RuntimeError("Exception thrown in X\nsecond line\nITK ERROR: " + "y" * 300 + "\n")

    fake = type("FakeSitk", (), {"ImageSeriesReader": FailingSeriesReader, "ImageFileReader": sitk.ImageFileReader})
    monkeypatch.setattr(vm, "_sitk", lambda: fake)
    dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in (0.0, 1.0, 2.0)])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e) == f"cannot read the DICOM series in {tmp_path / 's'}: ITK ERROR: " + "y" * 189


def test_folder_without_dicom_is_refused(tmp_path):
    """Catches: the message lost."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("no images\n")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "d")
    assert message(e) == (f"no DICOM series found in folder {tmp_path / 'd'}: point --ct at a folder of DICOM "
                          "slices or at an image file")


@pytest.mark.parametrize(
    ("z", "n_missing", "spacing", "largest"),
    [
        ((10, 11, 13, 14, 15), 1, "1", "2"),
        ((0, 2, 4, 12, 14, 16), 3, "2", "8"),
        ((0, 1, 2, 4, 5, 6, 9, 10), 3, "1", "3"),  # two gaps: 1 + 2 missing
        ((0, 1.5, 3, 6.5, 8), 1, "1.5", "3.5"),  # 3.5 / 1.5 - 1 = 1.33: about 1
        ((0, 0.5, 1, 2, 2.5, 3), 1, "0.5", "1"),  # spacing under 1 mm
    ],
)
def test_series_with_missing_slices_is_refused_with_the_count(tmp_path, z, n_missing, spacing, largest):
    """Gaps over 1.5 x the median spacing are missing slices, counted as round(gap / spacing - 1) summed
    over the gaps. Catches: the gap limit (1.5) moved, the count formula, the sum, the message."""
    dicom_series(tmp_path / "s", [(0.0, 0.0, v) for v in z])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e) == (
        f"the DICOM series has a gap: about {n_missing} slice(s) missing "
        f"(spacing {spacing} mm, largest gap {largest} mm); re-export the complete series"
    )


def test_series_with_a_gap_of_1_5_spacings_is_not_a_missing_slice(tmp_path):
    """A gap of exactly 1.5 x the spacing is not counted as a missing slice; stacked evenly (2.2 mm apart), the
    slices around it lie 0.4 mm from their own positions, a fifth of the 2 mm spacing and a rounding more: refused
    as unequally spaced. Catches: > made >= in the gap rule (the missing-slice message instead)."""
    dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 7.0, 9.0, 11.0)])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e).startswith("the DICOM slices are not equally spaced (gaps 2 to 3 mm): stacked evenly, a slice "
                                 "would lie 0.4 mm from its own position")


def test_series_of_duplicated_positions_is_refused(tmp_path):
    """Six slices at three positions (two series mixed): median gap 0. Catches: <= 0 made < 0."""
    dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in (0, 0, 1, 1, 2, 2)])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e) == "the DICOM series has slices at the same position: it may hold two series mixed together"


def test_three_slice_series_is_checked_and_two_slice_series_not(tmp_path):
    """Three slices drifting sideways 1 mm per 1 mm of height are refused as a gantry tilt; two slices are
    never checked (no spacing to compare). Catches: the file minimum moved to 4 (or <= 3)."""
    dicom_series(tmp_path / "three", [(z, 0.0, z) for z in (0.0, 1.0, 2.0)])
    with pytest.raises(InputError, match="gantry tilt of 45.0 degrees"):
        read_volume(tmp_path / "three")
    files = dicom_series(tmp_path / "two", [(z, 0.0, z) for z in (0.0, 1.0)])
    vm._check_slice_spacing(*vm._slice_headers([str(f) for f in files]))


def test_oblique_series_gaps_are_measured_along_the_slice_normal(tmp_path):
    """Slices of an oblique series (rows along (0, 1, 0), columns along (0, 0, 1): normal +x) placed 1 mm
    apart along x with one missing. Catches: the normal not computed from the orientation (or computed once
    per file, or never), positions read from the wrong tag."""
    dicom_series(tmp_path / "s", [(x, 5.0, 5.0) for x in (0, 1, 2, 4, 5)], orientation=(0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e).startswith("the DICOM series has a gap: about 1 slice(s) missing (spacing 1 mm, largest gap 2 mm)")


def test_damaged_slice_is_refused_by_name(tmp_path):
    """A slice file cut to 10 bytes in a series: refused naming the file. Catches: the message lost."""
    files = dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in (0, 1, 2, 3)])
    files[2].write_bytes(files[2].read_bytes()[:10])
    with pytest.raises(InputError):
        vm._slice_headers([str(f) for f in files])
    with pytest.raises(InputError) as e:
        vm._slice_headers([str(files[0]), str(files[1]), str(files[2])])
    assert message(e) == f"cannot read DICOM file {files[2]}: the file is damaged"


# --------------------------------------------------------------------------- gantry tilt


def _tilt_message(drift, height, angle):
    return (f"the DICOM slices shift sideways by {drift} mm over {height} mm of slices (a gantry tilt of "
            f"{angle} degrees): stacked straight, every voxel would be misplaced; resample the series to an "
            "orthogonal grid first (Slicer's DICOM import with acquisition geometry regularization, or dcm2niix)")


def test_gantry_tilt_message_gives_drift_height_and_angle(tmp_path):
    """Five slices at z = 20..24 (height 4 mm) shifted 0.75 mm along x per slice: drift 3 mm, angle
    atan(3 / 4) = 36.87 degrees. Catches: the height or drift taken between the wrong slices (second or
    second-to-last), the height as a sum, the message."""
    dicom_series(tmp_path / "s", [(0.75 * n, 0.0, 20.0 + n) for n in range(5)])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e) == _tilt_message("3.0", "4.0", "36.9")


def test_gantry_tilt_limit_is_half_a_degree():
    """Drift over 100 mm of height: tan(0.45 deg) passes, tan(0.55 deg) is refused. Catches: the limit
    moved, the normal not normalised (a normal of length 2 here)."""
    normal = np.array([0.0, 0.0, 2.0])
    for degrees, refused in ((0.45, False), (0.55, True)):
        shift = 100.0 * math.tan(math.radians(degrees))
        positions = np.array([[shift * t, 0.0, 100.0 * t] for t in (0.0, 0.5, 1.0)])
        if refused:
            with pytest.raises(InputError) as e:
                vm._check_gantry_tilt(positions, normal)
            assert message(e) == _tilt_message(f"{shift:.1f}", "100.0", "0.6")
        else:
            vm._check_gantry_tilt(positions, normal)


def test_gantry_tilt_of_exactly_half_a_degree_is_accepted():
    """The limit is the largest angle accepted: a drift whose angle over 100 mm computes to exactly 0.5 degrees
    (found here by stepping through floats next to 100 tan(0.5 deg)) passes. Catches: > made >=."""
    d0 = 100.0 * math.tan(math.radians(0.5))
    drifts = [d0 + s * float(np.spacing(d0)) for s in range(-200, 201)]
    exact = [d for d in drifts if float(np.degrees(np.arctan2(d, 100.0))) == 0.5]
    if not exact:
        pytest.skip("no float drift gives exactly 0.5 degrees with this arctan2")
    vm._check_gantry_tilt(np.array([[0.0, 0.0, 0.0], [exact[0], 0.0, 100.0]]), np.array([0.0, 0.0, 1.0]))


def test_gantry_tilt_of_positions_in_any_order():
    """Positions given top first: sorted along the normal before the first and last are compared.
    Catches: the sort dropped."""
    positions = np.array([[2.0, 0.0, 2.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.5, 0.0, 1.5]])
    with pytest.raises(InputError) as e:
        vm._check_gantry_tilt(positions, np.array([0.0, 0.0, 1.0]))
    assert message(e) == _tilt_message("2.0", "2.0", "45.0")


def test_gantry_tilt_not_judged_without_height():
    """All slices at one height (but spread sideways): no tilt judged here (the duplicate check refuses them).
    Slices 0.5 mm apart over 1 mm with a 1 mm drift are a tilt. Catches: <= 0 made < 0 or <= 1."""
    vm._check_gantry_tilt(np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 5.0], [2.0, 0.0, 5.0]]), np.array([0.0, 0.0, 1.0]))
    with pytest.raises(InputError) as e:
        vm._check_gantry_tilt(np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [1.0, 0.0, 1.0]]), np.array([0.0, 0.0, 1.0]))
    assert message(e) == _tilt_message("1.0", "1.0", "45.0")


# --------------------------------------------------------------------------- slices of another orientation


def _localizer(folder: Path, name: str, position, orientation=(1, 0, 0, 0, 0, -1), rows=3, cols=4) -> Path:
    """One slice of another orientation (a coronal localizer by default) saved with the series' UID, under its
    own instance UID and file name."""
    import pydicom

    made = dicom_series(folder / "_loc", [position], orientation=orientation, rows=rows, cols=cols)
    ds = pydicom.dcmread(made[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1.999"
    ds.InstanceNumber = 999
    ds.PixelData = np.full((rows, cols), 3000, dtype="<i2").tobytes()
    target = folder / name
    save_dicom(ds, target)
    made[0].unlink()
    (folder / "_loc").rmdir()
    return target


@pytest.mark.parametrize("name", ["000_localizer.dcm", "1_004b_localizer.dcm", "zz_localizer.dcm"])
def test_localizer_saved_with_the_series_is_left_out_with_a_warning(tmp_path, name):
    """Ten axial slices 2 mm apart (stored 100 n in slice n) and a coronal localizer (stored 3000) with the same
    series UID, its file sorting first, among the slices or last. The CT is the ten slices: 2 mm apart, in
    position order, no voxel of the localizer, and the warning names the file. Catches: the orientations not
    compared (11 slices 1.8 mm apart), the localizer kept, the kept slices not sorted by position."""
    folder = tmp_path / "s"
    dicom_series(folder, [(0.0, 0.0, 2.0 * n) for n in range(10)])
    _localizer(folder, name, (0.0, 5.0, 9.0))
    v = read_volume(folder)
    assert v.array.shape[0] == 10
    assert v.spacing_mm[2] == pytest.approx(2.0, abs=1e-9)
    # HU = 100 n - 1024 in slice n at z = 2 n: the k axis runs along z from slice 0
    assert [float(v.array[k].mean()) for k in range(10)] == [100.0 * n - 1024.0 for n in range(10)]
    assert np.allclose(v.ijk_to_ras[:3, 3], [0.0, 0.0, 0.0])
    assert v.metadata["n_files"] == 10
    assert v.metadata["left_out_slices"] == 1
    assert vm.geometry_warnings(v) == [
        "1 DICOM file(s) of the series have another slice orientation than its other slices (a localizer or scout "
        f"image saved with the series, e.g. {name}): they were left out of the CT"
    ]


def test_series_of_one_orientation_keeps_every_file_in_its_order_and_warns_nothing(tmp_path):
    """Five slices whose cosines differ by at most the tolerance (1e-3) are one orientation: every file kept, in
    the reader's order, no warning. Catches: the tolerance made strict (< for <=) or zero, a series of one
    orientation re-sorted or counted as leaving files out."""
    dys = [0.0, 0.001, 0.0, 0.0005, 0.001]  # 0.001 - 0 is exactly the tolerance in doubles
    files = dicom_series(tmp_path / "s", [(0.0, 0.0, float(n)) for n in range(5)],
                         orientations=[(1, 0, 0, 0, 1, dy) for dy in dys])
    positions, orientations = vm._slice_headers([str(f) for f in reversed(files)])
    metadata: dict = {}
    assert vm._slices_of_one_orientation([str(f) for f in reversed(files)], positions, orientations, metadata) == [
        0, 1, 2, 3, 4]
    assert metadata == {}


def test_cosines_just_over_the_tolerance_are_another_orientation(tmp_path):
    """Four slices and one whose column cosine is 0.0011 off (over 1e-3): that one is left out. Catches: the
    largest cosine difference not taken (a mean, or one component only), the tolerance made larger."""
    paths = dicom_series(tmp_path / "s", [(0.0, 0.0, float(n)) for n in range(5)],
                         orientations=[(1, 0, 0, 0, 1, 0.0011 if n == 2 else 0.0) for n in range(5)])
    names = [str(p) for p in paths]
    metadata: dict = {}
    kept = vm._slices_of_one_orientation(names, *vm._slice_headers(names), metadata)
    assert kept == [0, 1, 3, 4]
    assert metadata == {"left_out_slices": 1, "left_out_example": paths[2].name}


def test_slices_are_sorted_along_the_normal_of_the_kept_orientation(tmp_path):
    """An oblique series (normal +x) given out of order with one localizer: the kept slices are ordered by their
    position along +x, not by z nor by file order. Catches: sorted by the wrong coordinate or not at all."""
    xs = [3.0, 0.0, 2.0, 1.0]
    paths = dicom_series(tmp_path / "s", [(x, 5.0, 10.0 - x) for x in xs] + [(0.0, 0.0, 0.0)],
                         orientations=[(0, 1, 0, 0, 0, 1)] * 4 + [(1, 0, 0, 0, 1, 0)])
    names = [str(p) for p in paths]
    metadata: dict = {}
    assert vm._slices_of_one_orientation(names, *vm._slice_headers(names), metadata) == [1, 3, 2, 0]
    assert metadata["left_out_slices"] == 1


def test_two_orientations_of_equal_count_are_refused(tmp_path):
    """Three axial and three coronal slices under one series UID: which is the CT cannot be told. Catches: the
    first group taken silently."""
    folder = tmp_path / "s"
    dicom_series(folder, [(0.0, 0.0, float(n)) for n in range(3)])
    for n in range(3):
        _localizer(folder, f"loc{n}.dcm", (0.0, float(n), 0.0)).rename(folder / f"loc{n}.dcm")
    import pydicom

    for n in range(3):  # each its own instance
        ds = pydicom.dcmread(folder / f"loc{n}.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.1.99{n}"
        save_dicom(ds, folder / f"loc{n}.dcm")
    with pytest.raises(InputError) as e:
        read_volume(folder)
    assert message(e) == (
        "the DICOM series mixes slice orientations: 3 slices of one and 3 of another (2 orientations in 6 files), "
        "so which is the CT is unclear; export the CT's slices alone, or give a folder that holds only them"
    )


def test_slice_without_orientation_among_oriented_ones_is_left_out(tmp_path):
    """Four oriented slices and one without ImageOrientationPatient (a secondary capture saved with the series):
    that one is left out; a series where no slice has it is one group. Catches: a missing orientation grouped
    with a present one, or raising."""
    import pydicom

    paths = dicom_series(tmp_path / "s", [(0.0, 0.0, float(n)) for n in range(5)])
    ds = pydicom.dcmread(paths[4])
    del ds.ImageOrientationPatient
    save_dicom(ds, paths[4])
    names = [str(p) for p in paths]
    positions, orientations = vm._slice_headers(names)
    assert orientations[4] is None and orientations[0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert positions[3].tolist() == [0.0, 0.0, 3.0]
    metadata: dict = {}
    assert vm._slices_of_one_orientation(names, positions, orientations, metadata) == [0, 1, 2, 3]
    assert metadata["left_out_example"] == paths[4].name
    assert vm._slices_of_one_orientation(names[:2], [None, None], [None, None], {}) == [0, 1]


def test_a_position_that_is_not_numbers_is_refused_by_name(tmp_path):
    """ImagePositionPatient written as text that is not numbers: refused naming the file (ITK's header read
    fails on it), not a ValueError from the conversion. Catches: the tags converted before the header is read."""
    import pydicom

    paths = dicom_series(tmp_path / "s", [(0.0, 0.0, float(n)) for n in range(3)])
    ds = pydicom.dcmread(paths[1])
    ds["ImagePositionPatient"].VR = "LO"
    ds.ImagePositionPatient = "left\\up\\here"
    save_dicom(ds, paths[1])
    with pytest.raises(InputError) as e:
        vm._slice_headers([str(p) for p in paths])
    # SimpleITK 2.5 refuses the file when reading its header; older versions read it and the tag is refused
    assert message(e) in (f"cannot read DICOM file {paths[1]}: the file is damaged",
                          f"cannot read DICOM file {paths[1]}: its tag 0020|0032 is not a list of numbers (left\\up\\here)")


def test_dicom_numbers_are_read_or_refused_by_file_and_tag():
    """Numbers split at backslashes, an empty or blank value as none, text refused naming the file, the tag and the
    value. Catches: the split character, the blank test, the message."""
    assert vm._dicom_numbers("1\\-2.5\\3e1", "f.dcm", "0020|0032").tolist() == [1.0, -2.5, 30.0]
    assert vm._dicom_numbers("", "f.dcm", "0020|0032") is None
    assert vm._dicom_numbers("  ", "f.dcm", "0020|0032") is None
    with pytest.raises(InputError) as e:
        vm._dicom_numbers(" left\\up ", "f.dcm", "0020|0037")
    assert message(e) == "cannot read DICOM file f.dcm: its tag 0020|0037 is not a list of numbers (left\\up)"
    with pytest.raises(InputError) as e:  # a long value is quoted to its first 40 characters
        vm._dicom_numbers("x" * 39 + "yz", "f.dcm", "0020|0032")
    assert message(e).endswith("(" + "x" * 39 + "y)")


def test_two_files_of_two_orientations_are_refused(tmp_path):
    """A folder of two slices under one series UID, one axial and one coronal: refused as two orientations of
    equal count. Catches: the headers read only from three files on (two slices stacked as a CT)."""
    folder = tmp_path / "s"
    dicom_series(folder, [(0.0, 0.0, 0.0)])
    _localizer(folder, "loc.dcm", (0.0, 2.0, 0.0))
    with pytest.raises(InputError, match=r"mixes slice orientations: 1 slices of one and 1 of another \(2 orientations in 2 files\)"):
        read_volume(folder)


def test_spacing_check_without_any_orientation_checks_nothing():
    """Positions but no ImageOrientationPatient in any slice: no normal to measure gaps along, so nothing is
    refused, even with a 10 mm gap. Catches: the search for a normal raising when none is found."""
    positions = [np.array([0.0, 0.0, z]) for z in (0.0, 1.0, 11.0)]
    assert vm._check_slice_spacing(positions, [None, None, None]) is None


def test_kept_slices_are_not_sorted_without_an_orientation_or_every_position():
    """The kept group has no orientation (three slices without it, one localizer with one), or one of its slices
    has no position: the kept slices stay in the reader's order. Catches: the sort tried on a missing
    orientation or a missing position (an exception), either of the two conditions dropped."""
    axial = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    coronal = np.array([1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    pos = [np.array([0.0, 0.0, z]) for z in (2.0, 0.0, 1.0, 5.0)]
    files = ["a.dcm", "b.dcm", "c.dcm", "loc.dcm"]
    assert vm._slices_of_one_orientation(files, pos, [None, None, None, coronal], {}) == [0, 1, 2]
    no_position = [pos[0], None, pos[2], pos[3]]
    assert vm._slices_of_one_orientation(files, no_position, [axial, axial, axial, coronal], {}) == [0, 1, 2]
    assert vm._slices_of_one_orientation(files, pos, [axial, axial, axial, coronal], {}) == [1, 2, 0]


# --------------------------------------------------------------------------- unequal slice spacing


def test_unequally_spaced_series_is_refused_with_the_misplacement(tmp_path):
    """Slices at z = 0, 1, 2, 3, 4.4, 5.8, 7.2 mm (gaps 1 and 1.4, none 1.5 times the median 1.2): stacked evenly
    from first to last (1.2 mm apart) slice 3 would lie at 3.6, 0.6 mm from its own 3. Catches: no check of the
    evenness (ITK reads it as 7 slices 1.2 mm apart without a word)."""
    dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in (0, 1, 2, 3, 4.4, 5.8, 7.2)])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "s")
    assert message(e) == (
        "the DICOM slices are not equally spaced (gaps 1 to 1.4 mm): stacked evenly, a slice would lie 0.6 mm from its "
        "own position; resample the series to a regular grid first (Slicer's DICOM import with acquisition geometry "
        "regularization, or dcm2niix)"
    )


def _positions(zs):
    return [np.array([0.0, 0.0, z]) for z in zs], [np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])] * len(zs)


def test_misplacement_of_exactly_a_fifth_of_the_spacing_is_accepted_and_more_refused():
    """z = 0, 5, 10, 16, 20 mm: the evenly stacked slice 3 lies at 15, 1.0 mm off, exactly a fifth of the 5 mm
    median gap: accepted; 16.0001: refused. Catches: <= made <, the share or the spacing it multiplies changed,
    the even positions not spread from the first to the last slice."""
    assert vm._check_slice_spacing(*_positions([0.0, 5.0, 10.0, 16.0, 20.0])) is None
    with pytest.raises(InputError, match=r"not equally spaced \(gaps 4 to 6 mm\).* lie 1 mm from"):
        vm._check_slice_spacing(*_positions([0.0, 5.0, 10.0, 16.0001, 20.0]))


def test_positions_rounded_to_a_tenth_of_a_millimetre_are_accepted(tmp_path):
    """0.625 mm slices whose positions a scanner wrote to one decimal (0, 0.6, 1.2, 1.9, 2.5, ...: up to 0.05 mm
    off): read, 16 slices 0.625 mm apart. Catches: a tolerance so tight that rounded positions are refused."""
    zs = [round(0.625 * n, 1) for n in range(16)]
    dicom_series(tmp_path / "s", [(0.0, 0.0, z) for z in zs])
    v = read_volume(tmp_path / "s")
    assert v.array.shape[0] == 16
    assert v.spacing_mm[2] == pytest.approx(9.4 / 15, abs=1e-9)
