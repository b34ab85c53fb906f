"""Paths no other test reaches: the command line running out of memory; a DICOM series whose
rescale slope is not 1, written here.

A MemoryError is planted where the memory goes in a real run: in the surface
sampling (the largest arrays: points x profile offsets x 8 voxel corners) and
in writing the tables. Each must end as the other failures do: one line on
stderr that says what to do, exit code 2, and no result folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ImplantBoneContactLib import analysis, export, read_volume, write_volume
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.mesh import write_polydata


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, phantom_ct, phantom_stem) -> Path:
    d = tmp_path_factory.mktemp("oom_inputs")
    write_volume(phantom_ct, d / "ct.nrrd")
    write_polydata(phantom_stem, d / "stem.stl", space="LPS")
    return d


def _no_memory(*args, **kwargs):
    raise MemoryError()


@pytest.mark.parametrize("where", ["sampling", "writing"])
def test_out_of_memory_is_one_line_exit_2_and_nothing_written(inputs, tmp_path, monkeypatch, capfd, where):
    """Catches: the MemoryError branch of main() removed (a traceback, exit 1), a message without the
    remedy, a half-written result folder left behind."""
    if where == "sampling":
        monkeypatch.setattr(analysis, "sample_surface", _no_memory)
    else:
        monkeypatch.setattr(export, "write_csv", _no_memory)
    out = tmp_path / "result"
    code = main(["analyze", "--ct", str(inputs / "ct.nrrd"), "--model", str(inputs / "stem.stl"), "--out", str(out),
                 "--remesh", "none", "--no-pictures", "--quiet"])
    captured = capfd.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert lines == ["implant-bone-contact: error: out of memory; try fewer --points or a cropped CT"], captured.err
    assert captured.out == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no hidden staging folder either


# ---------------------------------------------------------------- DICOM rescale slope


def _write_ct_series(folder: Path, raw: np.ndarray, slope: float, intercept: float, spacing=(0.7, 0.8, 2.5),
                     origin_lps=(-40.0, -30.0, 100.0)) -> None:
    """A CT series written with pydicom: one uncompressed file per slice, stored values ``raw`` (uint16),
    axial, rows along +y (LPS) and columns along +x, slices 2.5 mm apart along +z."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series = generate_uid(), generate_uid()
    dx, dy, dz = spacing
    for k in range(raw.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Slope^Test", "slope-test"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], origin_lps[2] + k * dz]
        ds.PixelSpacing = [dy, dx]  # row spacing, column spacing
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = raw.shape[1], raw.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = pydicom.valuerep.DSfloat(slope), intercept, "HU"
        ds.PixelData = np.ascontiguousarray(raw[k], dtype="<u2").tobytes()
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
        else:  # pydicom 2.x (the Python 3.9 environment): the encoding is set on the dataset
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(folder / f"slice{k:03d}.dcm", write_like_original=False)


@pytest.mark.parametrize("slope, intercept", [(0.5, -1000.0), (2.0, -2048.0), (1.0, -1024.0)])
def test_dicom_rescale_slope_and_intercept_give_the_hu(tmp_path, slope, intercept):
    """HU = stored value x RescaleSlope + RescaleIntercept, on every voxel, for slopes other than 1
    (the shared series has slope 1). Catches: the slope ignored, applied after a rounding to integers
    (0.5 x odd values), the intercept applied before the slope, the slices stacked out of order."""
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 4096, size=(4, 6, 5)).astype(np.uint16)
    raw[0, 0, 0], raw[1, 2, 3] = 1, 4095  # an odd value (half HU at slope 0.5) and the largest
    _write_ct_series(tmp_path, raw, slope, intercept)
    vol = read_volume(tmp_path)
    assert vol.array.shape == raw.shape
    np.testing.assert_array_equal(np.asarray(vol.array, dtype=np.float64), raw * slope + intercept)
    assert float(vol.metadata["rescale_slope"]) == slope
    # Geometry: voxel (i, j, k) at LPS (x0 + 0.7 i, y0 + 0.8 j, z0 + 2.5 k), i.e. RAS (-x, -y, z).
    i, j, k = 4, 5, 3
    np.testing.assert_allclose(vol.ijk_to_ras @ [i, j, k, 1.0], [40.0 - 0.7 * i, 30.0 - 0.8 * j, 100.0 + 2.5 * k, 1.0], atol=1e-6)
