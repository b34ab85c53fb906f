"""CT reading: geometry and HU checked against independent readings of the same files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from ibc_helpers import rotation, shared_file
from ImplantBoneContactLib import InputError, Volume, read_volume, write_volume
from ImplantBoneContactLib.volume import LPS_TO_RAS, geometry_warnings


def _nifti_header_ijk_to_ras(path) -> np.ndarray:
    """IJK-to-RAS from the raw NIfTI-1 header bytes (sform if set, else qform), per the NIfTI-1 standard."""
    b = gzip.open(path).read(352)
    qform_code, sform_code = np.frombuffer(b[252:256], "<i2")
    pixdim = np.frombuffer(b[76:108], "<f4").astype(float)
    m = np.eye(4)
    if sform_code > 0:
        m[:3, :] = np.frombuffer(b[280:328], "<f4").reshape(3, 4)
        return m
    assert qform_code > 0
    qb, qc, qd, qx, qy, qz = np.frombuffer(b[256:280], "<f4").astype(float)
    qa = np.sqrt(max(0.0, 1.0 - (qb * qb + qc * qc + qd * qd)))
    r = np.array(
        [
            [qa * qa + qb * qb - qc * qc - qd * qd, 2 * (qb * qc - qa * qd), 2 * (qb * qd + qa * qc)],
            [2 * (qb * qc + qa * qd), qa * qa + qc * qc - qb * qb - qd * qd, 2 * (qc * qd - qa * qb)],
            [2 * (qb * qd - qa * qc), 2 * (qc * qd + qa * qb), qa * qa + qd * qd - qc * qc - qb * qb],
        ]
    )
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    m[:3, :3] = r * np.array([pixdim[1], pixdim[2], qfac * pixdim[3]])
    m[:3, 3] = [qx, qy, qz]
    return m


@pytest.mark.parametrize("name", ["pelvis_ct_with_femoral_implant.nii.gz", "head_ct.nii.gz"])
def test_nifti_geometry_matches_header(name):
    path = shared_file(name)
    vol = read_volume(path)
    np.testing.assert_allclose(vol.ijk_to_ras, _nifti_header_ijk_to_ras(path), atol=1e-4)


def test_pelvis_flipped_direction_and_values():
    """The pelvis NIfTI has a RAS sform, i.e. a flipped (-1, -1, 1) direction in ITK's LPS."""
    path = shared_file("pelvis_ct_with_femoral_implant.nii.gz")
    vol = read_volume(path)
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert np.all(np.diag(vol.ijk_to_ras)[:3] > 0)  # RAS axes run along +i, +j, +k
    assert vol.array.dtype == np.int32  # kept as stored, no float copy
    assert vol.array.shape == (112, 101, 122)
    assert vol.array.max() == 3382  # the metal implant, as the data README says
    # Voxel (i, j, k) = (10, 20, 30) lands where the sform says.
    expected = _nifti_header_ijk_to_ras(path) @ np.array([10, 20, 30, 1.0])
    np.testing.assert_allclose(vol.ijk_to_ras @ np.array([10, 20, 30, 1.0]), expected, atol=1e-4)


