"""Mutation testing of the core modules with mutmut (``make mutation``).

mutmut plants one small change (a mutant) at a time in a copy of the library and
runs the tests that execute the changed function; a mutant that no test notices
"survives".  mutmut expects the package in ``./``, ``src/`` or ``source/``, so each
module is staged in ``build/mutation/<module>/src/ImplantBoneContactLib`` together
with a copy of ``Testing/`` and a ``pyproject.toml`` that names the module and the
test files that exercise it.  mutmut records which test executes which function
and runs, for each mutant, only those tests (first to fail stops the run).

Usage (from the repository root)::

    nice -n 19 python Testing/Mutation/run_mutation.py                 # all 16 modules (what make mutation runs)
    nice -n 19 python Testing/Mutation/run_mutation.py classes stats   # some modules
    nice -n 19 python Testing/Mutation/run_mutation.py mesh export atomicio --jobs 1
    python Testing/Mutation/run_mutation.py --report                    # scores of the last runs

Scores are printed and written to ``build/mutation/<module>/score.json``, the
surviving mutants to ``build/mutation/<module>/survivors.txt`` (see them with
``cd build/mutation/<module> && mutmut show <name>``).

Every mutant that survives must be either killed by a new test or listed, with the
reason, in ``Testing/Mutation/equivalent_<module>.txt`` (a mutant that changes nothing
a caller can observe).  The table gives, per module, how many survivors are listed
there ("equivalent") and how many are not ("unexplained", named in
``build/mutation/<module>/unexplained.txt``); the run exits with status 1 when any
survivor is unexplained.  ``--survivors`` leaves the listed ones out of a rerun.
"""

from __future__ import annotations

import argparse
import ast
import copy
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "ImplantBoneContactLib"
STAGE = REPO / "build" / "mutation"

