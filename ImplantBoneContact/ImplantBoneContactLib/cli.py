"""Command line: ``implant-bone-contact analyze|compare|cohort|demo|segment|register``.

Errors in the input become one line on stderr and exit code 2; an
interruption (Ctrl-C, SIGTERM) exits with 130 and leaves no partial result.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .classes import PRESETS
from .errors import InputError, OutputError

if TYPE_CHECKING:
    from .analysis import AnalysisParameters

# The analysis (pandas, VTK, SimpleITK) is imported by the functions that run one, not here:
# ``--help``, ``--version`` and a mistyped option answer without loading it.

# Options whose value is a coordinate list that may start with "-".
_COORDINATE_OPTIONS = ("--axis", "--medial-point", "--resection-plane", "--bands-axial")


def _join_coordinate_values(argv: list[str]) -> list[str]:
    """Turn ``--axis -1,2,3:4,5,6`` into ``--axis=-1,2,3:4,5,6`` so argparse does not take the value for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _COORDINATE_OPTIONS and i + 1 < len(argv):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _point(text: str, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} must be three numbers X,Y,Z in RAS mm, got {text!r}") from None
    if len(values) != 3 or not all(map(lambda v: v == v and abs(v) != float("inf"), values)):
        raise InputError(f"{what} must be three finite numbers X,Y,Z in RAS mm, got {text!r}")
    return values  # type: ignore[return-value]


def _pair(text: str, what: str) -> tuple[tuple, tuple]:
    parts = text.split(":")
    if len(parts) != 2:
        raise InputError(f"{what} must be X,Y,Z:X,Y,Z, got {text!r}")
    return _point(parts[0], what), _point(parts[1], what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="implant-bone-contact",
        description="Map CT Hounsfield units onto a registered femoral stem, by Gruen zone and contact class.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse a CT and a registered implant model")
    a.add_argument("--ct", required=True, help="CT: NRRD, NIfTI, MetaImage file or a DICOM series folder")
    a.add_argument("--model", required=True, help="implant surface: STL, OBJ, PLY, VTK or VTP (mm)")
    a.add_argument("--out", required=True, help="result folder (created; replaced only with --overwrite)")
    _add_analysis_options(a)

    from .compare import add_compare_parser

    add_compare_parser(sub)

    d = sub.add_parser("demo", help="write the built-in femur phantom (NRRD + STL) and analyse it")
    d.add_argument("--out", required=True, help="folder for the phantom and its results")
    d.add_argument("--metal", action="store_true", help="make a post-operative phantom: metal stem voxels that bloom")
    d.add_argument("--voxel", type=float, default=0.7, help="phantom voxel size in mm (default 0.7)")
    d.add_argument("--side", choices=("left", "right"), default="left", help="femur side of the phantom (default left)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing result")
    d.add_argument("--no-pictures", action="store_true", help="write tables only, no pictures or report")
    d.add_argument("--quiet", action="store_true", help="no progress messages and no summary table")
    d.add_argument("--progress", action="store_true", help="progress messages on stderr even when it is not a terminal")
    from .register import add_register_parser
    from .segment import add_segment_parser

    add_segment_parser(sub)
    add_register_parser(sub)
    from .cohort import add_cohort_parser

    add_cohort_parser(sub)
    return parser


