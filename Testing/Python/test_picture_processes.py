"""Pictures drawn in a second process, and images put on a figure pixel for pixel without matplotlib's resampling.

Known answers: an image with a planted pattern must come back at the pixels
it was put on, the right way up, and the pictures made with a second
process must be the very bytes made in one process (also when the second
process fails and the parent draws instead).
"""

from __future__ import annotations

import io
import os
import threading
import time

import numpy as np
import pytest
from ImplantBoneContactLib import plots
from ImplantBoneContactLib.plots import pixels, second_process
from ImplantBoneContactLib.plots.second_process import SecondProcess, fork_is_safe

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no fork: the pictures are drawn in one process")


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------- images placed pixel for pixel


def _pattern(h: int = 7, w: int = 5) -> np.ndarray:
    """Every pixel a different colour: a flip, a shift or a transpose would show."""
    r, c = np.mgrid[0:h, 0:w]
    return np.stack([10 + 30 * r, 20 + 40 * c, 200 - 5 * (r * w + c)], axis=-1).astype(np.uint8)


def test_an_image_comes_back_at_its_pixels_the_right_way_up():
    fig = pixels.figure_px(40, 30, 100)
    img = _pattern()
    pixels.image(fig, img, 11, 6)  # top left corner at column 11, row 6 (rows from the top)
    png = _png(plots.figure_png(fig))
    assert png.shape == (30, 40, 3)
    assert np.array_equal(png[6:13, 11:16], img)
    outside = np.ones(png.shape[:2], dtype=bool)
    outside[6:13, 11:16] = False
    assert np.all(png[outside] == 255)  # nothing drawn anywhere else


def test_an_image_is_drawn_exactly_as_figimage_draws_it():
    """Parity with matplotlib's own one-to-one image (uint8 and float input, two positions, grey)."""
    rng = np.random.default_rng(3)
    images = [_pattern(9, 6), rng.random((5, 8, 3)), rng.integers(0, 256, (4, 4), dtype=np.uint8)]
    ours, theirs = pixels.figure_px(50, 40, 100), pixels.figure_px(50, 40, 100)
    for k, img in enumerate(images):
        x, y = 3 + 14 * k, 2 + 9 * k
        pixels.add_image(ours, img, x, y)
        grey = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        theirs.figimage(grey, xo=x, yo=y, origin="upper", resample=False)
    assert np.array_equal(_png(plots.figure_png(ours)), _png(plots.figure_png(theirs)))


def test_float_images_are_converted_as_matplotlib_converts_them():
    """255 x truncated after clipping to 0..1 (matplotlib's ``to_rgba(bytes=True)``)."""
    out = pixels.as_rgba8(np.array([[[0.0, 0.5, 1.0], [-0.2, 1.3, 0.25]]]))
    assert out.tolist() == [[[0, 127, 255, 255], [0, 255, 63, 255]]]


def test_lines_drawn_later_stay_above_an_image():
    fig = pixels.figure_px(20, 20, 100)
    pixels.image(fig, np.zeros((20, 20, 3), dtype=np.uint8), 0, 0)
    pixels.polyline(fig, [0, 20], [10, 10], color="white", lw=3, solid_capstyle="butt")
    png = _png(plots.figure_png(fig))
    assert np.all(png[10, 2:18] == 255) and np.all(png[2, 2:18] == 0)


# --------------------------------------------------------------------------- the second process


@needs_fork
def test_second_process_returns_what_its_work_returns_and_counts_its_cpu():
    def work():
        t = time.process_time()
        while time.process_time() - t < 0.2:  # 0.2 CPU seconds that only the child spends
            pass
        return {"pid": os.getpid(), "data": b"x" * 3_000_000}  # more than a pipe holds at once

    child = SecondProcess(work)
    value = child.result()
    assert value["pid"] != os.getpid() and value["data"] == b"x" * 3_000_000
    assert child.cpu_s >= 0.15 and child.error is None


@needs_fork
def test_a_failing_second_process_returns_none_with_its_traceback():
    def work():
        raise ValueError("planted failure")

    child = SecondProcess(work)
    assert child.result() is None
    assert "ValueError: planted failure" in child.error


@needs_fork
def test_stopping_a_second_process_ends_and_reaps_it():
    child = SecondProcess(lambda: time.sleep(60))
    pid = child._pid
    t = time.perf_counter()
    child.stop()
    assert time.perf_counter() - t < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left