# module -> (functions to mutate, glob on the function name; test files that exercise them).
# Test files are chosen for speed: the unit, property and known-answer tests of the module,
# not the slow end-to-end ones (they would run for every mutant of every function they touch).
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "classes": (["*"], ["test_stats_classes.py", "test_core_known_answers.py", "test_classes_known_answers.py"]),
    # test_compat: the weighted quantile against numpy 2's (hypothesis, a few seconds)
    "stats": (["*"], ["test_stats_classes.py", "test_core_known_answers.py", "test_compat.py",
                       "test_stats_mutants_known_answers.py"]),
    "sampling": (["*"], ["test_sampling.py", "test_stats_classes.py", "test_core_known_answers.py"]),
    # small synthetic stems built inside the tests (test_frame_zones.py and test_stats_classes.py analyse the
    # phantom in session fixtures: seconds per mutant; they run in `make test`)
    "frame": (["*"], ["test_frame_known_answers.py", "test_core_known_answers.py", "test_frame_limits_known_answers.py",
                     "test_frame_axis_known_answers.py"]),
    # geometry and orientation only (readers and writers are covered by test_bad_inputs / test_cli);
    # known answers on meshes of a few dozen triangles built by the tests (test_mesh builds the phantom stem)
    "mesh": (
        [
            "x_points*", "x_triangles*", "x_polydata_from_arrays*", "x_transform_polydata*",
            "x_triangle_areas*", "x_vertex_areas*", "x__corner_sums*", "x_signed_volume*",
            "x__area_centre_and_axis*", "x_outward_sign*", "x_surface_geometry*", "x__repeated_rows*",
            "x__edge_counts*", "x__component_labels*", "x_check_registration_matrix*", "x_prepare_surface*",
            "x__drop_unused_points*", "x__space_from_text*",
        ],
        ["test_mesh_known_answers.py"],
    ),
    # atomic writes of result folders (the one-file writer atomic_file is in atomicio, its own module)
    "export": (
        ["x_check_output_folder*", "x_write_csv*", "x_write_json*", "x_write_result_folder*", "x__signals_held*",
         "x_save_result*", "x_write_tables_and_surface*", "x__input_paths*"],
        ["test_export_known_answers.py"],
    ),
    "atomicio": (["*"], ["test_export_known_answers.py"]),
    # option plumbing (run_analysis and main are end to end: test_cli runs them on the phantom, too slow per mutant)
    "cli": (
        ["x__join_coordinate_values*", "x__point*", "x__pair*", "x_build_parser*", "x__add_analysis_options*",
         "x_parameters_from_args*"],
        ["test_core_known_answers.py", "test_cli_options_documented.py"],
    ),
    "calibration": (["*"], ["test_calibration_known_answers.py", "test_calibration.py"]),
    "scan_noise": (["*"], ["test_scan_noise_known_answers.py", "test_scan_noise_thinning_known_answers.py"]),
    # the comparison itself and its checks (reading and writing result folders, the follow-up analysis and the
    # CLI run end to end in test_compare on a phantom study, too slow per mutant)
    "compare": (
        ["x_rigid_fit*", "x_transform_frame*", "x_check_same_stem*", "x__norm*", "x__patch_labels*", "x__spread_se*",
         "x_compare__mutmut*", "x__change_surface*", "xǁStoredResultǁ*", "xǁComparisonǁ*"],
        ["test_compare_known_answers.py", "test_compare_limits_known_answers.py"],
    ),
    # detection, edge, walk (and its reuse within an analysis), the edge placement, reliability marking, the profile
    # fit (_layer_fit, its three-tissue stage and its batched least squares, against lstsq per profile in
    # test_postop_layer_fit) and the assessment
    "postop": (
        ["x__grid_step*", "x__voxel*", "x_inside_depth_mm*", "x_walk_depth_mm*", "x_max_bone_start_mm*",
         "x_read_depth_mm*", "x_profiles*", "x_detect*", "xǁEdgeModelǁ*", "x__first_crossing*", "x__walk*",
         "x__plateaus*", "x_measure_edge*", "x_inner_depth_mm*", "x__tissue_blur*", "x__gaussian_tail*",
         "x__blur_from_slope*", "x__rigid_design*", "x_fit_edge_placement*", "xǁEdgePlacementǁ*",
         "x_sample_metal_aware*", "x_clipped_metal_voxels*", "x_resolution_statement*", "xǁAssessmentǁ*",
         "x_unreliable_zone_warnings*", "x_assess*", "x_metal_advice*", "x__layer_fit*", "x__first_least*",
         "x__layer_choice_undecided*", "x__near_tie*", "x__design_fits*", "x__three_layer_refit*", "xǁWalkReuseǁ*",
         "x__walk_reused*", "x__active_walks*"],
        ["test_postop_known_answers.py", "test_postop_edge_known_answers.py",
         "test_postop_mutants_known_answers.py", "test_postop_limits_known_answers.py", "test_postop_layer_fit.py",
         "test_postop_walk_reuse.py", "test_postop_three_layers.py"],
    ),
    # the geometry helpers of the registration (the fit itself runs in test_register on scanned stems, slow)
    "register": (
        ["x__rodrigues*", "x__rot_x*", "x__apply*", "x_solid_moments*", "x__principal_axes*", "x_surface_samples*",
         "x__block_mean*", "x__signed_distance*"],
        ["test_geometry_known_answers.py"],
    ),
    # voxel helpers (the surface itself: test_segment on the real CT and a ball, slow)
    "segment": (["x_bounding_box*", "x_label_components*", "x__cavities*"], ["test_geometry_known_answers.py"]),
    # computations of the cohort run (running cases, workers and shards: test_cohort end to end, slow)
    "cohort": (
        ["x__match_rows*", "x_parse_shard*", "x__digest*", "x__resolve_path_value*", "x_summarize_zones*"],
        ["test_geometry_known_answers.py"],
    ),
    # the CT reader: geometry, NIfTI header checks (qform/sform, truncation), DICOM series checks (gaps, gantry tilt),
    # direction cosines, HU and geometry warnings, write_volume; known answers on volumes and files of a few voxels
    # built by the tests (test_bad_inputs runs each CT case through a phantom analysis: seconds per mutant)
    "volume": (["*"], ["test_volume.py", "test_volume_known_answers.py"]),
}
# Modules whose argparse help texts are documentation, not behaviour: a mutant that changes only the text of a
# ``help=`` or ``description=`` argument or an argument group's title is counted apart ("documentation") and left
# out of the score. Every other mutant on the same lines (choices, types, defaults, metavars, option names) counts.
DOCUMENTATION_KEYWORDS = ("help", "description")
DOCUMENTATION_MODULES = {"cli"}
ORDER = ["classes", "stats", "sampling", "cli", "export", "atomicio", "mesh", "frame", "calibration", "scan_noise",
         "compare", "postop", "register", "segment", "cohort", "volume"]
