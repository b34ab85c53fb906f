"""Paths no other test reaches: the command line running out of memory.

A MemoryError is planted where the memory goes in a real run: in the surface
sampling (the largest arrays: points x profile offsets x 8 voxel corners) and
in writing the tables. Each must end as the other failures do: one line on
stderr that says what to do, exit code 2, and no result folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ImplantBoneContactLib import analysis, export, write_volume
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
