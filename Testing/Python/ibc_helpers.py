"""Helpers shared by the tests (importable as ``ibc_helpers``)."""

from __future__ import annotations

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
