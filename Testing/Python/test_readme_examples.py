"""Every example in README.md runs as written.

The README's fenced code blocks are read from the file: each ```python block
is executed, and each command-line block marked ``<!-- readme-test: cli ... -->``
is run through the program's entry point, in a temporary folder that holds
the files the examples name (``ct.nrrd``, ``stem.stl``, ``registration.tfm``),
made by ``implant-bone-contact demo``. A block that cannot run here (3D
Slicer, make targets, program output) carries a marker
``<!-- readme-test: not run (reason) -->`` on the line before it; a block
with neither is a test failure, so no example is skipped silently.

The examples that run need the demo's files (a full default analysis, about
a minute on a shared machine) and are marked slow.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from ibc_helpers import REPO
from ImplantBoneContactLib.cli import main

README = REPO / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (?P<kind>cli|not run)\b(?P<rest>.*)-->\s*$")
#: What the README's command-line synopsis stands for, filled in to run it.
PLACEHOLDERS = {
    # the follow-up example compares the analysis just made with itself (no change anywhere)
    "BASELINE_RESULT": "results",
    "FOLLOWUP_RESULT": "results",
    "MANIFEST.csv --out DIR": "manifest.csv --out cohort_out",
    "[--workers N] [--scheduler tcp://HOST:PORT] [--shard I/N]   (see Cohorts)": "--workers 1",
    "CT": "ct.nrrd",
    "STEM.stl": "stem.stl",
    "DIR": "demo_again",
    "[--metal] [--voxel MM] [--side left|right]": "--voxel 2.0 --side right",
}


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None  # "cli", "not run" or None
    reason: str

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        marker = MARKER.match(lines[start - 1]) if start > 0 else None
        blocks.append(
            Block(
                line=start + 1,
                language=m.group(1),
                code="\n".join(lines[start + 1 : j]) + "\n",
                marker=marker.group("kind") if marker else None,
                reason=marker.group("rest").strip(" ()") if marker else "",
            )
        )
        i = j + 1
    return blocks


BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.language == "python" and b.marker is None]
CLI = [b for b in BLOCKS if b.marker == "cli"]


def test_every_block_is_run_or_says_why() -> None:
    assert len(PYTHON) >= 2 and len(CLI) >= 1
    for b in BLOCKS:
        if b.marker == "not run":
            assert b.reason, f"{b.id}: a block that is not run must say why"
        else:
            assert b.marker == "cli" or b.language == "python", f"{b.id}: neither a Python example nor marked (cli / not run)"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the files the examples name, made by ``implant-bone-contact demo``."""
    d = tmp_path_factory.mktemp("readme")
    assert main(["demo", "--out", str(d / "demo"), "--voxel", "1.5", "--no-pictures", "--quiet"]) == 0
    shutil.copy(d / "demo" / "phantom_ct.nrrd", d / "ct.nrrd")
    shutil.copy(d / "demo" / "phantom_stem.stl", d / "stem.stl")
    sitk.WriteTransform(sitk.Euler3DTransform(), str(d / "registration.tfm"))  # the stem is already in place
    (d / "manifest.csv").write_text("case_id,ct,model\none,ct.nrrd,stem.stl\n", encoding="utf-8")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example_runs_as_written(block: Block, workdir: Path, monkeypatch, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    monkeypatch.chdir(run)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block.code, block.id, "exec"), namespace)
    result = namespace["result"]
    zones = result.zones.set_index("zone")
    assert np.isfinite(zones.loc["all", "hu_mean"])
    assert zones.loc["all", "frac_cortical"] > 0.1  # the phantom stem touches cortex
    if "save_result" in block.code:
        assert pd.read_csv(run / "results" / "zones.csv").shape[0] == 15


@pytest.mark.slow
@pytest.mark.parametrize("block", CLI, ids=[b.id for b in CLI])
def test_command_line_example_runs(block: Block, workdir: Path, monkeypatch, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    monkeypatch.chdir(run)
    for line in block.code.strip().splitlines():
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value)
        argv = shlex.split(line)
        assert argv[0] == "implant-bone-contact"
        # --remesh fast and no pictures keep the test quick; the options shown are all used as written.
        extra = ["--no-pictures", "--quiet"] + (["--remesh", "fast", "--points", "2000"] if argv[1] == "analyze" else [])
        assert main(argv[1:] + extra) == 0, line
    assert (run / "results" / "zones.csv").is_file()
    assert (run / "demo_again" / "results" / "zones.csv").is_file()
    if "cohort" in block.code:
        assert (run / "cohort_out" / "cohort_cases.csv").is_file()
    if "compare" in block.code:
        assert (run / "change").is_dir()


def test_coordinate_forms_in_the_readme_parse_alike() -> None:
    """README: ``--axis -15,3,-60:-12,5,-190`` and ``--axis=-15,3,-60:-12,5,-190`` are the same."""
    from ImplantBoneContactLib.cli import _join_coordinate_values, build_parser, parameters_from_args

    text = README.read_text(encoding="utf-8")
    forms = re.findall(r"`(--axis[ =]-15,3,-60:-12,5,-190)`", text)
    assert len(forms) == 2
    base = ["analyze", "--ct", "ct.nrrd", "--model", "stem.stl", "--out", "r"]
    parsed = [parameters_from_args(build_parser().parse_args(_join_coordinate_values(base + shlex.split(f)))) for f in forms]
    assert parsed[0].axis == parsed[1].axis == ((-15.0, 3.0, -60.0), (-12.0, 5.0, -190.0))