def test_dicom_series_geometry_and_rescale_against_pydicom(shared_data):
    pydicom = pytest.importorskip("pydicom")
    folder = shared_data / "abdomen_ct_dicom"
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    datasets.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    first = np.array(datasets[0].ImagePositionPatient, dtype=float)
    last = np.array(datasets[-1].ImagePositionPatient, dtype=float)
    dr, dc = (float(v) for v in datasets[0].PixelSpacing)  # row spacing, column spacing
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = (last - first) / (len(datasets) - 1)
    lps[:3, 3] = first
    vol = read_volume(folder)
    np.testing.assert_allclose(vol.ijk_to_ras, LPS_TO_RAS @ lps, atol=1e-4)
    assert vol.array.shape == (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    assert str(datasets[0].file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    # Rescale applied: every voxel is pydicom's decoded pixel times the slope plus the intercept (-1024).
    assert float(datasets[0].RescaleIntercept) == -1024
    full = sorted((pydicom.dcmread(f) for f in folder.iterdir()),
                  key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in full])
    np.testing.assert_array_equal(vol.array, expected)
    assert vol.array.min() == -1024
    assert vol.metadata["series_instance_uid"] == str(datasets[0].SeriesInstanceUID)


def test_dicom_rescale_slope_is_applied(shared_data, tmp_path):
    """The shared series has slope 1; the same files with slope 2 and intercept -2048 read as twice the HU
    (2 * raw - 2048 = 2 * (raw - 1024)), the pixel data untouched."""
    pydicom = pytest.importorskip("pydicom")
    folder = shared_data / "abdomen_ct_dicom"
    for f in sorted(folder.iterdir()):
        d = pydicom.dcmread(f)
        d.RescaleSlope, d.RescaleIntercept = 2, -2048
        d.save_as(tmp_path / f.name)
    original = read_volume(folder)
    doubled = read_volume(tmp_path)
    np.testing.assert_array_equal(doubled.array, 2.0 * original.array.astype(np.float64))
    np.testing.assert_allclose(doubled.ijk_to_ras, original.ijk_to_ras)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_round_trip_keeps_oblique_geometry_and_type(tmp_path, suffix):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 2000, size=(7, 9, 11)).astype(np.int16)
    m = np.eye(4)
    m[:3, :3] = rotation("z", 20) @ rotation("x", -10) @ np.diag([0.7, 0.8, 1.5])
    m[:3, 3] = [-12.5, 40.0, 101.0]
    write_volume(Volume(array, m), tmp_path / f"ct{suffix}")
    back = read_volume(tmp_path / f"ct{suffix}")
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.ijk_to_ras, m, atol=1e-5)


def test_nrrd_space_is_written_as_lps(tmp_path):
    """NRRD files written here say 'left-posterior-superior' and Slicer reads them the same way."""
    m = np.diag([0.5, 0.6, 2.0, 1.0])
    m[:3, 3] = [10, 20, 30]
    write_volume(Volume(np.zeros((3, 4, 5), np.int16), m), tmp_path / "a.nrrd", compress=False)
    header = (tmp_path / "a.nrrd").read_bytes().split(b"\n\n")[0].decode()
    assert "space: left-posterior-superior" in header
    assert "space origin: (-10,-20,30)" in header.replace(" ", "").replace("spaceorigin:", "space origin: ")


def test_in_memory_volume_rejects_2d_rgb_and_singular():
    with pytest.raises(InputError, match="3D"):
        Volume(np.zeros((5, 5)), np.eye(4))
    with pytest.raises(InputError, match="RGB"):
        Volume(np.zeros((5, 5, 5, 3)), np.eye(4))
    with pytest.raises(InputError, match="singular"):
        Volume(np.zeros((5, 5, 5)), np.diag([1.0, 0.0, 1.0, 1.0]))


def test_missing_and_2d_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope.nrrd")
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "slice.nrrd")


def test_real_series_with_a_localizer_saved_in_it_reads_as_the_series_alone(tmp_path):
    """The real JPEG 2000 series (20 axial slices) and a copy of one slice turned into a sagittal localizer
    (ImageOrientationPatient, position and instance UID changed; the same series UID, rows and columns): the
    CT read is the 20 slices, voxel for voxel and with the geometry of the series read alone, and the
    warning names the localizer's file. Without the orientation check ITK stacks it in as a 21st slice."""
    import shutil

    import pydicom
    from pydicom.uid import generate_uid

    source = shared_file("abdomen_ct_dicom")
    files = sorted(p for p in source.iterdir() if p.is_file())
    folder = tmp_path / "dicom"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    ds = pydicom.dcmread(files[7])
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    ds.ImagePositionPatient = [0.0, -250.0, float(ds.ImagePositionPatient[2]) + 1.0]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "localizer.dcm")

    alone = read_volume(source)
    with_localizer = read_volume(folder)
    assert with_localizer.array.shape == alone.array.shape == (20, 512, 512)
    assert np.array_equal(with_localizer.array, alone.array)
    assert np.allclose(with_localizer.ijk_to_ras, alone.ijk_to_ras, atol=1e-9)
    assert "1 DICOM file(s) of the series have another slice orientation" in " ".join(geometry_warnings(with_localizer))
    assert "localizer.dcm" in with_localizer.metadata["left_out_example"]
