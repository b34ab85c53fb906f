"""Pictures and the HTML report of an analysis.

Every picture is drawn from an :class:`~ImplantBoneContactLib.analysis.AnalysisResult`
(and, for the slices, the CT it holds) with matplotlib's Agg canvas on a
:class:`matplotlib.figure.Figure` (never ``pyplot``, so no global backend or
figure state is touched) and VTK offscreen rendering (EGL when there is no
display), so they work in a terminal, in a batch job and inside Slicer.

One module per kind of picture:

:mod:`.views3d`
    ``heatmap_hu.png``, ``zones.png``, ``contact_classes.png``: the stem from
    anterior, posterior, medial and lateral (rendering in :mod:`.render`).
:mod:`.unrolled`
    ``unrolled_hu.png``, ``unrolled_classes.png``: azimuth against height.
:mod:`.charts`
    ``zone_fractions.png``: contact-class fractions per zone.
:mod:`.slices`
    ``slices.png``: CT slices through the stem with its outline (registration check).
:mod:`.report`
    ``report.html``: the result and the pictures on one page.

Zone borders come from the zone planes cut against the surface
(:mod:`.borders`); colours and the HU range from
:mod:`ImplantBoneContactLib.display` (through :mod:`.style`). This package
re-exports the public names, so ``from ImplantBoneContactLib import plots``
and ``plots.make_pictures(result)`` keep working.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..atomicio import write_bytes_atomic
from ..display import (
    ABOVE_CUT_COLOUR,
    CLASS_COLOURS,
    CLASS_PALETTES,
    HU_COLORMAP,
    HU_DISPLAY_RANGE,
    METAL_COLOUR,
    NOT_SAMPLED_COLOUR,
    UNCLASSIFIED_COLOUR,
    ZONE_COLOURS,
)
from . import views3d  # noqa: F401 - the module, for callers that need its helpers
from .borders import Border, zone_borders
from .charts import zone_fractions_figure
from .png import opaque_rgb, png_rgb
from .render import VIEWS, ViewGeometry, offscreen_window, render_geometry
from .report import PICTURE_FILES, REPORT_FILE, report_html
from .second_process import SecondProcess, fork_is_safe
from .slices import Slice, make_slices, slices_figure
from .style import class_colours, hu_to_rgb, run_description, vertex_colours
from .unrolled import UnrolledMap, unrolled_figure, unrolled_map
from .views3d import SurfaceView, colour_views, render_surface_views, surface_views_figure

#: Former name of :data:`~ImplantBoneContactLib.display.HU_DISPLAY_RANGE`.
HU_RANGE = HU_DISPLAY_RANGE

__all__ = [
    "ABOVE_CUT_COLOUR", "CLASS_COLOURS", "CLASS_PALETTES", "HU_COLORMAP", "HU_DISPLAY_RANGE", "HU_RANGE",
    "METAL_COLOUR", "NOT_SAMPLED_COLOUR", "PICTURE_FILES", "REPORT_FILE", "UNCLASSIFIED_COLOUR", "VIEWS",
    "ZONE_COLOURS", "Border", "Slice", "SurfaceView", "UnrolledMap", "ViewGeometry", "class_colours",
    "colour_views", "figure_png", "hu_to_rgb", "make_pictures", "make_slices", "offscreen_window",
    "render_geometry", "render_surface_views", "report_html", "run_description", "slices_figure",
    "surface_views_figure", "unrolled_figure", "unrolled_map", "vertex_colours", "write_pictures",
    "zone_borders", "zone_fractions_figure",
]


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure at its own size and resolution (no cropping), drawn once, on white.

    The figure is drawn on its Agg canvas and written as opaque RGB at zlib
    level 1 by :func:`.png.png_rgb`: the same pixels as
    ``savefig(format="png")`` gives, in less encoding time.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_facecolor("white")
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return png_rgb(opaque_rgb(np.asarray(canvas.buffer_rgba())))


@contextmanager
def _timed(timings: dict | None, name: str):
    """Add the wall and CPU seconds of the block to ``timings[name]`` (``(wall_s, cpu_s)``), when given."""
    if timings is None:
        yield
        return
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        w, c = timings.get(name, (0.0, 0.0))
        timings[name] = (w + time.perf_counter() - w0, c + time.process_time() - c0)


def make_pictures(result, timings: dict | None = None,
                  second_process: bool | None = None) -> tuple[dict[str, bytes], list[str]]:
    """Every picture as PNG bytes by file name, and notes about pictures that could not be made.

    The surface is rendered once for the three 3D pictures, the zone borders
    are cut once for all pictures, and each figure is drawn once. The 3D
    views need OpenGL and the slices the CT (``result.volume``); when either
    is missing the other pictures are still made and the reason is noted.

    Where it is safe (see :func:`.second_process.fork_is_safe`), the unrolled
    maps, the chart and the slices are drawn in a forked second process on
    another core while this one renders the 3D views; the pictures are the
    same bytes either way.

    Args:
        result: an :class:`~ImplantBoneContactLib.analysis.AnalysisResult`.
        timings: when given, filled with ``(wall_s, cpu_s)`` seconds per step (the shared
            steps, then each picture by file name), for benchmarks. With a second process
            its steps are its own seconds, and ``"second process"`` holds the parent's wait
            for it (wall) and the child's whole CPU seconds, which the parent's own CPU
            clock does not count.
        second_process: ``True``/``False`` to force or forbid the second process
            (``True`` still needs ``fork``); ``None`` (default): automatic.
    """
    # The analysis's objects (about 170 000 at 30 000 points) are set aside from the garbage collector while
    # drawing: its full sweeps then skip them, and a forked child does not copy the pages they sit on.
    gc.freeze()
    try:
        return _make_pictures(result, timings, second_process)
    finally:
        gc.unfreeze()


def _make_pictures(result, timings: dict | None, second_process: bool | None) -> tuple[dict[str, bytes], list[str]]:
    pictures: dict[str, bytes] = {}
    notes: list[str] = []
    with _timed(timings, "zone borders"):
        borders = zone_borders(result.surface, result.frame, result.parameters.bands_axial)
    child = None
    use_fork = fork_is_safe() if second_process is None else (bool(second_process) and hasattr(os, "fork"))
    if use_fork:
        child = SecondProcess(lambda: _flat_pictures(result, borders))
    try:
        _surface_pictures(result, borders, pictures, notes, timings)
        flat = None
        if child is not None:
            w0 = time.perf_counter()
            flat = child.result()
            if timings is not None:
                timings["second process"] = (time.perf_counter() - w0, child.cpu_s)
            child = None
        if flat is None:
            flat = _flat_pictures(result, borders)
    finally:
        if child is not None:  # interrupted while the child draws
            child.stop()
    flat_pictures, flat_notes, flat_timings = flat
    pictures.update(flat_pictures)
    notes.extend(flat_notes)
    if timings is not None:
        for name, (w, c) in flat_timings.items():
            w0, c0 = timings.get(name, (0.0, 0.0))
            timings[name] = (w0 + w, c0 + c)
    order = {name: i for i, name in enumerate(PICTURE_FILES)}
    return dict(sorted(pictures.items(), key=lambda kv: order.get(kv[0], len(order)))), notes


def _surface_pictures(result, borders, pictures: dict, notes: list, timings: dict | None) -> None:
    """The three 3D pictures (one offscreen rendering), into ``pictures``."""
    try:
        with _timed(timings, "3D rendering"):
            geometry = render_geometry(result)
    except Exception as exc:  # noqa: BLE001 - OpenGL can fail in many ways; the rest must still be written
        geometry = None
        notes.append(f"the 3D views could not be rendered (offscreen OpenGL failed: {exc}); the other pictures are complete")
    if geometry is not None:
        for colouring, name in (("hu", "heatmap_hu.png"), ("zone", "zones.png"), ("class", "contact_classes.png")):
            with _timed(timings, name):
                views = colour_views(result, geometry, colouring)
                pictures[name] = figure_png(surface_views_figure(result, colouring, views, borders))


def _flat_pictures(result, borders) -> tuple[dict[str, bytes], list[str], dict]:
    """The unrolled maps, the chart and the slices: (PNG bytes by name, notes, timings)."""
    pictures: dict[str, bytes] = {}
    notes: list[str] = []
    timings: dict = {}
    with _timed(timings, "unrolled map"):
        umap = unrolled_map(result, borders=borders)
    for kind, name in (("hu", "unrolled_hu.png"), ("class", "unrolled_classes.png")):
        with _timed(timings, name):
            pictures[name] = figure_png(unrolled_figure(result, kind, umap))
    with _timed(timings, "zone_fractions.png"):
        pictures["zone_fractions.png"] = figure_png(zone_fractions_figure(result))
    volume = getattr(result, "volume", None)
    if volume is not None:
        with _timed(timings, "slices.png"):
            pictures["slices.png"] = figure_png(slices_figure(result, volume))
    else:
        notes.append("slices.png was not made: the result holds no CT (it was read back from files)")
    return pictures, notes, timings


def write_pictures(result, folder: str | os.PathLike, timings: dict | None = None,
                   second_process: bool | None = None) -> list[str]:
    """Write every picture and ``report.html`` into ``folder``; return the file names written.

    Args:
        result: an :class:`~ImplantBoneContactLib.analysis.AnalysisResult`.
        folder: an existing folder (each file is written to a temporary name, then renamed).
        timings: as in :func:`make_pictures`, plus ``"report and files"``.
        second_process: as in :func:`make_pictures`.
    """
    folder = Path(folder)
    pictures, notes = make_pictures(result, timings, second_process)
    # A picture that could not be made is said where the user looks: the warnings (console, parameters.json).
    if isinstance(getattr(result, "warnings", None), list):
        result.warnings.extend(f"pictures: {note}" for note in notes if f"pictures: {note}" not in result.warnings)
    written = []
    with _timed(timings, "report and files"):
        _write_files(result, folder, pictures, notes, written)
    return written


def _write_files(result, folder: Path, pictures: dict, notes: list, written: list) -> None:
    for name in PICTURE_FILES:
        if name in pictures:
            write_bytes_atomic(folder / name, pictures[name])
            written.append(name)
    write_bytes_atomic(folder / REPORT_FILE, report_html(result, pictures, notes).encode("utf-8"))
    written.append(REPORT_FILE)
