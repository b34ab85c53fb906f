"""Drawing on a figure in its own pixels, without axes.

Pictures made of images shown one to one (the 3D views, the CT slices) need
no axes: an axes costs tick machinery and resamples its image. These helpers
place images, lines and text in figure pixels with the origin at the TOP
left (as in the PNG), and record each panel so that tests and callers can
find what was drawn where (:class:`Panel`, ``figure.panels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import IdentityTransform


@dataclass
class Panel:
    """One picture panel of a figure, in PNG pixels (origin at the top left).

    Attributes:
        name: what it shows (``"anterior"``, ``"coronal"`` ...).
        box: ``(column, row, width, height)`` of the panel's image in the PNG (pixels).
        title: the panel's title.
        labels: ``(text, column, row)`` of the labels written on the image, in image pixels.
    """

    name: str
    box: tuple[int, int, int, int]
    title: str = ""
    labels: list = field(default_factory=list)

    def crop(self, png: np.ndarray) -> np.ndarray:
        """The panel's pixels in the figure's PNG (rows x columns x channels)."""
        c, r, w, h = self.box
        return png[r: r + h, c: c + w]


def figure_px(width_px: int, height_px: int, dpi: float) -> Figure:
    """A figure of ``width_px`` x ``height_px`` pixels on an Agg canvas, with an empty panel record."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    fig.panels = {}
    return fig


def _height(fig: Figure) -> float:
    return fig.get_figheight() * fig.dpi


class PixelImage(Artist):
    """An opaque RGB image drawn one to one at a figure pixel, straight onto the canvas.

    What ``Figure.figimage(..., resample=False)`` draws, without its
    resampling and normalisation machinery (about 10 ms an image): the
    pixels are handed to the renderer as they are.

    Attributes:
        rgba: ``(H, W, 4)`` uint8, the first row at the top (as given).
        x, y: figure pixel of the image's bottom left corner (origin at the bottom left, as in matplotlib).
    """

    def __init__(self, rgb: np.ndarray, x: int, y: int, zorder: float = 0):
        super().__init__()
        self.rgba = as_rgba8(rgb)
        self.x, self.y = int(x), int(y)
        self.set_zorder(zorder)

    def get_array(self) -> np.ndarray:
        return self.rgba

    def draw(self, renderer) -> None:
        if not self.get_visible() or self.rgba.size == 0:
            return
        gc = renderer.new_gc()
        # The renderer takes the rows bottom first.
        renderer.draw_image(gc, self.x, self.y, self.rgba[::-1])
        gc.restore()
        self.stale = False


def as_rgba8(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 opaque RGBA of an ``(H, W, 3)`` uint8 or float 0..1 image (``(H, W)``: grey)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if rgb.dtype != np.uint8:
        # As matplotlib converts floats for display: 255 x truncated, clipped to 0..1 first.
        rgb = (np.clip(rgb.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.empty(rgb.shape[:2] + (4,), dtype=np.uint8)
    out[..., :3] = rgb[..., :3]
    out[..., 3] = 255
    return out


def add_image(fig: Figure, rgb: np.ndarray, x: int, y: int, zorder: float = 0) -> PixelImage:
    """Put an image one to one with its bottom left corner at figure pixel ``(x, y)`` (origin at the bottom left).

    It is kept with the figure's images, so it is drawn where a ``figimage`` would be.
    """
    artist = PixelImage(rgb, x, y, zorder)
    artist.set_figure(fig)
    fig.images.append(artist)
    fig.stale = True
    return artist


def image(fig: Figure, rgb: np.ndarray, column: int, row: int) -> None:
    """Put an image (``(H, W, 3)`` uint8 or float 0..1; ``(H, W)`` is grey) one to one, top left corner at ``(column, row)``."""
    h = np.asarray(rgb).shape[0]
    add_image(fig, rgb, int(column), int(round(_height(fig) - row - h)))


def text(fig: Figure, column: float, row: float, s: str, **kw) -> None:
    """Text at figure pixel ``(column, row)`` (``ha``/``va`` as for :meth:`Figure.text`)."""
    fig.text(column, _height(fig) - row, s, transform=IdentityTransform(), **kw)


def segments(fig: Figure, segs: np.ndarray, column: float, row: float, **kw) -> None:
    """Line segments ``(M, 2, 2)`` of (column, row) image pixels (centres at integers) as one path.

    The image's top left corner is at figure pixel ``(column, row)``. All
    segments are one line with breaks, drawn in one call.
    """
    segs = np.asarray(segs, dtype=float).reshape(-1, 2, 2)
    if segs.shape[0] == 0:
        return
    height = _height(fig)
    xy = np.full((segs.shape[0], 3, 2), np.nan)
    xy[:, :2, 0] = column + segs[..., 0] + 0.5
    xy[:, :2, 1] = height - (row + segs[..., 1] + 0.5)
    xy = xy.reshape(-1, 2)
    fig.add_artist(Line2D(xy[:, 0], xy[:, 1], transform=IdentityTransform(), figure=fig, **kw))


def polyline(fig: Figure, cols, rows, **kw) -> None:
    """A line through figure pixels ``(cols, rows)``."""
    y = _height(fig) - np.asarray(rows, dtype=float)
    fig.add_artist(Line2D(np.asarray(cols, dtype=float), y, transform=IdentityTransform(), figure=fig, **kw))