def test_fork_is_used_only_where_it_is_safe(monkeypatch):
    monkeypatch.setenv(second_process.ENV_SWITCH, "0")
    assert not fork_is_safe()
    monkeypatch.delenv(second_process.ENV_SWITCH)
    monkeypatch.setattr(second_process, "_usable_cores", lambda: 1)
    assert not fork_is_safe()
    monkeypatch.setattr(second_process, "_usable_cores", lambda: 2)
    monkeypatch.setattr(second_process.sys, "platform", "darwin")
    assert not fork_is_safe()
    monkeypatch.setattr(second_process.sys, "platform", "linux")
    monkeypatch.setattr(second_process, "_load_average", lambda: 1.5)  # both cores busy
    assert not fork_is_safe()
    monkeypatch.setenv(second_process.ENV_SWITCH, "1")
    assert fork_is_safe() == hasattr(os, "fork")  # forced on whatever the load
    monkeypatch.delenv(second_process.ENV_SWITCH)
    monkeypatch.setattr(second_process, "_load_average", lambda: 1.3)  # this process alone, and a little more
    if hasattr(os, "fork"):
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        try:
            assert not fork_is_safe()  # another thread running: a forked child could inherit a held lock
        finally:
            stop.set()
            worker.join()
        # Linux, two cores, one free, one thread, not in Slicer: earlier tests of the same session may have
        # imported slicer-core's `slicer` module or left a thread running, which this check is not about
        monkeypatch.delitem(second_process.sys.modules, "slicer", raising=False)
        monkeypatch.setattr(second_process.threading, "active_count", lambda: 1)
        assert fork_is_safe()
        monkeypatch.setitem(second_process.sys.modules, "slicer", object())
        assert not fork_is_safe()


@needs_fork
def test_pictures_are_the_same_bytes_with_and_without_the_second_process(phantom_result):
    one, notes_one = plots.make_pictures(phantom_result, second_process=False)
    timings: dict = {}
    two, notes_two = plots.make_pictures(phantom_result, timings=timings, second_process=True)
    assert list(one) == list(two) and notes_one == notes_two
    assert set(two) >= {"heatmap_hu.png", "unrolled_hu.png", "slices.png"}
    for name in one:
        assert one[name] == two[name], name
    assert timings["second process"][1] > 0  # the child's CPU seconds are counted


@needs_fork
def test_pictures_are_complete_when_the_second_process_fails(phantom_result, monkeypatch):
    parent = os.getpid()
    draw = plots._flat_pictures

    def fails_in_the_child(result, borders):
        if os.getpid() != parent:
            raise RuntimeError("planted failure in the second process")
        return draw(result, borders)

    monkeypatch.setattr(plots, "_flat_pictures", fails_in_the_child)
    reference, _ = plots.make_pictures(phantom_result, second_process=False)
    pictures, _ = plots.make_pictures(phantom_result, second_process=True)
    assert pictures == reference


# --------------------------------------------------------------------------- the PNG writer


def _read_png_with_libpng(data: bytes, tmp_path) -> np.ndarray:
    """Pixels of PNG bytes read by VTK's reader (libpng), first row at the top."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGReader

    path = tmp_path / "picture.png"
    path.write_bytes(data)
    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars())
    return pixels.reshape(h, w, -1)[::-1]  # VTK's first row is the bottom one


def test_png_writer_round_trips_every_pixel_through_libpng(tmp_path):
    from ImplantBoneContactLib.plots.png import png_rgb

    rng = np.random.default_rng(7)
    for shape in ((1, 1, 3), (3, 5, 3), (64, 33, 3)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        data = png_rgb(img)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(_read_png_with_libpng(data, tmp_path), img)
    with pytest.raises(ValueError):
        png_rgb(np.zeros((2, 2, 4), dtype=np.uint8))


def test_png_writer_writes_opaque_truecolour():
    """IHDR of a 2 x 1 image: width 2, height 1, 8 bits, colour type 2 (RGB, no alpha)."""
    import struct

    from ImplantBoneContactLib.plots.png import png_rgb

    data = png_rgb(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8))
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    assert struct.unpack(">IIBB", data[16:26]) == (2, 1, 8, 2)


def test_opaque_rgb_lays_transparent_pixels_on_white():
    from ImplantBoneContactLib.plots.png import opaque_rgb

    rgba = np.array([[[0, 0, 0, 255], [0, 0, 0, 0], [0, 0, 0, 51], [200, 100, 0, 255]]], dtype=np.uint8)
    assert opaque_rgb(rgba).tolist() == [[[0, 0, 0], [255, 255, 255], [204, 204, 204], [200, 100, 0]]]


def test_figure_png_gives_the_pixels_savefig_gives(phantom_result):
    """The figure written by our writer against matplotlib's own ``savefig`` of the same figure."""
    fig = plots.zone_fractions_figure(phantom_result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    assert np.array_equal(_png(plots.figure_png(fig)), _png(buf.getvalue()))


@needs_fork
def test_an_interrupt_while_waiting_ends_the_second_process_at_once(monkeypatch):
    child = SecondProcess(lambda: time.sleep(60))
    pid = child._pid

    def interrupted(fd, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(second_process.os, "read", interrupted)
    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        child.result()
    assert time.perf_counter() - t < 5  # not the child's 60 s
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
