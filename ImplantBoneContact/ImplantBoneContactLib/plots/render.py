"""Offscreen VTK rendering of the stem: which vertex, what light and what depth at every pixel.

One offscreen render window is made per process and reused by every picture;
all views are rendered at once (one viewport each), in one pass with every
triangle flat-coloured by its index. The depth buffer of that pass gives each
pixel's RAS position; the vertex seen at a pixel is the corner of its
triangle with the largest barycentric weight there (the triangle's split
along the lines from the edge midpoints to the centroid, so each vertex owns
exactly its third of every adjacent triangle, the area it carries in the
statistics), and the lighting is computed from the normals interpolated at
that position. Both are computed only where a picture needs them: once per
output pixel for the pictures, at every supersampled pixel only when
:attr:`ViewGeometry.vertex_id` or :attr:`ViewGeometry.shade` is read.
"""

from __future__ import annotations

import os
import sys

import numpy as np

# The rendering classes only (not all of VTK); the OpenGL2 module registers the classes that draw.
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
from vtkmodules.util import numpy_support as ns
from vtkmodules.vtkCommonCore import vtkVersion
from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter

from ..errors import OutputError
from ..mesh import points as mesh_points
from ..mesh import polydata_from_arrays
from ..mesh import triangles as mesh_triangles

#: The four views of the surface pictures, in drawing order.
VIEWS = ("anterior", "posterior", "medial", "lateral")

_WINDOW: list = []  # the one offscreen window of the process, made on first use