def _add_analysis_options(a: argparse.ArgumentParser) -> None:
    g = a.add_argument_group("inputs")
    g.add_argument("--transform", metavar="FILE", help="registration moving the model into the CT: 4x4 RAS matrix text file, or ITK .tfm/.txt/.h5")
    g.add_argument("--model-space", choices=("RAS", "LPS"), type=str.upper, help="override the model file's coordinate system (default: its SPACE= header, else LPS)")
    g.add_argument("--series-uid", metavar="UID", help="DICOM series to read when the folder holds several")
    g.add_argument("--calibration", metavar="FILE.json", help="density calibration (linear relation or phantom rods): adds density in mg/cm3")
    g.add_argument("--baseline", metavar="RESULT", help="follow-up: analyse on this baseline result's surface and frame, moved by the two registrations")
    g.add_argument("--register", action="store_true", help="register the CAD model to the CT's metal first (post-operative CT; instead of --transform)")

    g = a.add_argument_group("remeshing")
    g.add_argument("--remesh", choices=("acvd", "fast", "none"), default="fast",
                   help="fast (default): ACVD clustering on an adaptively refined surface with a vectorised mesh "
                   "construction, 10-30x faster than acvd; acvd: uniform remesh exactly as Slicer's Surface Toolbox; "
                   "none: keep the input mesh")
    g.add_argument("--points", type=int, default=10000, metavar="N", help="points after remeshing (default 10000)")
    g.add_argument("--subdivide", type=int, default=None, metavar="K", help="subdivisions before clustering (default: smallest giving 3 input points per cluster and no triangle larger than 4 clusters)")

    g = a.add_argument_group("sampling")
    g.add_argument("--sampling", choices=("trilinear", "nearest"), default="trilinear", help="trilinear (as Probe Volume With Model, default) or nearest voxel")
    g.add_argument("--offset", type=float, default=0.0, metavar="MM", help="sample this far outside the surface along the normal (mm, default 0)")
    g.add_argument("--profile", metavar="START:STOP:STEP", help="sample several offsets (mm) and aggregate them, e.g. 0.5:3:0.5 for a post-operative CT")
    g.add_argument("--profile-aggregate", choices=("max", "mean", "median"), default="max", help="how profile samples become one HU (default max)")
    g.add_argument("--metal-aware", choices=("auto", "on", "off"), default="auto",
                   help="read the bone past the metal's bloom: auto (default) does so when the implant is in the CT "
                   "and no --offset/--profile is given; a pre-operative CT is sampled as before")

    g = a.add_argument_group("contact classes")
    g.add_argument("--classes", default="default", metavar="SPEC", help=f"preset ({', '.join(PRESETS)}), 'name:low:high,...' HU bands, or a JSON file (default: default)")
    g.add_argument("--metal-hu", type=float, default=2500.0, metavar="HU", help="samples at or above this HU are class metal (default 2500)")
    g.add_argument("--no-metal-class", action="store_true", help="no metal class")

    g = a.add_argument_group("stem frame and zones")
    g.add_argument("--axis", metavar="X,Y,Z:X,Y,Z", help="stem axis: proximal point then distal point (RAS mm)")
    g.add_argument("--medial-point", metavar="X,Y,Z", help="a point on the medial side of the stem (RAS mm)")
    g.add_argument("--resection-plane", metavar="X,Y,Z:NX,NY,NZ", help="neck-cut plane: a point and a normal (RAS)")
    g.add_argument("--side", choices=("left", "right"), help="femur side (default: from where the neck points)")
    g.add_argument("--tip-length", type=float, default=10.0, metavar="MM", help="height of the tip zone above the tip (mm, default 10)")
    g.add_argument("--zone-scheme", choices=("sector", "projection"), default="sector", help="sector: one zone per vertex; projection: an AP-view and a lateral-view zone per vertex")
    g.add_argument("--zone-reference", choices=("implant", "patient"), default="implant",
                   help="what orients the zones around the axis: implant (default): the stem's own neck plane, as on "
                   "a radiograph with the stem in profile; patient: the patient's anterior direction")
    g.add_argument("--bands-axial", metavar="P,M,D", help="proximal,middle,distal fractions of the cut-to-tip height (default thirds)")
    g.add_argument("--frame", metavar="FRAME.json", help="reuse a frame.json written by an earlier run (axis, medial, resection, side)")

    g = a.add_argument_group("output")
    g.add_argument("--overwrite", action="store_true", help="replace an existing result in --out")
    g.add_argument("--no-pictures", action="store_true", help="write tables only, no pictures or report")
    g.add_argument("--quiet", action="store_true", help="no progress messages and no summary table")
    g.add_argument("--progress", action="store_true", help="progress messages on stderr even when it is not a terminal")