# What `make mutation` runs without MODULES: all 16 modules (volume added after this measurement). Measured on 2026-11-30 with --jobs 2 on the two
# shared cores: 26.7 min at a load of 1.5-5, 52.8 min at a load of 3-8 (compare 22.8 min of it); see TESTING.md.
DEFAULT = list(ORDER)

# Tests left out of every mutation run: each analyses the whole phantom (tens of seconds in a
# session fixture that every mutant's fresh pytest session would build again). They run in `make test`.
DESELECT = [
    "test_stats_classes.py::test_contact_classes_match_phantom_truth",
    "test_stats_classes.py::test_zone_statistics_do_not_depend_on_mesh_density",
    "test_core_known_answers.py::test_no_metal_warning_on_a_preoperative_ct",
    # phantom CT and surface (session fixtures), the post-operative phantom and the real pelvis CT
    "test_sampling.py::test_trilinear_vs_cli_integer_output_is_within_half_hu",
    "test_sampling.py::test_phantom_hu_matches_ground_truth_away_from_tissue_boundaries",
    "test_sampling.py::test_offset_samples_along_outward_normal",
    "test_sampling.py::test_profile_aggregates",
    "test_sampling.py::test_profile_sees_bone_past_metal_blooming",
    "test_sampling.py::test_outside_ct_is_nan_never_zero_on_pelvis_with_implant_at_scan_edge",
    "test_calibration.py::test_density_is_the_linear_map_of_hu_on_a_calibrated_ct",
    "test_calibration.py::test_calibration_recorded_in_parameters_json",
]


def equivalent_names(module: str) -> frozenset | None:
    """The mutants of ``module`` judged equivalent, from ``Testing/Mutation/equivalent_<module>.txt`` (one name per
    line, e.g. ``x_assign_zones__mutmut_47``, each group under a comment giving the reason); ``None`` if the module
    has no such file."""
    path = REPO / "Testing" / "Mutation" / f"equivalent_{module}.txt"
    if not path.exists():
        return None
    return frozenset(line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()) - {""}


def _mutmut() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        sys.exit("mutmut is not installed in this Python: pip install -e '.[mutation]'")
    return str(exe)


def stage(module: str, fresh: bool, exclude: list[str]) -> Path:
    """Copy the package and the tests into ``build/mutation/<module>`` with mutmut's settings."""
    globs, tests = MODULES[module]
    d = STAGE / module
    if fresh and d.exists():
        shutil.rmtree(d)
    (d / "src").mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "ImplantBoneContact" / PACKAGE, d / "src" / PACKAGE, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "Testing" / "Python", d / "Testing" / "Python", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "README.md", d / "README.md")  # test_cli_options_documented reads its option table
    test_paths = ", ".join(f'"Testing/Python/{t}"' for t in tests
                           if (REPO / "Testing" / "Python" / t).exists() and t not in exclude)
    deselect = "".join(f', "--deselect", "Testing/Python/{t}"' for t in DESELECT)
    (d / "pyproject.toml").write_text(
        f"""[tool.mutmut]
source_paths = ["src/{PACKAGE}"]
only_mutate = ["src/{PACKAGE}/{module}.py"]
pytest_add_cli_args_test_selection = [{test_paths}]
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider"{deselect}]
use_git_change_detection = false
also_copy = ["Testing", "README.md"]

[tool.pytest.ini_options]
markers = ["slow: long tests", "mrml: tests on Slicer's MRML classes"]
filterwarnings = ["ignore::DeprecationWarning"]
""")
    return d


def mutant_names(module: str) -> list[str]:
    globs, _ = MODULES[module]
    return [f"{PACKAGE}.{module}.{g}" for g in globs]


