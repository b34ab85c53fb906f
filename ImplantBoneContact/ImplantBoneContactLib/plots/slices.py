"""``slices.png``: a registration check. CT slices through the stem with its outline, coloured by contact class.

Two long slices contain the stem axis (coronal: axis and medial direction;
sagittal: axis and anterior direction) and three cross the axis at the
middle of the proximal, middle and distal bands. Each shows the CT in grey
(:data:`~ImplantBoneContactLib.display.HU_DISPLAY_RANGE`, the range of every
HU picture) and the line where the slice plane cuts the stem surface,
coloured by the contact class of the nearest vertex: a stem whose outline
leaves the canal, or sits beside its own metal in a post-operative CT, is
misregistered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..display import ABOVE_CUT_COLOUR, HU_DISPLAY_RANGE, NOT_SAMPLED_COLOUR
from ..sampling import sample
from . import pixels
from .borders import _cut
from .style import DPI, class_colours, class_label, run_description

#: Size of a slice pixel (mm).
SLICE_PIXEL_MM = 0.4


@dataclass
class Slice:
    """One CT slice through the stem.

    Attributes:
        name: ``"coronal"``, ``"sagittal"`` or ``"axial proximal"`` / ``"axial middle"`` / ``"axial distal"``.
        origin: RAS point (mm) at image coordinates (0, 0) mm.
        u, v: RAS unit vectors of the image's right and up directions.
        u_range, v_range: extent of the image along ``u`` and ``v`` (mm, from ``origin``).
        hu: ``(rows, columns)`` CT HU on the slice (row 0 at the top); NaN outside the CT.
        outline: ``(M, 2, 2)`` outline segments in slice coordinates (u, v mm).
        outline_class: ``(M,)`` contact class of each outline segment.
        u_words, v_words: anatomical names of the image's left/right and bottom/top directions.
    """

    name: str
    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    u_range: tuple[float, float]
    v_range: tuple[float, float]
    hu: np.ndarray
    outline: np.ndarray
    outline_class: np.ndarray
    u_words: tuple[str, str]
    v_words: tuple[str, str]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.u, self.v)

    def to_slice(self, pts: np.ndarray) -> np.ndarray:
        """RAS points (mm) to slice coordinates (u, v) in mm."""
        d = np.asarray(pts, dtype=float) - self.origin
        return np.stack([d @ self.u, d @ self.v], axis=-1)


def _segment_classes(result, segments: np.ndarray, locator) -> np.ndarray:
    """Contact class of the vertex nearest each segment's midpoint."""
    cls = result.vertices["contact_class"].to_numpy()
    if segments.shape[0] == 0:
        return np.zeros(0, dtype=object)
    nearest = [locator.FindClosestPoint(m) for m in segments.mean(axis=1).tolist()]
    return cls[np.asarray(nearest, dtype=np.int64)]


def _locator(surface):
    from vtkmodules.vtkCommonDataModel import vtkStaticPointLocator

    loc = vtkStaticPointLocator()
    loc.SetDataSet(surface)
    loc.BuildLocator()
    return loc


def _side(vec, frame) -> str:
    names = {"medial": frame.medial, "lateral": -frame.medial, "anterior": frame.anterior,
             "posterior": -frame.anterior, "proximal": -frame.axis, "distal": frame.axis}
    return max(names, key=lambda k: float(np.dot(vec, names[k])))


def make_slices(result, volume) -> list[Slice]:
    """The five slices: coronal and sagittal along the stem axis, and three axial across it."""
    frame = result.frame
    surface_pts = result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
    axis = np.asarray(frame.axis, dtype=float)
    up = -axis
    med = np.asarray(frame.medial, dtype=float)
    ant = np.asarray(frame.anterior, dtype=float)
    tip = np.asarray(frame.tip, dtype=float)
    heights = frame.height(surface_pts)
    locator = _locator(result.surface)
    v_lo, v_hi = float(min(heights.min(), 0.0)) - 15.0, float(heights.max()) + 10.0
    out = []
    for name, u in (("coronal", med), ("sagittal", ant)):
        # The image's right is the patient's left or anterior, as a CT viewer shows a coronal or sagittal slice.
        ref = np.array([1.0, 0.0, 0.0]) if name == "coronal" else np.array([0.0, -1.0, 0.0])
        u = u if float(u @ ref) < 0 else -u
        across = (surface_pts - tip) @ u
        u_range = (float(across.min()) - 22.0, float(across.max()) + 22.0)
        out.append(_slice(result, volume, locator, name, tip, u, up, u_range, (v_lo, v_hi)))
    cut0 = float(frame.cut_height(tip[None, :])[0])
    fractions = np.cumsum(np.asarray(result.parameters.bands_axial, dtype=float))
    mids = fractions - 0.5 * np.asarray(result.parameters.bands_axial, dtype=float)
    radial = np.linalg.norm((surface_pts - tip) - np.outer((surface_pts - tip) @ axis, axis), axis=1)
    for label, f in zip(("proximal", "middle", "distal"), mids):
        h = cut0 * (1.0 - f)
        centre = tip + h * up
        near = np.abs(heights - h) < 3.0
        half = float(radial[near].max() if near.any() else radial.max()) + 18.0
        # Seen from below (the patient's feet), as a CT viewer shows an axial slice: anterior up, patient's left on the right.
        v = ant
        u = np.cross(v, axis)
        u = -u if float(u[0]) > 0 else u
        out.append(_slice(result, volume, locator, f"axial {label}", centre, u, v, (-half, half), (-half, half)))
    return out


