#!/usr/bin/env python
"""Accuracy of the contact classes in post-operative CTs: per-zone cortical fraction against the truth.

For each phantom CT (voxel size x scanner blur x metal HU x extra bloom) the
default analysis (``metal_aware="auto"``: the bone read past the metal's
bloom) runs on the stem, with the phantom's true frame so that only the
sampling is measured. The same phantom without metal (a pre-operative CT,
the stem only planned) runs beside it.

Truth: the phantom's tissue 0.5 mm outside the stem surface at each vertex,
area-weighted per zone. Estimate: ``frac_cortical`` of ``zones.csv`` over
the area that was measured, ``frac_cortical / (1 - frac_unreliable)``.
Printed per zone: estimate minus truth in percentage points, and the
unreliable share; then the zones the run names as a third or more
unreliable (its warning) and the largest error over the other zones.

Phantoms:

``contact``
    :class:`~ImplantBoneContactLib.phantom.ContactPhantom`: the tissue on
    the stem is cortical on some sides and cancellous on the others, every
    layer 4 mm thick, so the truth does not depend on the depth it is read at.
``femur``
    :class:`~ImplantBoneContactLib.phantom.FemurPhantom` (the demo's phantom):
    cancellous gaps as thin as 0.5 mm between the stem and the cortex. For it
    the run also prints the classes by the thickness of that gap along each
    vertex normal (:func:`gap_table`).

Run (about 10 minutes on one core)::

    PYTHONPATH=ImplantBoneContact python benchmarks/postop_accuracy.py [--quick] [--voxels 0.5,1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ImplantBoneContactLib import AnalysisParameters, analyze
from ImplantBoneContactLib.phantom import CORTICAL, ContactPhantom, FemurPhantom, PhantomSpec

ZONES = [str(z) for z in range(1, 15)]
GAP_BINS_MM = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, np.inf)


def gap_table(phantom, result, ct) -> str:
    """Class by the thickness of the tissue between the stem and the cortex along each vertex normal.

    The gap is the distance (mm, 0.05 mm steps, up to 6 mm) along the outward normal to the phantom's first
    cortical tissue. Per bin: share of the stem area below the cut, truth (cortical 0.5 mm out), the share
    of the vertices whose gap is in the CT at all (the phantom's tissues are sampled at the voxel centres
    before the blur: walking the normal in 0.1 mm steps, a voxel centre that is neither metal nor cortex lies
    before the first cortical one), the cortical share of the measured area, where the gap is in the CT and
    where it is not, and the 'unreliable' share (%).
    """
    v = result.vertices
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    nrm = v[["nx", "ny", "nz"]].to_numpy()
    depth = np.arange(0.0, 6.0, 0.05)
    cort = np.stack([phantom.tissue_at(pts + t * nrm) == CORTICAL for t in depth], axis=1)
    gap = np.where(cort.any(axis=1), depth[np.argmax(cort, axis=1)], np.inf)
    # The tissue at the nearest voxel centre along the normal (-1: metal), from the surface to 4 mm out.
    m = ct.ijk_to_ras
    inv = np.linalg.inv(m)
    steps = np.arange(0.0, 4.0, 0.1)
    labels = []
    for t in steps:
        q = np.rint((pts + t * nrm) @ inv[:3, :3].T + inv[:3, 3]) @ m[:3, :3].T + m[:3, 3]
        local = q @ phantom.ras_to_local[:3, :3].T + phantom.ras_to_local[:3, 3]
        labels.append(np.where(phantom.stem_function_local(local) <= 0, -1, phantom.tissue_at(q)))
    lab = np.stack(labels, axis=1)
    first = np.where((lab == CORTICAL).any(axis=1), np.argmax(lab == CORTICAL, axis=1), lab.shape[1])
    in_ct = ((lab != -1) & (lab != CORTICAL) & (np.arange(steps.size)[None, :] < first[:, None])).any(axis=1)
    truth = phantom.tissue_at(pts + 0.5 * nrm) == CORTICAL
    below = v["gruen_zone"].to_numpy() > 0
    cls = v["contact_class"].to_numpy()
    est, unrel = cls == "cortical", cls == "unreliable"
    a = v["area_mm2"].to_numpy()

    def cortical(sel: np.ndarray) -> str:
        measured = a[sel & ~unrel].sum()
        return f"{100 * a[sel & est].sum() / measured:5.0f}" if measured > 0 else f"{'-':>5s}"

    lines = ["  gap to cortex (mm)  area %  truth cortical %  gap in the CT %  measured cortical % (all, gap in CT, not)"
             "  unreliable %"]
    for lo, hi in zip(GAP_BINS_MM[:-1], GAP_BINS_MM[1:]):
        s = below & (gap >= lo) & (gap < hi)
        if not s.any():
            continue
        lines.append(f"  {lo:5.2f}-{hi:<5.2f}         {100 * a[s].sum() / a[below].sum():6.1f}  "
                     f"{100 * a[s & truth].sum() / a[s].sum():16.0f}  {100 * a[s & in_ct].sum() / a[s].sum():15.0f}  "
                     f"{cortical(s):>20s} {cortical(s & in_ct)} {cortical(s & ~in_ct)}  {100 * a[s & unrel].sum() / a[s].sum():13.0f}")
    return "\n".join(lines)


#: Depths (mm along the outward normal) at which the femur phantom's truth is read besides 0.5 mm: its
#: cancellous gaps are as thin as 0.25 mm, so "the tissue just outside the stem" depends on how far out.
TRUTH_DEPTHS_MM = (0.25, 0.5, 0.75)


def zone_errors(phantom, ct, stem, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """Per-zone cortical fraction error (percentage points), unreliable share, truth, and the result."""
    params = AnalysisParameters(points=points, remesh="fast", **phantom.true_frame().parameter_fields())
    result = analyze(ct, stem, params)
    err, unrel, truth = errors_against_truth_at(phantom, result, 0.5)
    return err, unrel, truth, result


def errors_against_truth_at(phantom, result, depth_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-zone cortical fraction error and truth (percentage points) with the truth read ``depth_mm`` out."""
    v = result.vertices
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    nrm = v[["nx", "ny", "nz"]].to_numpy()
    truth_cort = phantom.tissue_at(pts + depth_mm * nrm) == CORTICAL
    zones = result.zones.set_index("zone")
    err, unrel, truth = [], [], []
    for z in ZONES:
        sel = v["gruen_zone"].to_numpy() == int(z)
        a = v["area_mm2"].to_numpy()[sel]
        t = float((a * truth_cort[sel]).sum() / a.sum())
        u = float(zones.loc[z, "frac_unreliable"]) if "frac_unreliable" in zones.columns else 0.0
        est = float(zones.loc[z, "frac_cortical"]) / max(1.0 - u, 1e-9)
        err.append(100 * (est - t))
        unrel.append(100 * u)
        truth.append(100 * t)
    return np.array(err), np.array(unrel), np.array(truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1.0 and 2.0 mm voxels only")
    ap.add_argument("--points", type=int, default=6000)
    ap.add_argument("--voxels", help="voxel sizes in mm, comma-separated (default 0.5,1,2)")
    args = ap.parse_args()
    voxels = (1.0, 2.0) if args.quick else (0.5, 1.0, 2.0)
    if args.voxels:
        voxels = tuple(float(v) for v in args.voxels.split(","))
    configs = []
    for v in voxels:
        configs += [
            ("contact", v, 0.6, 3500.0, 0.0),
            ("contact", v, 1.0, 3000.0, 0.0),
            ("contact", v, 1.0, 4000.0, 1200.0),
            ("contact", v, 0.6, 3500.0, 1200.0),
            ("femur", v, 0.6, 3500.0, 1200.0),
        ]
    print("per-zone error of the cortical fraction (estimate - truth, percentage points), zones 1..14;")
    print("unreliable = share of the stem below the cut in class 'unreliable' (%)\n")
    summary = []
    for name, v, blur, metal_hu, bloom in configs:
        cls = ContactPhantom if name == "contact" else FemurPhantom
        for metal in (True, False):
            if not metal and (metal_hu != 3500.0 or bloom not in (0.0, 1200.0) or (name == "contact" and bloom)):
                continue  # one pre-operative run per phantom, voxel and blur
            spec = PhantomSpec(voxel_mm=v, metal=metal, blur_sigma_mm=blur, metal_hu=metal_hu, bloom_hu=bloom, noise_hu=10.0)
            ph = cls(spec)
            t0 = time.perf_counter()
            ct = ph.make_ct()
            stem = ph.make_stem_surface()
            err, unrel, truth, result = zone_errors(ph, ct, stem, args.points)
            seconds = time.perf_counter() - t0
            all_unrel = float(result.zones.set_index("zone").loc["all"].get("frac_unreliable", 0.0)) * 100
            label = (f"{name:7s} {v:.1f} mm blur {blur:.1f} " + (f"metal {metal_hu:.0f} bloom {bloom:.0f}" if metal else "pre-operative")
                     + f"  [{result.ct_kind}]")
            print(label)
            print("  error  " + " ".join(f"{e:+4.0f}" for e in err) + f"   max |err| {np.abs(err).max():4.1f}")
            if metal:
                print("  unrel  " + " ".join(f"{u:4.0f}" for u in unrel) + f"   all {all_unrel:4.1f}%")
            print("  truth  " + " ".join(f"{t:4.0f}" for t in truth) + f"   ({seconds:.0f} s)")
            named = [int(z) - 1 for z in result.postop.get("zones_mostly_unreliable", [])]
            kept = np.setdiff1d(np.arange(14), named)
            rest = float(np.abs(err[kept]).max()) if kept.size else float("nan")
            if metal:
                print(f"  zones named mostly unreliable: {', '.join(str(z + 1) for z in named) or 'none'}; "
                      f"max |err| over the others {rest:4.1f}")
            if name == "femur":
                by_depth = [float(np.abs(errors_against_truth_at(ph, result, d)[0]).max()) for d in TRUTH_DEPTHS_MM]
                print("  max |err| with the truth read " + ", ".join(f"{d} mm out: {e:4.1f}" for d, e in zip(TRUTH_DEPTHS_MM, by_depth)))
                print(gap_table(ph, result, ct))
            summary.append((label, float(np.abs(err).max()), float(np.sqrt(np.mean(err**2))), all_unrel, rest, len(named)))
    print("\nsummary: max |error| and RMS over the 14 zones (percentage points), unreliable share (%), and the max")
    print("over the zones the run does not name as a third or more unreliable (how many it names)")
    for label, mx, rms, u, rest, n_named in summary:
        print(f"  {label:60s} max {mx:5.1f}  rms {rms:5.1f}  unreliable {u:5.1f}  others {rest:5.1f} ({n_named} named)")


if __name__ == "__main__":
    main()
