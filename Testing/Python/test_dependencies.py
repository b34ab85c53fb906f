"""The Slicer module's dependency check (versions, not presence) and the lazy package import.

``dependencies.py`` compares versions without the ``packaging`` package (Slicer 5.8 does not
promise it); where ``packaging`` is installed it is the independent reference. These tests
need neither Slicer nor slicer-core, so they run in the Python 3.9 + numpy 1.26 environment too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ImplantBoneContactLib.dependencies import (
    describe_unmet,
    parse_version,
    split_requirement,
    unmet_requirements,
    version_satisfies,
)

LIB_PARENT = Path(__file__).resolve().parents[2] / "ImplantBoneContact"

# PEP 440's own ordering examples, oldest first.
ORDERED = ["1.0.dev0", "1.0a1", "1.0a2", "1.0b1", "1.0rc1", "1.0", "1.0.post1", "1.0.1", "1.1", "1.26.4", "2.0rc1", "2.0",
           "2.0.2", "2.2.3", "10.0"]


def test_versions_sort_as_pep440_says():
    keys = [parse_version(v) for v in ORDERED]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert parse_version("2") == parse_version("2.0") == parse_version("2.0.0")


@pytest.mark.parametrize(("installed", "specifier", "expected"), [
    ("1.5.3", ">=2.0", False),      # an old pandas no longer counts as present
    ("2.2.3", ">=2.0", True),
    ("2.0.0rc1", ">=2.0", False),
    ("0.3.1", "==0.3.1", True),
    ("0.3.10", "==0.3.1", False),
    ("0.4.0", "==0.3.1", False),
    ("1.26.4", ">=1.26", True),
    ("1.25.2", ">=1.26", False),
    ("2.0.2", "==2.*", True),
    ("1.26.4", "==2.*", False),
    ("3.9.4", ">=3.7,<4", True),
    ("4.0", ">=3.7,<4", False),
    ("2.2.3", "~=2.1", True),
    ("3.0", "~=2.1", False),
    ("1.26.4", "!=1.26.4", False),
    ("9.3.1", "", True),
])
def test_version_satisfies(installed, specifier, expected):
    assert version_satisfies(installed, specifier) is expected


release = st.lists(st.integers(0, 12), min_size=1, max_size=3).map(lambda parts: ".".join(map(str, parts)))
version_text = st.tuples(release, st.sampled_from(["", "rc1", "rc2", "a1", "b3", ".dev0"])).map("".join)


@settings(max_examples=400, deadline=None)
@given(version_text, st.sampled_from([">=", "<=", "==", "!="]), version_text)
def test_version_satisfies_agrees_with_packaging(installed, op, wanted):
    specifiers = pytest.importorskip("packaging.specifiers", reason="packaging is not installed")
    expected = specifiers.SpecifierSet(op + wanted).contains(installed, prereleases=True)
    assert version_satisfies(installed, op + wanted) is expected


@settings(max_examples=200, deadline=None)
@given(release, st.sampled_from([">", "<"]), release)
def test_strict_comparisons_of_releases_agree_with_packaging(installed, op, wanted):
    specifiers = pytest.importorskip("packaging.specifiers", reason="packaging is not installed")
    assert version_satisfies(installed, op + wanted) is specifiers.SpecifierSet(op + wanted).contains(installed)


def test_unmet_requirements_report_old_and_missing_packages():
    installed = {"pandas": "1.5.3", "pyacvd": "0.3.1", "matplotlib": "3.9.4"}
    unmet = unmet_requirements(["pandas>=2.0", "pyacvd==0.3.1", "matplotlib>=3.7", "absent>=1"], installed.get)
    assert unmet == [("pandas>=2.0", "1.5.3"), ("absent>=1", None)]
    assert describe_unmet(unmet) == "pandas>=2.0 (1.5.3 installed), absent>=1 (not installed)"


def test_unmet_requirements_read_the_installed_versions():
    import numpy as np

    assert unmet_requirements([f"numpy=={np.__version__}", "numpy>=1.26"]) == []
    assert unmet_requirements(["numpy>=999"]) == [("numpy>=999", np.__version__)]
    assert unmet_requirements(["implantbonecontact-absent-package>=1"]) == [("implantbonecontact-absent-package>=1", None)]


def test_requirements_are_read_or_refused():
    assert split_requirement("pandas>=2.0") == ("pandas", ">=2.0")
    assert split_requirement("pyacvd == 0.3.1") == ("pyacvd", "==0.3.1")
    assert split_requirement("SimpleITK") == ("SimpleITK", "")
    with pytest.raises(ValueError):
        split_requirement("pandas>=2.0; python_version<'3'")
    with pytest.raises(ValueError):
        version_satisfies("1.0", "about 1")


def test_package_imports_without_pandas():
    """With pandas absent, the package and its light modules import; the analysis says what is missing."""
    code = textwrap.dedent("""
        import sys
        sys.modules["pandas"] = None  # as in a Slicer where pandas is not installed yet
        import ImplantBoneContactLib as lib
        from ImplantBoneContactLib.classes import parse_classes
        from ImplantBoneContactLib.dependencies import unmet_requirements
        assert [b.name for b in parse_classes("default")][:1] == ["no_bone"], parse_classes("default")
        assert lib.InputError.__name__ == "InputError"
        try:
            lib.AnalysisParameters
        except ImportError as exc:
            print("import error:", exc)
        else:
            raise SystemExit("the analysis imported without pandas")
        assert "AnalysisParameters" in dir(lib)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(LIB_PARENT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "import error:" in done.stdout and "pandas" in done.stdout