def _slice(result, volume, locator, name, origin, u, v, u_range, v_range) -> Slice:
    px = SLICE_PIXEL_MM
    us = np.arange(u_range[0] + px / 2, u_range[1], px)
    vs = np.arange(v_range[1] - px / 2, v_range[0], -px)
    grid = origin[None, None, :] + us[None, :, None] * u[None, None, :] + vs[:, None, None] * v[None, None, :]
    hu, _ = sample(volume, grid.reshape(-1, 3), "trilinear")
    normal = np.cross(u, v)
    segs = _cut(result.surface, origin, normal)
    classes = _segment_classes(result, segs, locator)
    d = segs - origin
    outline = np.stack([d @ u, d @ v], axis=-1) if segs.shape[0] else np.zeros((0, 2, 2))
    frame = result.frame
    return Slice(name, np.asarray(origin, float), u, v, (float(u_range[0]), float(u_range[1])),
                 (float(v_range[0]), float(v_range[1])), hu.reshape(vs.size, us.size), outline, classes,
                 (_side(-u, frame), _side(u, frame)), (_side(-v, frame), _side(v, frame)))


def resample_bilinear(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A 2D image resampled to ``rows`` x ``cols`` pixels by bilinear interpolation (pixel centres aligned)."""
    h, w = img.shape

    def axis(n_out: int, n_in: int):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1.0)
        i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 2) if n_in > 1 else np.zeros(n_out, dtype=np.int64)
        f = x - i0 if n_in > 1 else np.zeros(n_out)
        return i0, np.minimum(i0 + 1, n_in - 1), f

    r0, r1, fr = axis(rows, h)
    c0, c1, fc = axis(cols, w)
    top = img[r0][:, c0] * (1 - fc) + img[r0][:, c1] * fc
    bottom = img[r1][:, c0] * (1 - fc) + img[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def slices_figure(result, volume=None, slices: list[Slice] | None = None) -> Figure:
    """The registration check picture: coronal, sagittal and three axial slices with the coloured outline.

    Args:
        result: the analysis result.
        volume: the CT (:class:`~ImplantBoneContactLib.volume.Volume`); ``result.volume`` when ``None``.
        slices: from :func:`make_slices` (made if ``None``).
    """
    if slices is None:
        volume = volume if volume is not None else getattr(result, "volume", None)
        if volume is None:
            raise ValueError("the CT is needed for the slices picture")
        slices = make_slices(result, volume)
    colours = {**class_colours(result), "above_resection": ABOVE_CUT_COLOUR}
    long_ = slices[:2]
    px = SLICE_PIXEL_MM
    panel_h = max(s.hu.shape[0] for s in long_)
    # Figure pixels per slice pixel: big slices shrink to 640 px, a short implant's grow (up to 3x) so that
    # the three axial slices beside them stay readable and the key fits.
    scale = min(3.0, 640.0 / panel_h)
    widths = [s.hu.shape[1] * scale for s in long_]
    heights = [s.hu.shape[0] * scale for s in long_]
    ax_side = (max(heights) - 2 * 34) / 3.0
    left, gap, top, bottom, key_w = 40, 40, 106, 40, 262
    fig_w = left + sum(widths) + gap * 2 + ax_side + gap + key_w
    n_keys = len(result.class_names) + 2
    key_h = 34 + 22 * n_keys + 16 * sum(class_label(result, n).count("\n") for n in result.class_names) + 70
    fig_h = top + max(max(heights), key_h) + bottom
    fig = pixels.figure_px(int(round(fig_w)), int(round(fig_h)), DPI)
    fig_w, fig_h = int(round(fig_w)), int(round(fig_h))
    fig.text(0.5, 1 - 14 / fig_h, "Registration check: CT slices through the stem", ha="center", va="top",
             fontsize=15, weight="bold")
    fig.text(0.5, 1 - 40 / fig_h, run_description(result), ha="center", va="top", fontsize=10, color="#222222")
    fig.text(0.5, 1 - 58 / fig_h, f"CT grey scale {HU_DISPLAY_RANGE[0]:g} to {HU_DISPLAY_RANGE[1]:g} HU; line: the stem "
             "outline in the slice, coloured by contact class; it should sit in the canal", ha="center", va="top",
             fontsize=9, color="#444444")
    # Panels' top left corners and sizes in figure pixels (origin at the top left).
    boxes = []
    x = left
    for w, h in zip(widths, heights):
        boxes.append((x, top, w, h))
        x += w + gap
    for k in range(3):
        boxes.append((x, top + k * (ax_side + 34), ax_side, ax_side))
    boxes = [tuple(int(round(v)) for v in box) for box in boxes]
    by_class: dict = {}
    for s, (x0, y0, w, h) in zip(slices, boxes):
        fig.panels[s.name] = pixels.Panel(s.name, (x0, y0, w, h), s.name.capitalize())
        grey = np.clip((s.hu - HU_DISPLAY_RANGE[0]) / (HU_DISPLAY_RANGE[1] - HU_DISPLAY_RANGE[0]), 0.0, 1.0)
        grey = np.where(np.isfinite(s.hu), grey, 1.0)  # white outside the CT
        pixels.image(fig, (255.0 * resample_bilinear(grey, h, w) + 0.5).astype(np.uint8), x0, y0)
        sx = w / (s.u_range[1] - s.u_range[0])
        sy = h / (s.v_range[1] - s.v_range[0])

        def to_px(u, v, s=s, x0=x0, y0=y0, sx=sx, sy=sy):
            return x0 + (np.asarray(u) - s.u_range[0]) * sx, y0 + (s.v_range[1] - np.asarray(v)) * sy

        if s.outline.shape[0]:
            cx, cy = to_px(s.outline[..., 0], s.outline[..., 1])
            segs = np.stack([cx, cy], axis=-1) - 0.5
            for c in np.unique(s.outline_class.astype(str)):
                by_class.setdefault(c, []).append(segs[s.outline_class.astype(str) == c])
        pixels.text(fig, x0 + 0.5 * w, y0 - 4, s.name.capitalize(), ha="center", va="baseline", fontsize=11)
        small = s.name.startswith("axial")
        fs = 8 if small else 9
        pixels.text(fig, x0 + 0.01 * w, y0 + 0.5 * h, s.u_words[0], rotation=90, ha="left", va="center", fontsize=fs,
                    color="white")
        pixels.text(fig, x0 + 0.99 * w, y0 + 0.5 * h, s.u_words[1], rotation=90, ha="right", va="center", fontsize=fs,
                    color="white")
        pixels.text(fig, x0 + 0.5 * w, y0 + 0.01 * h, s.v_words[1], ha="center", va="top", fontsize=fs, color="white")
        if not small:
            # The axial levels on the long slices, and a 20 mm scale bar.
            for a in slices[2:]:
                vv = float((a.origin - s.origin) @ s.v)
                c0, r = to_px([s.u_range[0], s.u_range[0] + 0.08 * (s.u_range[1] - s.u_range[0])], [vv, vv])
                pixels.polyline(fig, c0, r, color="#ffd400", lw=1.5)
                pixels.text(fig, c0[1] + 0.01 * w, r[0], a.name.split()[1][0].upper(), color="#ffd400", fontsize=8,
                            va="center", ha="left")
            cb, rb = to_px([s.u_range[1] - 24, s.u_range[1] - 4], [s.v_range[0] + 5] * 2)
            pixels.polyline(fig, cb, rb, color="white", lw=3, solid_capstyle="butt")
            pixels.text(fig, 0.5 * (cb[0] + cb[1]), rb[0] - 2 * sy, "20 mm", color="white", fontsize=8, ha="center",
                        va="bottom")
    # The outline: white under the class colours, one path per class over all slices.
    every = np.concatenate([np.concatenate(v) for v in by_class.values()]) if by_class else np.zeros((0, 2, 2))
    pixels.segments(fig, every, 0, 0, color="white", lw=3.4, solid_capstyle="round")
    for c, segs in by_class.items():
        pixels.segments(fig, np.concatenate(segs), 0, 0, color=colours.get(c, NOT_SAMPLED_COLOUR), lw=2.0,
                        solid_capstyle="round")
    handles = [Patch(facecolor=colours[n], edgecolor="#555555", label=class_label(result, n)) for n in result.class_names]
    if any(c == "not_sampled" for s in slices for c in s.outline_class):
        handles.append(Patch(facecolor=NOT_SAMPLED_COLOUR, edgecolor="#555555", label="outside the CT (no HU)"))
    if any(c == "above_resection" for s in slices for c in s.outline_class):
        handles.append(Patch(facecolor=ABOVE_CUT_COLOUR, edgecolor="#555555", label="above the resection\n(not analysed)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=((fig_w - key_w + 10) / fig_w, 1 - top / fig_h),
               fontsize=9, frameon=False, title="Outline: contact class", title_fontsize=10, alignment="left")
    fig.text((fig_w - key_w + 10) / fig_w, (bottom + 40) / fig_h,
             f"P, M, D: levels of the axial\nslices (band middles)\npixel {px:g} mm", fontsize=8.5, color="#444444",
             va="bottom")
    return fig
