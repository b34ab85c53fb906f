"""The noise of a CT, measured in homogeneous soft tissue away from the implant.

Two scans of one patient differ by noise (dose, reconstruction kernel, body
size) even where nothing changed; a follow-up comparison needs that noise to
tell a change from chance (see :mod:`.compare`). Every analysis records it in
``parameters.json`` (``inputs.ct.noise``).

Method: cubes of ``BLOCK_VOXELS``^3 voxels are drawn at random positions in
the CT (a fixed seed, so the number is reproducible). A cube counts when all
its voxels lie in the soft-tissue range :data:`SOFT_TISSUE_HU` (fat, muscle,
fluid: no air, bone or metal) and its centre is at least
:data:`IMPLANT_MARGIN_MM` from every implant vertex (metal streaks and bloom
stay out). The noise is the median over the cubes of their voxel standard
deviation: a cube straddling fat and muscle has a large one, and the median
ignores those as long as most cubes are homogeneous. The neighbour-voxel
correlation of the noise (within cubes, after removing each cube's mean)
is recorded too: a smooth reconstruction kernel correlates neighbouring
voxels, so fewer of them are independent.
"""

from __future__ import annotations

import numpy as np

from .volume import Volume

#: Edge of a noise cube (voxels).
BLOCK_VOXELS = 5
#: HU range of the voxels of a cube (soft tissue: fat about -100, muscle about 40).
SOFT_TISSUE_HU = (-250.0, 200.0)
#: Distance (mm) from the implant below which no cube is taken.
IMPLANT_MARGIN_MM = 20.0
#: Random cube positions tried.
N_CANDIDATES = 8000
#: Soft-tissue cubes used at most (a median over 3000 is stable to about 1 %).
MAX_BLOCKS = 3000
#: Fewer accepted cubes than this: the noise is not reported (NaN).
MIN_BLOCKS = 20


def scan_noise(volume: Volume, implant_points_ras: np.ndarray | None = None, seed: int = 0) -> dict:
    """Noise standard deviation (HU) of a CT in soft tissue away from the implant.

    Args:
        volume: the CT.
        implant_points_ras: ``(N, 3)`` implant surface points (RAS mm) to keep away from.
        seed: seed of the random cube positions.

    Returns:
        ``noise_sd_hu`` (median cube standard deviation, NaN if fewer than
        :data:`MIN_BLOCKS` cubes qualified), ``neighbour_correlation``,
        ``tissue_mean_hu`` (median cube mean), ``n_blocks``, ``block_mm`` and
        ``method``.
    """
    a = volume.array
    nk, nj, ni = a.shape
    b = BLOCK_VOXELS
    out = {
        "noise_sd_hu": float("nan"),
        "neighbour_correlation": float("nan"),
        "tissue_mean_hu": float("nan"),
        "n_blocks": 0,
        "block_mm": [float(b * s) for s in volume.spacing_mm],
        "method": f"median standard deviation of {b}x{b}x{b}-voxel cubes in soft tissue "
        f"({SOFT_TISSUE_HU[0]:g}..{SOFT_TISSUE_HU[1]:g} HU) at least {IMPLANT_MARGIN_MM:g} mm from the implant",
    }
    if min(nk, nj, ni) < b:
        return out
    rng = np.random.default_rng(seed)
    corner = np.stack([rng.integers(0, n - b + 1, N_CANDIDATES) for n in (nk, nj, ni)], axis=1)
    offs = np.arange(b)
    kk = corner[:, 0, None, None, None] + offs[:, None, None]
    jj = corner[:, 1, None, None, None] + offs[None, :, None]
    ii = corner[:, 2, None, None, None] + offs[None, None, :]
    blocks = a[kk, jj, ii]  # (n, b, b, b), the CT's own type
    lo, hi = SOFT_TISSUE_HU
    flat_all = blocks.reshape(len(blocks), -1)
    ok = (flat_all.min(axis=1) >= lo) & (flat_all.max(axis=1) <= hi)
    keep = np.flatnonzero(ok)[:MAX_BLOCKS]  # the positions are random: the first ones are a random subset
    corner, blocks = corner[keep], blocks[keep].astype(np.float64)
    if implant_points_ras is not None and len(implant_points_ras) and len(corner):
        pts = np.asarray(implant_points_ras, dtype=float)
        if pts.shape[0] > 600:
            pts = pts[np.linspace(0, pts.shape[0] - 1, 600).astype(int)]
        centre = (corner[:, ::-1] + (b - 1) / 2.0) @ volume.ijk_to_ras[:3, :3].T + volume.ijk_to_ras[:3, 3]
        # Squared distances as |c|^2 - 2 c.p + |p|^2: one matrix product instead of an (n, m, 3) array.
        d2 = (centre**2).sum(1)[:, None] - 2.0 * centre @ pts.T + (pts**2).sum(1)[None, :]
        blocks = blocks[d2.min(axis=1) >= IMPLANT_MARGIN_MM**2]
    out["n_blocks"] = int(len(blocks))
    if len(blocks) < MIN_BLOCKS:
        return out
    flat = blocks.reshape(len(blocks), -1)
    sd = flat.std(axis=1, ddof=1)
    out["noise_sd_hu"] = float(np.median(sd))
    out["tissue_mean_hu"] = float(np.median(flat.mean(axis=1)))
    # Correlation of neighbours along each axis, in cubes no noisier than typical (homogeneous ones).
    calm = sd <= np.median(sd)
    r = blocks[calm] - blocks[calm].mean(axis=(1, 2, 3), keepdims=True)
    var = float((r**2).mean())
    if var > 0:
        cov = np.mean([(r[:, 1:] * r[:, :-1]).mean(), (r[:, :, 1:] * r[:, :, :-1]).mean(), (r[:, :, :, 1:] * r[:, :, :, :-1]).mean()])
        out["neighbour_correlation"] = float(cov / var)
    return out