class _MaskDocumentation(ast.NodeTransformer):
    """Replace the text (a string or f-string, not ``None``) of the documentation arguments of argparse calls
    by one placeholder."""

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        for kw in node.keywords:
            if (kw.arg in DOCUMENTATION_KEYWORDS or (kw.arg == "title" and _is_group_call(node))) and _is_text(kw.value):
                kw.value = ast.Constant("<documentation>")
        if _is_group_call(node) and node.args and _is_text(node.args[0]):
            node.args[0] = ast.Constant("<documentation>")
        return node


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _is_group_call(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument_group"


def documentation_mutants(module: str) -> set[str]:
    """Names of the mutants of ``module`` that change only documentation text (see ``DOCUMENTATION_KEYWORDS``).

    Read from mutmut's mutated copy of the module: each mutant is a function ``<name>__mutmut_<n>`` next to
    ``<name>__mutmut_orig``; a mutant is documentation when the two are equal once the help texts,
    descriptions and group titles of both are replaced by the same placeholder.
    """
    if module not in DOCUMENTATION_MODULES:
        return set()
    path = STAGE / module / "mutants" / "src" / PACKAGE / f"{module}.py"
    if not path.exists():
        return set()
    funcs = {n.name: n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def masked(fn) -> str:
        node = _MaskDocumentation().visit(copy.deepcopy(fn))
        return ast.dump(node.args) + "".join(ast.dump(stmt) for stmt in node.body)

    out = set()
    masked_orig: dict[str, str] = {}
    for name, fn in funcs.items():
        base, sep, number = name.rpartition("__mutmut_")
        if not sep or not number.isdigit() or base + "__mutmut_orig" not in funcs:
            continue
        orig = funcs[base + "__mutmut_orig"]
        if base not in masked_orig:
            masked_orig[base] = masked(orig)
        if masked_orig[base] == masked(fn) and _plain(orig) != _plain(fn):
            out.add(f"{PACKAGE}.{module}.{name}")
    return out


def _plain(fn) -> str:
    """The function's arguments and body, without its name."""
    return ast.dump(fn.args) + "".join(ast.dump(stmt) for stmt in fn.body)


def _meta_codes(module: str) -> dict:
    meta = STAGE / module / "mutants" / "src" / PACKAGE / f"{module}.py.meta"
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def score(module: str, previous: dict | None = None) -> dict:
    """Killed / survived / no-test counts of the selected mutants, from mutmut's .meta file.

    ``previous``: exit codes of an earlier run, kept for the mutants this run did not test
    (a rerun of the survivors only); the merged codes are saved in ``exit_codes.json``.
    """
    d = STAGE / module
    codes = _meta_codes(module)
    if previous:
        codes = {k: (v if v is not None else previous.get(k)) for k, v in codes.items()}
    if not codes:
        return {}
    (d / "exit_codes.json").write_text(json.dumps(codes, indent=1) + "\n")
    pats = mutant_names(module)
    docs = documentation_mutants(module)
    sel = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in pats)}
    documentation = sorted(k for k in sel if k in docs)
    sel = {k: v for k, v in sel.items() if k not in docs}
    # -11: the tests crashed (a segmentation fault in VTK on a broken cell array): caught, like a failure
    killed = sorted(k for k, v in sel.items() if v in (1, 3, -11))
    timeout = sorted(k for k, v in sel.items() if v in (36, 24, -24, 152, 255))
    survived = sorted(k for k, v in sel.items() if v == 0)
    no_tests = sorted(k for k, v in sel.items() if v in (5, 33))
    unchecked = sorted(k for k, v in sel.items() if v is None)
    other = sorted(k for k in sel if k not in set(killed + timeout + survived + no_tests + unchecked))
    checked = len(killed) + len(timeout) + len(survived) + len(no_tests)
    out = {
        "module": module, "total": len(sel), "killed": len(killed), "timeout": len(timeout),
        "survived": len(survived), "no_tests": len(no_tests), "not_checked": len(unchecked), "other": len(other),
        # mutants of help texts, descriptions and group titles: not in total, not scored
        "documentation": len(documentation),
        # timeouts count as killed: the mutant made the tests hang (e.g. an endless loop)
        "score_percent": round(100.0 * (len(killed) + len(timeout)) / checked, 1) if checked else None,
    }
    # survivors judged equivalent (listed with the reason) and those nobody explained: a test is missing
    equivalent = equivalent_names(module)
    left = survived + no_tests + other + unchecked
    unexplained = None if equivalent is None else [k for k in left if k.rpartition(".")[2] not in equivalent]
    out["equivalent"] = None if equivalent is None else len(left) - len(unexplained)
    out["unexplained"] = None if unexplained is None else len(unexplained)
    (d / "survivors.txt").write_text("\n".join(survived + no_tests + other) + "\n")
    (d / "unexplained.txt").write_text("".join(k + "\n" for k in unexplained or []))
    if documentation:
        (d / "documentation.txt").write_text("\n".join(documentation) + "\n")
    return out


