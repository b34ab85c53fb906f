"""Shared fixtures: the real data folder and phantoms built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings
from ibc_helpers import frame_parameters, shared_data_dir
from ImplantBoneContactLib import AnalysisParameters, FemurPhantom, PhantomSpec, analyze

# The same hypothesis examples on every run, so the suite passes or fails the same way for the same code;
# IBC_HYPOTHESIS=explore draws new random examples each run (TESTING.md).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("IBC_HYPOTHESIS", "repeatable"))


@pytest.fixture(autouse=True)
def _skip_pictures_where_vtk_cannot_render(monkeypatch):
    """Where this VTK cannot render offscreen (the numpy 1.26 environment's VTK 9.3 wheel on a machine without a
    display), a test that draws the 3D pictures is skipped with the reason instead of failing on the refusal."""
    from ImplantBoneContactLib.plots import render

    reason = render.rendering_unavailable_reason()
    if reason is not None:

        def skip_test():
            pytest.skip(reason)

        monkeypatch.setattr(render, "offscreen_window", skip_test)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real test data not found at {d} (set IBC_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def phantom() -> FemurPhantom:
    """Left femur phantom, 1.0 mm voxels, no noise: small and fast."""
    return FemurPhantom(PhantomSpec(voxel_mm=1.0))


@pytest.fixture(scope="session")
def phantom_ct(phantom):
    return phantom.make_ct()


@pytest.fixture(scope="session")
def phantom_stem(phantom):
    return phantom.make_stem_surface()


@pytest.fixture(scope="session")
def phantom_files(phantom, tmp_path_factory) -> dict:
    """The phantom written as a user gets it: ``phantom_ct.nrrd``, ``phantom_stem.stl`` (LPS) and its truth.
    Read only: a test that changes a file copies it first."""
    return phantom.write(tmp_path_factory.mktemp("phantom_files"))


@pytest.fixture(scope="session")
def phantom_result(phantom, phantom_ct, phantom_stem):
    """Default analysis of the phantom with the phantom's true frame (6000 points)."""
    return analyze(phantom_ct, phantom_stem, AnalysisParameters(points=6000, **frame_parameters(phantom.true_frame())))
