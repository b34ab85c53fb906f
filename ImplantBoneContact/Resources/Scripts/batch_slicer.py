"""Batch analysis inside Slicer, with the module's logic (Probe Volume With Model, Surface Toolbox).

Usage::

    Slicer --no-splash --no-main-window --python-script batch_slicer.py \\
        --ct CT.nrrd --model stem.stl [--transform registration.tfm] --out results/ [options]

The options are those of ``implant-bone-contact analyze`` (the same argparse
definitions), plus ``--install-dependencies``. The inputs are read with the
library's readers (so a file means the same here as on the command line: LPS
meshes unless ``SPACE=RAS``, ITK transforms converted as Slicer does), put
into MRML nodes (the model under the registration transform, as a user would
load them) and analysed by ``ImplantBoneContactLogic.run``; the result folder
is written as the command line writes it.

Slicer does not exit by itself after ``--python-script``: this script always
ends with ``sys.exit``: 0 on success, 2 for bad input or output (one line on
stderr), 1 for anything else (with the traceback), 130 when interrupted. It
never opens a dialog: missing Python packages are an error unless
``--install-dependencies`` is given.

From a source checkout (extension not installed) add the module folder:
``Slicer --additional-module-paths /path/to/ImplantBoneContact --no-main-window --python-script ...``
(the script also puts that folder on ``sys.path`` itself).
"""

import argparse
import os
import sys
import time
import traceback

PROG = "Slicer --no-main-window --python-script batch_slicer.py"


def module_folder() -> str:
    """The ImplantBoneContact module folder (this file is in ``<module>/Resources/Scripts``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _add_module_folder_to_path() -> None:
    folder = module_folder()
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _pre_parser() -> argparse.ArgumentParser:
    """The options needed before the library can be imported (it needs pandas)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--install-dependencies", action="store_true")
    p.add_argument("--remesh", default="acvd")
    p.add_argument("--no-pictures", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The batch options: ``--ct``, ``--model``, ``--out`` and every analysis option of the CLI."""
    from ImplantBoneContactLib.cli import _add_analysis_options

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Map CT Hounsfield units onto a registered femoral stem in Slicer (batch, no window).",
    )
    parser.add_argument("--ct", required=True, help="CT: NRRD, NIfTI, MetaImage file or a DICOM series folder")
    parser.add_argument("--model", required=True, help="implant surface: STL, OBJ, PLY, VTK or VTP (mm)")
    parser.add_argument("--out", required=True, help="result folder (created; replaced only with --overwrite)")
    _add_analysis_options(parser)
    g = parser.add_argument_group("Slicer")
    g.add_argument("--install-dependencies", action="store_true",
                   help="install missing Python packages (pandas, pyacvd, matplotlib) into Slicer without asking")
    g.add_argument("--library-sampler", action="store_true",
                   help="sample with the library's trilinear sampler instead of Probe Volume With Model (float HU, not rounded)")
    return parser


def parse_arguments(argv: list):
    """Parse the batch arguments (``--axis -1,2,3:...`` works as on the command line)."""
    from ImplantBoneContactLib.cli import _join_coordinate_values

    return build_parser().parse_args(_join_coordinate_values(list(argv)))


def load_nodes(args, scene):
    """Read CT, model and transform with the library's readers and put them in MRML nodes."""
    from ImplantBoneContactLib import mrml, read_model, read_transform, read_volume
    from ImplantBoneContactLib.analysis import describe_file

    volume = read_volume(args.ct, series_uid=args.series_uid)
    ctNode = mrml.volume_node_from_volume(scene, volume, os.path.basename(os.path.normpath(args.ct)))
    surface, info = read_model(args.model, space=args.model_space)
    modelNode = mrml.model_node_from_polydata(scene, surface, os.path.splitext(os.path.basename(args.model))[0])
    inputs = {
        "ct": {**describe_file(args.ct), **volume.metadata},
        "model": {**describe_file(args.model), "space_in_file": info.space_in_file, "space_used": info.space_used},
    }
    if args.transform:
        matrix = read_transform(args.transform)
        transformNode = mrml.linear_transform_node(scene, matrix, "Registration")
        modelNode.SetAndObserveTransformNodeID(transformNode.GetID())
        inputs["transform"] = {**describe_file(args.transform), "matrix_ras": matrix.tolist()}
    return ctNode, modelNode, inputs


def run(argv: list) -> int:
    """Run one batch analysis; return the exit code."""
    import slicer

    _add_module_folder_to_path()
    from ImplantBoneContact import ImplantBoneContactLogic

    early, _ = _pre_parser().parse_known_args(argv)
    logic = ImplantBoneContactLogic(interactive=False)
    logic.installMissingPackages = early.install_dependencies
    logic.ensureDependencies(remesh=early.remesh == "acvd", pictures=not early.no_pictures)

    from ImplantBoneContactLib import save_result
    from ImplantBoneContactLib.cli import parameters_from_args
    from ImplantBoneContactLib.export import check_output_folder

    args = parse_arguments(argv)
    params = parameters_from_args(args)
    check_output_folder(args.out, args.overwrite, inputs=(args.ct, args.model, args.transform, args.frame))
    logic.useProbeVolumeWithModel = not args.library_sampler
    t0 = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        if not args.quiet:
            print(f"[{100 * fraction:3.0f}% {time.perf_counter() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    scene = slicer.mrmlScene
    ctNode, modelNode, inputs = load_nodes(args, scene)
    outputModel = scene.AddNewNodeByClass("vtkMRMLModelNode", f"{modelNode.GetName()} contact")
    outputTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{modelNode.GetName()} zones")
    logic.run(ctNode, modelNode, params, outputModelNode=outputModel, outputTableNode=outputTable,
              progressCallback=progress, inputs=inputs)
    result = logic.lastResult
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    progress(1.0, f"writing results to {args.out}")
    save_result(result, args.out, overwrite=args.overwrite, pictures=not args.no_pictures)
    if not args.quiet:
        cols = ["zone", "region", "area_mm2", "hu_mean"] + [f"frac_{n}" for n in result.class_names]
        print(result.zones[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print(f"sampling: {logic.lastSampler}", file=sys.stderr)
    return 0


def main(argv: list) -> int:
    """Run and turn every failure into an exit code and a message on stderr."""
    try:
        return run(argv)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except KeyboardInterrupt:
        print("implant-bone-contact (Slicer): interrupted; no result was written", file=sys.stderr)
        return 130
    except Exception as exc:
        # By name: the library's exception classes cannot be imported when a package is missing.
        if type(exc).__name__ in ("InputError", "OutputError"):
            print(f"implant-bone-contact (Slicer): error: {exc}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"implant-bone-contact (Slicer): failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