def parameters_from_args(args: argparse.Namespace) -> AnalysisParameters:
    """Build :class:`AnalysisParameters` from parsed command-line options."""
    from .analysis import AnalysisParameters

    p = AnalysisParameters(
        remesh=args.remesh,
        points=args.points,
        subdivide=args.subdivide,
        sampling=args.sampling,
        offset_mm=args.offset,
        profile=args.profile,
        profile_aggregate=args.profile_aggregate,
        classes=args.classes,
        metal_hu=None if args.no_metal_class else args.metal_hu,
        zone_scheme=args.zone_scheme,
        zone_reference=args.zone_reference,
        tip_length_mm=args.tip_length,
        side=args.side,
        model_space=args.model_space,
        series_uid=args.series_uid,
        calibration=getattr(args, "calibration", None),
        register=getattr(args, "register", False),
        metal_aware=args.metal_aware,
    )
    if args.frame:
        import json

        from .frame import StemFrame

        try:
            frame = StemFrame.from_dict(json.loads(Path(args.frame).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the frame file {args.frame}: {exc}") from None
        except InputError as exc:
            raise InputError(f"cannot use the frame file {args.frame}: {exc}") from None
        for name, value in frame.parameter_fields().items():
            setattr(p, name, value)
        p.side = p.side or frame.side
        p.frame_file = str(args.frame)
    if args.axis:
        p.axis = _pair(args.axis, "--axis")
    if args.medial_point:
        p.medial_point = _point(args.medial_point, "--medial-point")
    if args.resection_plane:
        p.resection_point, p.resection_normal = _pair(args.resection_plane, "--resection-plane")
    if args.bands_axial:
        try:
            bands = tuple(float(v) for v in args.bands_axial.split(","))
        except ValueError:
            raise InputError(f"--bands-axial must be three fractions P,M,D, got {args.bands_axial!r}") from None
        if len(bands) != 3:
            raise InputError(f"--bands-axial must be three fractions P,M,D, got {args.bands_axial!r}")
        p.bands_axial = bands  # type: ignore[assignment]
    p.validate()
    return p


class _Progress:
    """Progress lines on stderr: shown on a terminal or with --progress, never with --quiet.

    Off by default when stderr is a file or pipe, so that a failed run in a
    batch log leaves exactly one line: the error.
    """

    def __init__(self, quiet: bool, forced: bool = False) -> None:
        self.quiet = quiet or not (forced or sys.stderr.isatty())
        self.t0 = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.quiet:
            print(f"[{100 * fraction:3.0f}% {time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    def analysis(self, fraction: float, message: str) -> None:
        """The analysis's own progress, shown as the first 90 %: writing the results is the rest."""
        self(0.9 * fraction, message)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_analysis(args: argparse.Namespace) -> int:
    from .analysis import analyze_files
    from .export import check_output_folder, save_result

    params = parameters_from_args(args)
    check_output_folder(args.out, args.overwrite, inputs=(args.ct, args.model, args.transform, args.frame, args.baseline, args.calibration))
    progress = _Progress(args.quiet, args.progress)
    if args.baseline:
        from .compare import analyze_followup_files

        result = analyze_followup_files(args.ct, args.model, args.baseline, params, transform=args.transform, progress=progress.analysis)
    else:
        result = analyze_files(args.ct, args.model, params, transform=args.transform, progress=progress.analysis)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    n_said = len(result.warnings)
    progress(0.9, f"writing results to {args.out}")
    save_result(result, args.out, overwrite=args.overwrite, pictures=not args.no_pictures)
    for w in result.warnings[n_said:]:  # said while writing (a picture that could not be made)
        print(f"warning: {w}", file=sys.stderr)
    progress(1.0, "done")
    if not args.quiet:
        _print_summary(result)
    return 0


def _print_summary(result) -> None:
    print(_ct_kind_line(result))
    print(summary_text(result.zones, result.class_names))


def summary_text(zones, class_names: list[str]) -> str:
    """The console summary of a zones table: areas in mm2 and HU as plain numbers, fractions in percent.

    ``sampled_%`` is the part of the zone's area that lies inside the CT; the
    class percentages are of that sampled area.
    """
    import numpy as np
    import pandas as pd

    z = zones
    area = z["area_mm2"].to_numpy(dtype=float)
    sampled = z["area_sampled_mm2"].to_numpy(dtype=float) if "area_sampled_mm2" in z else area

    def plain(values, digits: int) -> list[str]:
        return ["-" if not np.isfinite(v) else f"{v:.{digits}f}" for v in np.asarray(values, dtype=float)]

    out = pd.DataFrame({"zone": z["zone"].astype(str), "region": z["region"].astype(str)})
    out["area_mm2"] = plain(area, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["sampled_%"] = plain(np.where(area > 0, 100 * sampled / area, np.nan), 1)
    out["hu_mean"] = plain(z["hu_mean"], 0)
    extra = [n for n in ("unreliable", "unclassified") if f"frac_{n}" in z and n not in class_names]
    for name in list(class_names) + extra:
        out[f"{name}_%"] = plain(100 * z[f"frac_{name}"].to_numpy(dtype=float), 1)
    return out.to_string(index=False)


def _ct_kind_line(result) -> str:
    """One line: the CT kind and how it was sampled."""
    kind = getattr(result, "ct_kind", "pre-operative")
    post = getattr(result, "postop", {}) or {}
    if kind != "post-operative":
        return "CT: pre-operative (no implant metal inside the model surface)"
    if post.get("metal_aware_sampling"):
        edge = post.get("edge", {})
        return (f"CT: post-operative (metal {edge.get('metal_hu', float('nan')):.0f} HU inside the model); bone read past "
                f"the metal's bloom (edge blur {edge.get('edge_blur_mm', float('nan')):.2f} mm, reading starts "
                f"{edge.get('read_start_past_edge_mm', float('nan')):.2f} mm past the edge)")
    return "CT: post-operative (implant metal inside the model); sampled as given, without the metal-aware walk"


def run_demo(args: argparse.Namespace) -> int:
    from .analysis import AnalysisParameters, analyze_files
    from .export import check_output_folder, save_result
    from .phantom import FemurPhantom, PhantomSpec

    out = Path(args.out)
    results = out / "results"
    check_output_folder(results, args.overwrite)
    progress = _Progress(args.quiet, args.progress)
    progress(0.0, f"writing the femur phantom to {out} (voxel {args.voxel} mm{', metal' if args.metal else ''})")
    phantom = FemurPhantom(PhantomSpec(voxel_mm=args.voxel, side=args.side, metal=args.metal, noise_hu=10.0))
    paths = phantom.write(out)
    params = AnalysisParameters()
    result = analyze_files(paths["ct"], paths["model"], params, progress=progress.analysis)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    progress(0.9, f"writing results to {results}")
    save_result(result, results, overwrite=args.overwrite, pictures=not args.no_pictures)
    progress(1.0, "done")
    if not args.quiet:
        _print_summary(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``implant-bone-contact``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(_join_coordinate_values(list(sys.argv[1:] if argv is None else argv)))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not in the main thread
        previous = None
    try:
        if args.command == "analyze":
            return run_analysis(args)
        if args.command == "cohort":
            from .cohort import run_cohort_cli

            return run_cohort_cli(args)
        if args.command == "compare":
            from .compare import run_compare

            return run_compare(args)
        if hasattr(args, "run"):
            return args.run(args)
        return run_demo(args)
    except (InputError, OutputError) as exc:
        print(f"implant-bone-contact: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A signal held during the final swap of folders arrives after the result is in place.
        written = getattr(exc, "result_written", None)
        what = f"the result was already complete in {written}" if written else "no result was written"
        print(f"implant-bone-contact: interrupted; {what}", file=sys.stderr)
        return 130
    except MemoryError:
        print("implant-bone-contact: error: out of memory; try fewer --points or a cropped CT", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
