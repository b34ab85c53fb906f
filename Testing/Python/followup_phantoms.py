"""Baseline and follow-up phantom CTs of one stem: calcar bone loss, other noise, other placement.

Used by test_compare.py and by the README's follow-up example
(``python Testing/Python/followup_phantoms.py OUT``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ImplantBoneContactLib import FemurPhantom, PhantomSpec
from ImplantBoneContactLib.mesh import transform_polydata, write_polydata
from ImplantBoneContactLib.phantom import CANCELLOUS  # noqa: F401 - re-exported for the tests

#: Height of the cut above the stem tip in the phantom (mm): the tip is 130 mm below the cut.
CUT_HEIGHT_MM = 130.0


def in_calcar_zone(local: np.ndarray) -> np.ndarray:
    """True inside Gruen zone 7 of the phantom's true frame (local mm): medial sector, proximal third."""
    x, y, z = local[..., 0], local[..., 1], local[..., 2]
    return (x > 0) & (np.abs(y) < x) & (z > -CUT_HEIGHT_MM / 3.0) & (z <= 0.0)


class CalcarLossPhantom(FemurPhantom):
    """The femur phantom with cancellous bone ``loss_hu`` less dense in the calcar zone, placed by an extra shift.

    The loss lowers the tissue HU before blur; the shift (RAS mm) is added to the
    phantom's placement, so the bone, the stem and the CT content move rigidly together.
    """

    def __init__(self, spec: PhantomSpec, loss_hu: float = 0.0, shift_mm=(0.0, 0.0, 0.0)) -> None:
        super().__init__(spec)
        self.loss_hu = float(loss_hu)
        self.local_to_ras[:3, 3] += np.asarray(shift_mm, dtype=float)
        self.ras_to_local = np.linalg.inv(self.local_to_ras)

    def _hu_local(self, p: np.ndarray) -> np.ndarray:
        hu = super()._hu_local(p)
        if self.loss_hu:
            hu = hu - np.float32(self.loss_hu) * ((self._tissue_local(p) == CANCELLOUS) & in_calcar_zone(p))
        return hu


#: The follow-up of the examples: 150 HU less cancellous bone in the calcar zone, more noise, coarser
#: voxels, the femur (and stem) turned and shifted in the scanner.
FOLLOWUP = {"loss_hu": 150.0, "voxel_mm": 1.2, "noise_hu": 25.0, "seed": 2, "tilt_deg": (2.0, 9.0), "shift_mm": (6.0, -9.0, 14.0),
            "hu_map": (1.0, 0.0)}


def write_pair(folder: Path, followups: dict | None = None, baseline_voxel: float = 1.0, baseline_noise: float = 10.0) -> dict:
    """Write ``baseline_ct.nrrd``, one ``<name>_ct.nrrd`` per follow-up, the CAD stem ``stem.stl`` and one registration per CT.

    Args:
        folder: where to write.
        followups: name -> settings overriding :data:`FOLLOWUP` (``loss_hu``, ``voxel_mm``,
            ``noise_hu``, ``seed``, ``tilt_deg``, ``shift_mm``, ``hu_map``). ``hu_map``
            ``(scale, offset)`` gives that scanner another calibration: its HU are
            ``scale * HU + offset`` of the baseline scanner's.
        baseline_voxel, baseline_noise: the baseline CT's voxel size (mm) and noise (HU).

    The stem model is in its own (CAD) coordinates; ``baseline_registration.txt``
    and ``<name>_registration.txt`` move it into each CT (4x4 RAS matrices).
    """
    from ImplantBoneContactLib.volume import write_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    followups = {"followup": {}} if followups is None else followups
    base = CalcarLossPhantom(PhantomSpec(voxel_mm=baseline_voxel, noise_hu=baseline_noise, seed=1))
    paths = {"baseline_ct": folder / "baseline_ct.nrrd", "model": folder / "stem.stl",
             "baseline_transform": folder / "baseline_registration.txt"}
    write_volume(base.make_ct(), paths["baseline_ct"])
    cad = transform_polydata(base.make_stem_surface(), base.ras_to_local)
    write_polydata(cad, paths["model"], space="RAS")
    np.savetxt(paths["baseline_transform"], base.local_to_ras)
    phantoms = {"baseline": base}
    for name, overrides in followups.items():
        cfg = {**FOLLOWUP, **overrides}
        follow = CalcarLossPhantom(
            PhantomSpec(voxel_mm=cfg["voxel_mm"], noise_hu=cfg["noise_hu"], seed=cfg["seed"], tilt_deg=tuple(cfg["tilt_deg"])),
            loss_hu=cfg["loss_hu"], shift_mm=cfg["shift_mm"],
        )
        ct = follow.make_ct()
        scale, offset = cfg["hu_map"]
        if (scale, offset) != (1.0, 0.0):
            ct.array = np.rint(ct.array * scale + offset).astype(np.int16)
        paths[f"{name}_ct"] = folder / f"{name}_ct.nrrd"
        paths[f"{name}_transform"] = folder / f"{name}_registration.txt"
        write_volume(ct, paths[f"{name}_ct"])
        np.savetxt(paths[f"{name}_transform"], follow.local_to_ras)
        phantoms[name] = follow
    return {"paths": paths, "phantoms": phantoms}


if __name__ == "__main__":
    out = write_pair(Path(sys.argv[1]))
    for k, v in out["paths"].items():
        print(k, v)