class ViewGeometry:
    """What a view needs besides colours: visible triangle, vertex, light and RAS position at each (supersampled) pixel.

    Attributes:
        name: the view (see :data:`VIEWS`).
        triangle: supersampled ``(H*s, W*s)`` index of the triangle seen at each pixel, -1 on the background.
        depth_mm: supersampled distance (mm) from the camera plane to the surface seen at each pixel, inf on the background.
        camera: RAS point (mm) of the camera plane at the picture centre.
        right, up, toward_viewer: RAS unit vectors of the picture (see :class:`~.views3d.SurfaceView`).
        mm_per_pixel: scale at output resolution (mm per pixel).
        centre: RAS point at the picture centre (mm).
        supersample: the factor s.
        light: RAS unit vector toward the light (above and to the left of the camera).
        vertex_id: supersampled vertex index per pixel, -1 on the background (computed when first read).
        shade: supersampled lighting factor 0..1 (ambient plus diffuse of a white surface; computed when first read).
    """

    #: Ambient and diffuse shares of the lighting.
    AMBIENT = 0.32
    DIFFUSE = 0.68

    def __init__(self, name: str, triangle: np.ndarray, depth_mm: np.ndarray, camera: np.ndarray, right: np.ndarray,
                 up: np.ndarray, toward_viewer: np.ndarray, mm_per_pixel: float, centre: np.ndarray, supersample: int,
                 light: np.ndarray, mesh: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.name = name
        self.triangle = triangle
        self.depth_mm = depth_mm
        self.camera = camera
        self.right = right
        self.up = up
        self.toward_viewer = toward_viewer
        self.mm_per_pixel = mm_per_pixel
        self.centre = centre
        self.supersample = supersample
        self.light = light
        self._mesh = mesh  # points (N, 3), triangles (T, 3), vertex normals (N, 3)
        self._full: dict | None = None
        self._pixels: dict | None = None

    def _owner_and_shade(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Owner vertex and lighting at supersampled foreground pixels ``(rows, cols)``."""
        pts, faces, normals = self._mesh
        t = self.triangle[rows, cols]
        corners = faces[t]
        weights = _barycentric(pts, corners, self.positions(rows, cols))
        owner = corners[np.arange(t.size), np.argmax(weights, axis=1)]
        n = np.einsum("ij,ijk->ik", weights, normals[corners])
        n /= np.maximum(np.linalg.norm(n, axis=1), 1e-12)[:, None]
        # Two-sided lighting: a normal pointing away from the viewer is turned toward it.
        n *= np.where(n @ self.toward_viewer < 0, -1.0, 1.0)[:, None]
        shade = self.AMBIENT + self.DIFFUSE * np.clip(n @ self.light, 0.0, 1.0)
        return owner, shade

    def _full_resolution(self) -> dict:
        if self._full is None:
            vid = np.full(self.triangle.shape, -1, dtype=np.int64)
            shade = np.zeros(self.triangle.shape)
            rows, cols = np.nonzero(self.triangle >= 0)
            if rows.size:
                vid[rows, cols], shade[rows, cols] = self._owner_and_shade(rows, cols)
            self._full = {"vertex_id": vid, "shade": shade}
        return self._full

    @property
    def vertex_id(self) -> np.ndarray:
        """Supersampled ``(H*s, W*s)`` vertex index per pixel, -1 on the background."""
        return self._full_resolution()["vertex_id"]

    @property
    def shade(self) -> np.ndarray:
        """Supersampled lighting factor 0..1 per pixel, 0 on the background."""
        return self._full_resolution()["shade"]

    def positions(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """RAS points (mm) seen at supersampled pixels ``(rows, cols)``; NaN on the background."""
        mm = self.mm_per_pixel / self.supersample
        hs, ws = self.triangle.shape
        x = (np.asarray(cols) + 0.5 - ws / 2.0) * mm
        y = (hs / 2.0 - np.asarray(rows) - 0.5) * mm
        d = self.depth_mm[rows, cols]
        d = np.where(np.isfinite(d), d, np.nan)
        return (self.camera - d[..., None] * self.toward_viewer + x[..., None] * self.right + y[..., None] * self.up)

    @property
    def position(self) -> np.ndarray:
        """Supersampled ``(H*s, W*s, 3)`` RAS point (mm) seen at each pixel, NaN on the background."""
        hs, ws = self.triangle.shape
        rows, cols = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        return self.positions(rows, cols)

    def output_pixels(self, result) -> dict:
        """Per output pixel, computed once per rendering and kept (every colouring uses it).

        ``vertex_id``: the vertex seen at one foreground sub-pixel (the first in
        row order), -1 where none; ``coverage``: the share of the pixel's
        sub-pixels on the stem (anti-aliased silhouette); ``shade``: the
        lighting at that sub-pixel; ``zone``: the Gruen zone (sector scheme, 0
        above the cut) of that sub-pixel's RAS position, -1 on the background.
        """
        if self._pixels is not None:
            return self._pixels
        from ..frame import assign_zones

        s = self.supersample
        hs, ws = self.triangle.shape
        h, w = hs // s, ws // s
        tri = self.triangle[: h * s, : w * s].reshape(h, s, w, s).transpose(0, 2, 1, 3).reshape(h, w, s * s)
        fg = tri >= 0
        n_fg = fg.sum(axis=-1)
        first = np.argmax(fg, axis=-1)
        on = n_fg > 0
        r_out, c_out = np.nonzero(on)
        sub = first[on]
        rows, cols = r_out * s + sub // s, c_out * s + sub % s
        pick = np.full((h, w), -1, dtype=np.int64)
        shade = np.zeros((h, w))
        zone = np.full((h, w), -1, dtype=np.int16)
        if on.any():
            pick[on], shade[on] = self._owner_and_shade(rows, cols)
            zone[on] = assign_zones(result.frame, self.positions(rows, cols), result.parameters.bands_axial)["gruen_zone"]
        self._pixels = {"vertex_id": pick, "coverage": n_fg / float(s * s), "shade": shade, "zone": zone}
        return self._pixels

    def project(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(column, row)`` at output resolution (row 0 at the top) of RAS points (mm)."""
        d = np.asarray(pts, dtype=float) - self.centre
        h, w = self.triangle.shape[0] // self.supersample, self.triangle.shape[1] // self.supersample
        col = (w / 2.0) + (d @ self.right) / self.mm_per_pixel - 0.5
        row = (h / 2.0) - (d @ self.up) / self.mm_per_pixel - 0.5
        return np.stack([col, row], axis=-1)

    def visible(self, pts: np.ndarray, tolerance_mm: float = 0.8) -> np.ndarray:
        """True for RAS points not hidden behind the surface (within ``tolerance_mm`` of the nearest surface seen)."""
        pts = np.asarray(pts, dtype=float)
        s = self.supersample
        h, w = self.triangle.shape
        d = pts - self.centre
        col = np.floor(w / 2.0 + (d @ self.right) / (self.mm_per_pixel / s)).astype(np.int64)
        row = np.floor(h / 2.0 - (d @ self.up) / (self.mm_per_pixel / s)).astype(np.int64)
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        out = np.zeros(pts.shape[0], dtype=bool)
        # The nearest surface around the point (3 x 3 supersampled pixels): lines on a silhouette stay.
        nearest = np.full(pts.shape[0], np.inf)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r = np.clip(row + dr, 0, h - 1)
                c = np.clip(col + dc, 0, w - 1)
                nearest = np.fmin(nearest, self.depth_mm[r, c])
        mine = (self.camera - pts) @ self.toward_viewer  # distance of each point from the camera plane
        out[ok] = mine[ok] <= nearest[ok] + tolerance_mm
        return out


def _headless_linux() -> bool:
    return sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")


def rendering_unavailable_reason() -> str | None:
    """Why this VTK cannot render offscreen here, or ``None`` when it can.

    On Linux without a display VTK renders through EGL; a VTK build without
    it (the PyPI wheels before 9.4) would open an X window and abort the
    whole process, so the pictures are refused first, with advice.
    """
    if not _headless_linux():
        return None
    try:
        from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow  # noqa: F401
    except ImportError:
        return (f"this VTK ({vtkVersion.GetVTKVersion()}) cannot draw the 3D pictures on a machine without a "
                "display (no EGL offscreen rendering): use --no-pictures, run under a display (e.g. xvfb-run), or "
                "install vtk 9.4 or newer")
    return None


def offscreen_window() -> vtkRenderWindow:
    """The process's offscreen render window (made once); EGL on a Linux machine without a display.

    Raises:
        OutputError: this VTK cannot render here (see :func:`rendering_unavailable_reason`).
    """
    if _WINDOW:
        return _WINDOW[0]
    reason = rendering_unavailable_reason()
    if reason is not None:
        raise OutputError(reason)
    window = None
    if _headless_linux():
        from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

        window = vtkEGLRenderWindow()
    if window is None:
        window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    # Exact colours are needed for the vertex-id pass: no multisampling.
    window.SetMultiSamples(0)
    _WINDOW.append(window)
    return window


def _view_direction(frame, name: str) -> np.ndarray:
    """Unit vector from the stem toward the camera of a view."""
    d = {"anterior": frame.anterior, "posterior": -frame.anterior, "medial": frame.medial, "lateral": -frame.medial}
    if name not in d:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {name!r}")
    v = np.asarray(d[name], dtype=float)
    return v / np.linalg.norm(v)


def _grab(window: vtkRenderWindow, zbuffer: bool = False) -> np.ndarray:
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    if zbuffer:
        grab.SetInputBufferTypeToZBuffer()
    else:
        grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.ShouldRerenderOff()
    grab.Update()
    img = grab.GetOutput()
    w, h, _ = img.GetDimensions()
    arr = ns.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return arr[::-1].copy()  # VTK rows start at the bottom


def _id_actor(pts: np.ndarray, faces: np.ndarray) -> vtkActor:
    """The surface with every triangle flat-coloured by its index plus one (24-bit RGB), unlit."""
    id_poly = polydata_from_arrays(pts, faces)
    code = np.arange(1, faces.shape[0] + 1, dtype=np.int64)
    rgb_code = np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], axis=1).astype(np.uint8)
    arr = ns.numpy_to_vtk(rgb_code, deep=True)
    arr.SetName("triangle_code")
    id_poly.GetCellData().SetScalars(arr)
    id_mapper = vtkPolyDataMapper()
    id_mapper.SetInputData(id_poly)
    id_mapper.SetScalarModeToUseCellData()
    id_mapper.SetColorModeToDirectScalars()
    id_mapper.ScalarVisibilityOn()
    id_actor = vtkActor()
    id_actor.SetMapper(id_mapper)
    id_actor.GetProperty().LightingOff()
    return id_actor