def run(module: str, jobs: int, fresh: bool, exclude: list[str], survivors: bool = False,
        skip: frozenset = frozenset()) -> dict:
    """Mutate ``module`` and run its tests; with ``survivors`` only the mutants that survived the last run
    (after new tests were written), keeping the earlier verdicts of the others and of the mutants in
    ``skip`` (judged equivalent: no test can kill them, so testing them again only costs time)."""
    previous = None
    names = mutant_names(module)
    if survivors:
        saved = STAGE / module / "exit_codes.json"
        if not saved.exists():
            sys.exit(f"no earlier run of {module} to take the survivors from")
        previous = json.loads(saved.read_text())
        pats = mutant_names(module)
        # survived, no test, or never checked, of the selected functions only (the others are never checked);
        # not those judged equivalent
        names = [k for k, v in previous.items()
                 if v in (0, 5, 33, None) and any(fnmatch.fnmatch(k, p) for p in pats)
                 and k.rpartition(".")[2] not in skip | (equivalent_names(module) or frozenset())]
        if not names:
            return score(module, previous)
        fresh = False
    d = stage(module, fresh, exclude)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the mutated copy must be the one imported
    env.setdefault("IBC_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    env.setdefault("MPLBACKEND", "Agg")
    t0 = time.time()
    subprocess.run([_mutmut(), "run", "--max-children", str(jobs), *names], cwd=d, env=env, check=False)
    s = score(module, previous)
    s["minutes"] = round((time.time() - t0) / 60.0, 1)
    (d / "score.json").write_text(json.dumps(s, indent=2) + "\n")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate, of {', '.join(ORDER)} (default: {', '.join(DEFAULT)})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested in parallel")
    ap.add_argument("--keep", action="store_true", help="reuse the results of the last run of unchanged functions")
    ap.add_argument("--survivors", action="store_true",
                    help="test again only the mutants that survived the last run or were not checked (after writing tests for them)")
    ap.add_argument("--skip", metavar="FILE",
                    help="with --survivors: more names of mutants not to test again (one per line, e.g. "
                    "x_assign_zones__mutmut_47; '#' starts a comment); those in Testing/Mutation/"
                    "equivalent_<module>.txt are always left out")
    ap.add_argument("--report", action="store_true", help="only print the scores of the last runs")
    ap.add_argument("--exclude-tests", nargs="*", default=[], metavar="FILE",
                    help="test files to leave out (to measure the score without them)")
    args = ap.parse_args(argv)
    modules = args.modules or DEFAULT
    unknown = sorted(set(modules) - set(ORDER))
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    skip = frozenset()
    if args.skip:
        skip = frozenset(line.split("#")[0].strip() for line in Path(args.skip).read_text().splitlines()) - {""}
    rows = []
    for m in modules:
        if args.report:
            saved = STAGE / m / "exit_codes.json"
            s = score(m, json.loads(saved.read_text()) if saved.exists() else None)
        else:
            s = run(m, args.jobs, fresh=not args.keep, exclude=args.exclude_tests, survivors=args.survivors,
                    skip=skip)
        rows.append(s)
        print(json.dumps(s), flush=True)
    print(f"\n{'module':10s} {'total':>6s} {'killed':>7s} {'survived':>9s} {'no test':>8s} {'score %':>8s} {'docs':>5s}"
          f" {'equivalent':>11s} {'unexplained':>12s}")
    unexplained = []
    for s in rows:
        if s:
            eq, un = s.get("equivalent"), s.get("unexplained")
            print(f"{s['module']:10s} {s['total']:6d} {s['killed'] + s['timeout']:7d} {s['survived']:9d} "
                  f"{s['no_tests']:8d} {s['score_percent']!s:>8s} {s.get('documentation', 0):5d}"
                  f" {'-' if eq is None else eq:>11} {'-' if un is None else un:>12}")
            if un:
                unexplained.append(f"{s['module']} ({un}: build/mutation/{s['module']}/unexplained.txt)")
    if unexplained:
        # a survivor that is neither killed nor listed as equivalent with its reason means a test is missing
        print("survivors neither killed nor listed in Testing/Mutation/equivalent_<module>.txt: "
              + ", ".join(unexplained), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
