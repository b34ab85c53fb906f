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
from ImplantBoneContactLib.phantom import CANCELLOUS

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


def write_pair(folder: Path, loss_hu: float = 150.0, baseline_voxel: float = 1.0, followup_voxel: float = 1.2,
               baseline_noise: float = 10.0, followup_noise: float = 25.0) -> dict:
    """Write ``baseline_ct.nrrd``, ``followup_ct.nrrd``, the CAD stem ``stem.stl`` and one registration per CT.

    The stem model is in its own (CAD) coordinates; ``baseline_registration.txt``
    and ``followup_registration.txt`` move it into each CT (4x4 RAS matrices).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = CalcarLossPhantom(PhantomSpec(voxel_mm=baseline_voxel, noise_hu=baseline_noise, seed=1))
    follow = CalcarLossPhantom(PhantomSpec(voxel_mm=followup_voxel, noise_hu=followup_noise, seed=2, tilt_deg=(2.0, 9.0)),
                               loss_hu=loss_hu, shift_mm=(6.0, -9.0, 14.0))
    from ImplantBoneContactLib.volume import write_volume

    paths = {
        "baseline_ct": folder / "baseline_ct.nrrd",
        "followup_ct": folder / "followup_ct.nrrd",
        "model": folder / "stem.stl",
        "baseline_transform": folder / "baseline_registration.txt",
        "followup_transform": folder / "followup_registration.txt",
    }
    write_volume(base.make_ct(), paths["baseline_ct"])
    write_volume(follow.make_ct(), paths["followup_ct"])
    cad = transform_polydata(base.make_stem_surface(), base.ras_to_local)
    write_polydata(cad, paths["model"], space="RAS")
    np.savetxt(paths["baseline_transform"], base.local_to_ras)
    np.savetxt(paths["followup_transform"], follow.local_to_ras)
    return {"paths": paths, "baseline": base, "followup": follow}


if __name__ == "__main__":
    out = write_pair(Path(sys.argv[1]))
    for k, v in out["paths"].items():
        print(k, v)