def _barycentric(pts: np.ndarray, corners: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentric weights ``(M, 3)`` of points ``p`` (M, 3) in the triangles ``corners`` (M, 3) of ``pts``."""
    a = pts[corners[:, 0]]
    v0 = pts[corners[:, 1]] - a
    v1 = pts[corners[:, 2]] - a
    v2 = p - a
    d00 = np.einsum("ij,ij->i", v0, v0)
    d01 = np.einsum("ij,ij->i", v0, v1)
    d11 = np.einsum("ij,ij->i", v1, v1)
    d20 = np.einsum("ij,ij->i", v2, v0)
    d21 = np.einsum("ij,ij->i", v2, v1)
    denom = d00 * d11 - d01 * d01
    denom = np.where(np.abs(denom) > 0, denom, 1.0)
    lb = (d11 * d20 - d01 * d21) / denom
    lc = (d00 * d21 - d01 * d20) / denom
    return np.stack([1.0 - lb - lc, lb, lc], axis=1)


def render_geometry(
    result,
    views: tuple[str, ...] = VIEWS,
    panel_px: tuple[int, int] = (290, 620),
    supersample: int = 2,
) -> list[ViewGeometry]:
    """Render the stem offscreen from each view: visible vertex, lighting and RAS position per pixel.

    All views share one parallel-projection scale, fitted so the whole model
    (neck and head too) fits the widest view; proximal (minus the stem axis)
    is up. All views are rendered at once, one viewport each, in the
    process's one offscreen window.

    Args:
        result: an analysis result.
        views: names from :data:`VIEWS`.
        panel_px: width, height of each output picture (pixels).
        supersample: rendering is this many times finer, then averaged (anti-aliasing).
    """
    frame = result.frame
    pts = mesh_points(result.surface)
    faces = mesh_triangles(result.surface)
    normals = result.vertices[["nx", "ny", "nz"]].to_numpy(dtype=float)
    up = -np.asarray(frame.axis, dtype=float)
    up /= np.linalg.norm(up)
    w_px, h_px = int(panel_px[0]), int(panel_px[1])
    aspect = w_px / h_px
    dirs = [_view_direction(frame, v) for v in views]
    rights = [np.cross(-t, up) for t in dirs]
    rights = [r / np.linalg.norm(r) for r in rights]
    half = 0.0
    centres = []
    mean = pts.mean(0)
    for r in rights:
        u = pts @ r
        v = pts @ up
        half = max(half, 0.5 * (v.max() - v.min()), 0.5 * (u.max() - u.min()) / aspect)
        c = mean + (0.5 * (u.max() + u.min()) - mean @ r) * r + (0.5 * (v.max() + v.min()) - mean @ up) * up
        centres.append(c)
    half *= 1.06
    mm_per_px = 2.0 * half / h_px
    extent = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    id_actor = _id_actor(pts, faces)

    n = len(views)
    ss = max(1, int(supersample))
    ws, hs = w_px * ss, h_px * ss
    window = offscreen_window()
    window.SetSize(n * ws, hs)
    renderers = []
    for i, (t, c) in enumerate(zip(dirs, centres)):
        ren = vtkRenderer()
        ren.SetViewport(i / n, 0.0, (i + 1) / n, 1.0)
        ren.SetBackground(0.0, 0.0, 0.0)
        ren.SetAutomaticLightCreation(False)
        cam = ren.GetActiveCamera()
        cam.ParallelProjectionOn()
        cam.SetFocalPoint(*c)
        cam.SetPosition(*(c + t * 3.0 * extent))
        cam.SetViewUp(*up)
        cam.SetParallelScale(half)
        window.AddRenderer(ren)
        renderers.append(ren)
    try:
        for ren in renderers:
            ren.AddActor(id_actor)
            ren.ResetCameraClippingRange()
        window.Render()
        code = _grab(window).astype(np.int32)
        ids_all = (code[..., 0] << 16) + (code[..., 1] << 8) + code[..., 2] - 1
        ids_all[(ids_all < 0) | (ids_all >= faces.shape[0])] = -1
        depth_all = _grab(window, zbuffer=True)[..., 0].astype(float)
        ranges = [ren.GetActiveCamera().GetClippingRange() for ren in renderers]
    finally:
        for ren in renderers:
            ren.RemoveAllViewProps()
            window.RemoveRenderer(ren)
    out = []
    mesh = (pts, faces, normals)
    for i, (name, t, r, c) in enumerate(zip(views, dirs, rights, centres)):
        sl = slice(i * ws, (i + 1) * ws)
        ids = ids_all[:, sl]
        near, far = ranges[i]
        # Parallel projection: the depth buffer is linear in the distance from the camera plane.
        dist = near + depth_all[:, sl] * (far - near)
        dist[ids < 0] = np.inf
        # A light above and to the left of the camera: a softer, more legible relief than a headlight.
        light = -0.45 * r + 0.55 * up + 1.0 * t
        light /= np.linalg.norm(light)
        out.append(ViewGeometry(name, ids, dist, c + t * 3.0 * extent, r, up.copy(), t, mm_per_px, c, ss, light, mesh))
    return out
