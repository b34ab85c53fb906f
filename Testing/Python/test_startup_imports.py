"""Start-up: a run imports only what it needs.

``import vtk`` loads every VTK module (rendering, parallel I/O, ...), pandas,
matplotlib and pyvista each take a few tenths of a second to import. These
tests run the command line in a fresh interpreter and look at which modules
it loaded (behaviour, not timing: the seconds are in
``benchmarks/whole_process.py``).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LIB_PARENT = Path(__file__).resolve().parents[2] / "ImplantBoneContact"
LIB = LIB_PARENT / "ImplantBoneContactLib"

#: Modules a run without pictures never needs; their presence means a heavy import crept in.
NOT_FOR_TABLES = ("vtk", "matplotlib", "pyvista", "vtkmodules.vtkRenderingCore", "vtkmodules.vtkRenderingOpenGL2")


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter with the library on the path; the names of the loaded modules."""
    script = code + "\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line[len("MODULES="):]))


def test_help_loads_no_analysis_libraries():
    """``--help`` builds the whole parser (every subcommand) without pandas, VTK, SimpleITK, matplotlib or pyvista."""
    code = (
        "from ImplantBoneContactLib.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "try:\n    main(['analyze', '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
    )
    loaded = _loaded_after(code)
    heavy = {"pandas", "SimpleITK", "pyacvd", *NOT_FOR_TABLES} & loaded
    assert not heavy, f"--help imported {sorted(heavy)}"
    assert not any(m.startswith("vtkmodules.vtkIO") or m.startswith("vtkmodules.vtkFilters") for m in loaded)


def test_analysis_without_pictures_loads_no_rendering(tmp_path):
    """A whole ``analyze --no-pictures`` run (fast remesh, sampling, zones, tables, VTP surface) never imports the
    whole of VTK, pyvista (pyacvd's clustering is called directly) or matplotlib, and still writes its results."""
    from ImplantBoneContactLib import FemurPhantom, PhantomSpec

    paths = FemurPhantom(PhantomSpec(voxel_mm=2.0)).write(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["analyze", "--ct", str(paths["ct"]), "--model", str(paths["model"]), "--points", "800",
            "--out", str(out), "--no-pictures", "--quiet"]
    code = f"from ImplantBoneContactLib.cli import main\nassert main({argv!r}) == 0\n"
    loaded = _loaded_after(code)
    heavy = set(NOT_FOR_TABLES) & loaded
    assert not heavy, f"a run without pictures imported {sorted(heavy)}"
    assert {"pandas", "vtkmodules.vtkCommonDataModel", "vtkmodules.vtkIOXML"} <= loaded  # it did the work
    for name in ("zones.csv", "vertices.csv", "surface.vtp", "parameters.json"):
        assert (out / name).is_file(), name


def _vtk_names_used(module: Path) -> set[str]:
    """Attribute names read from the name ``vtk`` in a module's source."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "vtk"}


def test_every_vtk_class_the_engine_uses_has_its_module_listed():
    """Every ``vtk.X`` in a module that imports :mod:`vtkclasses` is in its table (else it would load all of VTK),
    and the table names the module that really defines it: the same class object as ``import vtk`` gives."""
    import vtk as full_vtk
    from ImplantBoneContactLib import vtkclasses

    users = [p for p in LIB.rglob("*.py") if "import vtkclasses as vtk" in p.read_text(encoding="utf-8")]
    assert len(users) >= 8, users  # mesh, remesh, fastremesh, analysis, ...
    missing = {f"{p.name}: {name}" for p in users for name in _vtk_names_used(p) if name not in vtkclasses.CLASS_MODULES}
    assert not missing, f"add these to vtkclasses.CLASS_MODULES: {sorted(missing)}"
    import importlib

    for name, module in vtkclasses.CLASS_MODULES.items():
        assert getattr(importlib.import_module(f"vtkmodules.{module}"), name) is getattr(full_vtk, name), name
        assert getattr(vtkclasses, name) is getattr(full_vtk, name), name
    assert vtkclasses.vtkLookupTable is full_vtk.vtkLookupTable  # a name not in the table still works
    with pytest.raises(AttributeError):
        vtkclasses.not_a_vtk_name  # noqa: B018


def test_rendering_classes_come_with_their_opengl_implementation():
    """A rendering class from the table loads the OpenGL2 module too, so that the factory gives the working
    OpenGL class (without it ``vtkRenderWindow()`` is abstract): checked on the mapper, without opening a window."""
    code = (
        "from ImplantBoneContactLib import vtkclasses as vtk\n"
        "mapper = vtk.vtkPolyDataMapper()\n"
        "assert mapper.GetClassName() == 'vtkOpenGLPolyDataMapper', mapper.GetClassName()\n"
    )
    loaded = _loaded_after(code)
    assert "vtkmodules.vtkRenderingOpenGL2" in loaded
    assert "vtk" not in loaded


def _sphere(n_theta: int = 40, n_phi: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV sphere of radius 10 mm: points and outward-wound triangles, built here."""
    theta = np.linspace(0, np.pi, n_theta + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, n_phi, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    pts = 10.0 * np.vstack([[0, 0, 1], ring, [0, 0, -1]])
    idx = 1 + np.arange(ring.shape[0]).reshape(n_theta - 1, n_phi)
    faces = []
    for j in range(n_phi):
        k = (j + 1) % n_phi
        faces.append([0, idx[0, j], idx[0, k]])
        faces.append([len(pts) - 1, idx[-1, k], idx[-1, j]])
        for i in range(n_theta - 2):
            a, b, c, d = idx[i, j], idx[i, k], idx[i + 1, j], idx[i + 1, k]
            faces += [[a, c, b], [b, c, d]]
    return pts, np.asarray(faces, dtype=np.int64)


def test_direct_acvd_clustering_is_pyacvds_own(tmp_path):
    """The clusters and area weights from pyacvd's compiled core, called directly, equal ``pyacvd.Clustering``'s,
    element for element, on a sphere built here; and the direct call imports no pyvista."""
    pytest.importorskip("pyacvd")
    from ImplantBoneContactLib import fastremesh

    pts, faces = _sphere()
    np.savez(tmp_path / "sphere.npz", pts=pts, faces=faces)
    code = (
        "import numpy as np\nfrom ImplantBoneContactLib.fastremesh import acvd_clusters\n"
        f"m = np.load({str(tmp_path / 'sphere.npz')!r})\n"
        "c, w = acvd_clusters(m['pts'], m['faces'], 300)\nassert len(set(c.tolist())) == 300\n"
    )
    assert "pyvista" not in _loaded_after(code)
    direct = fastremesh.acvd_clusters(pts, faces, 300)
    reference = fastremesh._pyacvd_clustering(pts, faces, 300)
    np.testing.assert_array_equal(direct[0], reference[0])
    np.testing.assert_array_equal(direct[1], reference[1])
    # Each triangle's whole area on each of its corners (pyacvd's weights): they add up to 3 times the mesh area.
    a = 0.5 * np.linalg.norm(np.cross(pts[faces[:, 1]] - pts[faces[:, 0]], pts[faces[:, 2]] - pts[faces[:, 0]]), axis=1)
    assert direct[1].sum() == pytest.approx(3 * a.sum(), rel=1e-12)
