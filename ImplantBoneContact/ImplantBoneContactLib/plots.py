"""Pictures and the HTML report of an analysis.

Every picture is drawn from an :class:`~ImplantBoneContactLib.analysis.AnalysisResult`
alone, with matplotlib's Agg canvas on a :class:`matplotlib.figure.Figure`
(never ``pyplot``, so no global backend or figure state is touched) and VTK
offscreen rendering (EGL when there is no display), so they work in a
terminal, in a batch job and inside Slicer.

Pictures (``write_pictures`` writes them all):

``heatmap_hu.png``
    The stem seen from anterior, posterior, medial and lateral (parallel
    projection, proximal up, the same scale in every view), coloured by HU
    with the fixed range :data:`HU_RANGE` and colormap :data:`HU_COLORMAP`,
    so pictures of two cases compare directly.
``zones.png``
    The same views coloured by Gruen zone (:data:`ZONE_COLOURS`), zone
    numbers written on the zones.
``contact_classes.png``
    The same views coloured by contact class (:func:`class_colours`).
``unrolled_hu.png``, ``unrolled_classes.png``
    The surface unrolled around the stem axis: azimuth (0 medial, 90
    anterior, 180 lateral, 270 posterior, 360 medial) against height above
    the tip, with the Gruen zone grid and numbers.
``zone_fractions.png``
    Stacked bars of the contact-class area fractions per zone, 1-7 then 8-14.
``report.html``
    One self-contained page: inputs and their SHA-256, frame, parameters,
    warnings, the zone table and every picture (embedded).

In every picture, surface above the resection plane (zone 0, not analysed)
is :data:`ABOVE_CUT_COLOUR` and surface outside the CT (no HU) is
:data:`NOT_SAMPLED_COLOUR`. Each vertex owns the part of the surface closest
to it (its third of every adjacent triangle, split along the lines from the
edge midpoints to the triangle centroid), which is exactly the area it
carries in the statistics, so the colours show what the numbers count.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import vtk
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke
from vtk.util import numpy_support as ns

from .classes import METAL, NOT_SAMPLED, UNCLASSIFIED, UNRELIABLE, parse_classes
from .export import atomic_file
from .frame import ZONE_ORDER
from .mesh import points as mesh_points
from .mesh import triangles as mesh_triangles

#: Fixed HU colour range of every HU picture (low, high), HU. Values outside
#: are drawn in the end colours. -200 HU keeps fat and soft tissue (about
#: -100..60 HU) apart from air; 2000 HU is above adult cortical bone
#: (about 1000-1900 HU) and below implant metal, so bone is never clipped.
HU_RANGE: tuple[float, float] = (-200.0, 2000.0)
#: Colormap of the HU pictures: perceptually uniform and readable in grey and
#: with colour-vision deficiency (matplotlib's ``viridis``).
HU_COLORMAP = "viridis"
#: Surface above the resection plane (Gruen zone 0, not analysed).
ABOVE_CUT_COLOUR = "#d2d2d2"
#: Surface outside the CT (HU not sampled, NaN).
NOT_SAMPLED_COLOUR = "#7c7c7c"
#: A sample in no contact-class band (only with custom bands that leave gaps).
UNCLASSIFIED_COLOUR = "#f781bf"
#: Samples at or above the metal level.
METAL_COLOUR = "#6a3d9a"
#: Post-operative CT: bone not told from the metal's bloom (green: no band, metal or grey uses it).
UNRELIABLE_COLOUR = "#1b9e77"
#: Gruen zone colours. Zones that touch (same band in neighbouring sectors,
#: or neighbouring bands) never share a hue; 8-14 use the light tones of
#: hues of 1-7 that are never next to them.
ZONE_COLOURS: dict[int, str] = {
    1: "#1f77b4",
    2: "#ff7f0e",
    3: "#2ca02c",
    4: "#d62728",
    5: "#9467bd",
    6: "#8c564b",
    7: "#e377c2",
    8: "#98df8a",
    9: "#ff9896",
    10: "#aec7e8",
    11: "#ffbb78",
    12: "#f7b6d2",
    13: "#c5b0d5",
    14: "#dbdb8d",
}
#: Contact-class colours from low to high HU, by number of bands: red for no
#: bone, warm for sparse bone, blue for dense bone.
CLASS_PALETTES: dict[int, tuple[str, ...]] = {
    1: ("#2c5fa8",),
    2: ("#d7301f", "#2c5fa8"),
    3: ("#d7301f", "#f5a623", "#2c5fa8"),
    4: ("#d7301f", "#f5a623", "#86bde6", "#2c5fa8"),
    5: ("#7a1212", "#d7301f", "#f5a623", "#86bde6", "#2c5fa8"),
}
#: The four views of the surface pictures, in drawing order.
VIEWS = ("anterior", "posterior", "medial", "lateral")
#: Files written by :func:`write_pictures`, in the order of the report.
PICTURE_FILES = (
    "heatmap_hu.png",
    "zones.png",
    "contact_classes.png",
    "unrolled_hu.png",
    "unrolled_classes.png",
    "zone_fractions.png",
)
REPORT_FILE = "report.html"

_SHORT_REGION = {
    1: "lat prox", 2: "lat mid", 3: "lat dist", 4: "tip", 5: "med dist", 6: "med mid", 7: "calcar",
    8: "ant prox", 9: "ant mid", 10: "ant dist", 11: "tip", 12: "post dist", 13: "post mid", 14: "post prox",
}
_DPI = 100
_WHITE = np.ones(3)


# --------------------------------------------------------------------------- colours


def _rgb(colour: str) -> np.ndarray:
    return np.asarray(to_rgb(colour), dtype=float)


def hu_to_rgb(hu: np.ndarray) -> np.ndarray:
    """Colour of HU values on the fixed scale (:data:`HU_RANGE`, :data:`HU_COLORMAP`).

    Args:
        hu: HU values, any shape; NaN gives :data:`NOT_SAMPLED_COLOUR`.

    Returns:
        RGB in [0, 1], shape ``hu.shape + (3,)``.
    """
    hu = np.asarray(hu, dtype=float)
    cmap = colormaps[HU_COLORMAP]
    norm = Normalize(*HU_RANGE, clip=True)
    finite = np.isfinite(hu)
    out = np.empty(hu.shape + (3,))
    out[finite] = cmap(norm(hu[finite]))[..., :3]
    out[~finite] = _rgb(NOT_SAMPLED_COLOUR)
    return out


def class_colours(result) -> dict[str, str]:
    """Colour of each contact class of a result (hex), plus ``not_sampled`` and ``unclassified``.

    Bands get :data:`CLASS_PALETTES` colours from low to high HU (more than
    five bands: the ``RdYlBu`` colormap); ``metal`` is :data:`METAL_COLOUR`.
    """
    bands = parse_classes(result.parameters.classes)
    n = len(bands)
    if n in CLASS_PALETTES:
        palette = list(CLASS_PALETTES[n])
    else:
        cmap = colormaps["RdYlBu"]
        palette = [_hex(cmap(x)) for x in np.linspace(0.0, 1.0, n)]
    out = {b.name: c for b, c in zip(bands, palette)}
    out[METAL] = METAL_COLOUR
    out[NOT_SAMPLED] = NOT_SAMPLED_COLOUR
    out[UNCLASSIFIED] = UNCLASSIFIED_COLOUR
    out[UNRELIABLE] = UNRELIABLE_COLOUR
    return out


def vertex_colours(result, colouring: str) -> np.ndarray:
    """RGB colour (0..1) of every vertex for ``colouring`` ``"hu"``, ``"zone"`` or ``"class"``.

    Zone-0 vertices (above the resection plane) are :data:`ABOVE_CUT_COLOUR`
    in every colouring; vertices without HU are :data:`NOT_SAMPLED_COLOUR`
    in the HU and class colourings.
    """
    v = result.vertices
    zone = v["gruen_zone"].to_numpy()
    if colouring == "hu":
        rgb = hu_to_rgb(v["hu"].to_numpy(dtype=float))
    elif colouring == "zone":
        rgb = np.zeros((len(v), 3))
        for z, c in ZONE_COLOURS.items():
            rgb[zone == z] = _rgb(c)
    elif colouring == "class":
        colours = class_colours(result)
        cls = v["contact_class"].to_numpy()
        rgb = np.tile(_rgb(UNCLASSIFIED_COLOUR), (len(v), 1))
        for name, c in colours.items():
            rgb[cls == name] = _rgb(c)
    else:
        raise ValueError(f"colouring must be 'hu', 'zone' or 'class', got {colouring!r}")
    rgb[zone == 0] = _rgb(ABOVE_CUT_COLOUR)
    return rgb


def _hex(rgb) -> str:
    r, g, b = (int(round(255 * float(c))) for c in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


# --------------------------------------------------------------------------- 3D views


@dataclass
class SurfaceView:
    """One offscreen rendering of the stem.

    Attributes:
        name: ``"anterior"``, ``"posterior"``, ``"medial"`` or ``"lateral"``: the side the camera looks at.
        image: ``(H, W, 3)`` uint8 RGB, white background, shaded.
        vertex_id: ``(H, W)`` index (row of ``result.vertices``) of the vertex whose
            area patch is seen at each pixel; -1 on the background.
        right: RAS unit vector pointing to the right of the picture.
        up: RAS unit vector pointing up in the picture (proximal: minus the stem axis).
        toward_viewer: RAS unit vector from the stem toward the camera.
        mm_per_pixel: picture scale (mm per pixel, the same in every view).
        centre: RAS point (mm) at the centre of the picture.
    """

    name: str
    image: np.ndarray
    vertex_id: np.ndarray
    right: np.ndarray
    up: np.ndarray
    toward_viewer: np.ndarray
    mm_per_pixel: float
    centre: np.ndarray

    def project(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(column, row)`` (row 0 at the top) of RAS points (mm)."""
        d = np.asarray(pts, dtype=float) - self.centre
        h, w = self.vertex_id.shape
        col = (w / 2.0) + (d @ self.right) / self.mm_per_pixel - 0.5
        row = (h / 2.0) - (d @ self.up) / self.mm_per_pixel - 0.5
        return np.stack([col, row], axis=-1)


@dataclass
class ViewGeometry:
    """What a view needs besides colours: visible vertex and light at each (supersampled) pixel.

    Attributes:
        name: the view (see :data:`VIEWS`).
        vertex_id: supersampled ``(H*s, W*s)`` vertex index per pixel, -1 on the background.
        shade: supersampled lighting factor 0..1 (ambient plus diffuse of a white surface).
        right, up, toward_viewer: RAS unit vectors of the picture (see :class:`SurfaceView`).
        mm_per_pixel: scale at output resolution (mm per pixel).
        centre: RAS point at the picture centre (mm).
        supersample: the factor s.
    """

    name: str
    vertex_id: np.ndarray  # supersampled, -1 background
    shade: np.ndarray  # supersampled, 0..1
    right: np.ndarray
    up: np.ndarray
    toward_viewer: np.ndarray
    mm_per_pixel: float  # at output resolution
    centre: np.ndarray
    supersample: int


def _view_direction(frame, name: str) -> np.ndarray:
    """Unit vector from the stem toward the camera of a view."""
    d = {
        "anterior": frame.anterior,
        "posterior": -frame.anterior,
        "medial": frame.medial,
        "lateral": -frame.medial,
    }
    if name not in d:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {name!r}")
    v = np.asarray(d[name], dtype=float)
    return v / np.linalg.norm(v)


def _render_window() -> vtk.vtkRenderWindow:
    """An offscreen render window; EGL on a Linux machine without a display (no X error message)."""
    window = None
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        try:
            from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

            window = vtkEGLRenderWindow()
        except ImportError:
            window = None
    if window is None:
        window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    # Exact colours are needed for the vertex-id pass: no multisampling.
    window.SetMultiSamples(0)
    return window


def _patch_mesh(pts: np.ndarray, faces: np.ndarray, normals: np.ndarray):
    """Split each triangle into 6 so each vertex owns exactly its third of every adjacent triangle.

    Returns points, triangles, point normals and the owner vertex of each new triangle.
    """
    n = pts.shape[0]
    m = faces.shape[0]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    e_ab, e_bc, e_ca = inverse[:m] + n, inverse[m: 2 * m] + n, inverse[2 * m:] + n
    g = np.arange(m) + n + uniq.shape[0]
    mid = 0.5 * (pts[uniq[:, 0]] + pts[uniq[:, 1]])
    cen = pts[faces].mean(axis=1)
    new_pts = np.concatenate([pts, mid, cen])
    mid_n = normals[uniq[:, 0]] + normals[uniq[:, 1]]
    cen_n = normals[faces].sum(axis=1)
    new_n = np.concatenate([normals, mid_n, cen_n])
    length = np.linalg.norm(new_n, axis=1)
    new_n = new_n / np.where(length > 0, length, 1.0)[:, None]
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    tris = np.concatenate(
        [
            np.stack([a, e_ab, g], 1),
            np.stack([a, g, e_ca], 1),
            np.stack([b, e_bc, g], 1),
            np.stack([b, g, e_ab], 1),
            np.stack([c, e_ca, g], 1),
            np.stack([c, g, e_bc], 1),
        ]
    )
    owner = np.concatenate([a, a, b, b, c, c])
    return new_pts, tris, new_n, owner


def _polydata(pts: np.ndarray, tris: np.ndarray, normals: np.ndarray | None = None) -> vtk.vtkPolyData:
    from .mesh import polydata_from_arrays

    poly = polydata_from_arrays(pts, tris)
    if normals is not None:
        arr = ns.numpy_to_vtk(np.ascontiguousarray(normals, dtype=np.float32), deep=True)
        arr.SetName("Normals")
        poly.GetPointData().SetNormals(arr)
    return poly


def _grab(window: vtk.vtkRenderWindow) -> np.ndarray:
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.ShouldRerenderOff()
    grab.Update()
    img = grab.GetOutput()
    w, h, _ = img.GetDimensions()
    arr = ns.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return arr[::-1].copy()  # VTK rows start at the bottom


def render_geometry(
    result,
    views: tuple[str, ...] = VIEWS,
    panel_px: tuple[int, int] = (290, 620),
    supersample: int = 2,
) -> list[ViewGeometry]:
    """Render the stem offscreen from each view: visible vertex and lighting per pixel.

    All views share one parallel-projection scale, fitted so the whole model
    (neck and head too) fits the widest view; proximal (minus the stem axis)
    is up.

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
    for r in rights:
        u = pts @ r
        v = pts @ up
        half = max(half, 0.5 * (v.max() - v.min()), 0.5 * (u.max() - u.min()) / aspect)
        mean = pts.mean(0)
        c = mean + (0.5 * (u.max() + u.min()) - mean @ r) * r + (0.5 * (v.max() + v.min()) - mean @ up) * up
        centres.append(c)
    half *= 1.06
    mm_per_px = 2.0 * half / h_px
    extent = float(np.linalg.norm(pts.max(0) - pts.min(0)))

    # The pass that finds the vertex at each pixel: every patch flat-coloured with (vertex index + 1) as 24-bit RGB.
    ppts, ptris, pnormals, owner = _patch_mesh(pts, faces, normals)
    id_poly = _polydata(ppts, ptris)
    code = owner.astype(np.int64) + 1
    rgb_code = np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], axis=1).astype(np.uint8)
    arr = ns.numpy_to_vtk(rgb_code, deep=True)
    arr.SetName("vertex_code")
    id_poly.GetCellData().SetScalars(arr)
    id_mapper = vtk.vtkPolyDataMapper()
    id_mapper.SetInputData(id_poly)
    id_mapper.SetScalarModeToUseCellData()
    id_mapper.SetColorModeToDirectScalars()
    id_mapper.ScalarVisibilityOn()
    id_actor = vtk.vtkActor()
    id_actor.SetMapper(id_mapper)
    id_actor.GetProperty().LightingOff()

    shade_poly = _polydata(ppts, ptris, pnormals)
    shade_mapper = vtk.vtkPolyDataMapper()
    shade_mapper.SetInputData(shade_poly)
    shade_mapper.ScalarVisibilityOff()
    shade_actor = vtk.vtkActor()
    shade_actor.SetMapper(shade_mapper)
    prop = shade_actor.GetProperty()
    prop.SetColor(1.0, 1.0, 1.0)
    prop.SetAmbient(0.32)
    prop.SetDiffuse(0.68)
    prop.SetSpecular(0.0)
    prop.SetInterpolationToGouraud()

    window = _render_window()
    ss = max(1, int(supersample))
    window.SetSize(w_px * ss, h_px * ss)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.0, 0.0, 0.0)
    window.AddRenderer(renderer)
    renderer.RemoveAllLights()
    # A light above and to the left of the camera: a softer, more legible relief than a headlight.
    light = vtk.vtkLight()
    light.SetLightTypeToCameraLight()
    light.SetPosition(-0.45, 0.55, 1.0)
    light.SetFocalPoint(0.0, 0.0, 0.0)
    light.SetIntensity(1.0)
    renderer.AddLight(light)
    renderer.SetAutomaticLightCreation(False)
    out = []
    try:
        for name, t, r, c in zip(views, dirs, rights, centres):
            cam = renderer.GetActiveCamera()
            cam.ParallelProjectionOn()
            cam.SetFocalPoint(*c)
            cam.SetPosition(*(c + t * 3.0 * extent))
            cam.SetViewUp(*up)
            cam.SetParallelScale(half)
            renderer.RemoveAllViewProps()
            renderer.AddActor(id_actor)
            renderer.ResetCameraClippingRange()
            window.Render()
            rgb = _grab(window).astype(np.int64)
            ids = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2] - 1
            ids[(ids < 0) | (ids >= pts.shape[0])] = -1
            renderer.RemoveAllViewProps()
            renderer.AddActor(shade_actor)
            renderer.ResetCameraClippingRange()
            window.Render()
            shade = _grab(window)[..., 0].astype(float) / 255.0
            out.append(ViewGeometry(name, ids, shade, r, up.copy(), t, mm_per_px, c, ss))
    finally:
        window.Finalize()
    return out


def _zone_boundaries(zone_px: np.ndarray) -> np.ndarray:
    """Pixels on the edge between two zones (both sides on the stem)."""
    edge = np.zeros(zone_px.shape, dtype=bool)
    fg = zone_px >= 0
    dh = (zone_px[:, 1:] != zone_px[:, :-1]) & fg[:, 1:] & fg[:, :-1]
    dv = (zone_px[1:, :] != zone_px[:-1, :]) & fg[1:, :] & fg[:-1, :]
    edge[:, 1:] |= dh
    edge[1:, :] |= dv
    return edge


def colour_views(result, geometry: list[ViewGeometry], colouring: str, zone_lines: bool = True) -> list[SurfaceView]:
    """Colour rendered views: each pixel gets its vertex's colour times the lighting.

    Args:
        result: the analysis result the geometry was rendered from.
        geometry: from :func:`render_geometry`.
        colouring: ``"hu"``, ``"zone"`` or ``"class"`` (see :func:`vertex_colours`).
        zone_lines: darken the boundaries between Gruen zones (and the resection line).
    """
    rgb_v = vertex_colours(result, colouring)
    zone_v = result.vertices["gruen_zone"].to_numpy()
    out = []
    for g in geometry:
        ids = g.vertex_id
        fg = ids >= 0
        img = np.ones(ids.shape + (3,))
        img[fg] = rgb_v[ids[fg]] * g.shade[fg, None]
        if zone_lines:
            zpx = np.where(fg, zone_v[np.clip(ids, 0, None)], -1)
            edge = _zone_boundaries(zpx)
            img[edge] *= 0.25
        ss = g.supersample
        h, w = ids.shape[0] // ss, ids.shape[1] // ss
        small = img[: h * ss, : w * ss].reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        image = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
        out.append(
            SurfaceView(
                name=g.name,
                image=image,
                vertex_id=ids[: h * ss: ss, : w * ss: ss].copy(),
                right=g.right,
                up=g.up,
                toward_viewer=g.toward_viewer,
                mm_per_pixel=g.mm_per_pixel,
                centre=g.centre,
            )
        )
    return out


def render_surface_views(
    result,
    colouring: str = "hu",
    views: tuple[str, ...] = VIEWS,
    panel_px: tuple[int, int] = (290, 620),
) -> list[SurfaceView]:
    """The stem rendered offscreen from each view and coloured (``"hu"``, ``"zone"`` or ``"class"``).

    Returns one :class:`SurfaceView` per view: the picture and, per pixel,
    the vertex it shows, so callers can look up any per-vertex value.
    """
    return colour_views(result, render_geometry(result, views, panel_px), colouring)


def _side_word(vec: np.ndarray, frame) -> str:
    """Anatomical name of the direction closest to ``vec`` (within the cross-section plane)."""
    names = {"medial": frame.medial, "lateral": -frame.medial, "anterior": frame.anterior, "posterior": -frame.anterior}
    return max(names, key=lambda k: float(np.dot(vec, names[k])))


def _box_count(mask: np.ndarray, half: int) -> np.ndarray:
    """Number of True pixels in the (2 half + 1)^2 window around each pixel (integral image)."""
    m = np.pad(mask.astype(np.int32), half + 1)
    ii = m.cumsum(0).cumsum(1)
    k = 2 * half + 1
    h, w = mask.shape
    return ii[k: k + h, k: k + w] - ii[:h, k: k + w] - ii[k: k + h, :w] + ii[:h, :w]


def _zone_label_positions(view: SurfaceView, zone_v: np.ndarray, min_fraction: float = 0.02) -> dict[int, tuple[float, float]]:
    """Pixel (column, row) well inside each zone's visible part, for zones covering enough of the view."""
    ids = view.vertex_id
    fg = ids >= 0
    if not fg.any():
        return {}
    zpx = np.where(fg, zone_v[np.clip(ids, 0, None)], -1)
    total = fg.sum()
    out = {}
    for z in ZONE_ORDER:
        mask = zpx == z
        if mask.sum() < min_fraction * total:
            continue
        # Among the pixels whose surroundings (a label-sized window) are most filled by the zone,
        # the one nearest the zone's median: the label sits on the zone, not across its edge.
        count = np.where(mask, _box_count(mask, 6), -1)
        r, c = np.nonzero(count >= 0.9 * count.max())
        rm, cm = np.median(np.nonzero(mask)[0]), np.median(np.nonzero(mask)[1])
        k = np.argmin((r - rm) ** 2 + (c - cm) ** 2)
        out[z] = (float(c[k]), float(r[k]))
    return out


def _panel_layout(n_panels: int, panel_px: tuple[int, int], right_px: int):
    w, h = panel_px
    left, gap, top, bottom = 16, 18, 92, 58
    fig_w = left + n_panels * w + (n_panels - 1) * gap + right_px
    fig_h = top + h + bottom
    rects = []
    for i in range(n_panels):
        x0 = left + i * (w + gap)
        rects.append((x0 / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
    side = ((left + n_panels * (w + gap)) / fig_w, bottom / fig_h, (right_px - gap - 10) / fig_w, h / fig_h)
    return fig_w, fig_h, rects, side


def _model_name(result) -> str:
    model = result.inputs.get("model", {}) if isinstance(result.inputs, dict) else {}
    return str(model.get("name", "implant model"))


def surface_views_figure(result, colouring: str, views: list[SurfaceView] | None = None) -> Figure:
    """The four views side by side with titles, orientation words, scale bar and colour bar or legend.

    Each panel shows its :class:`SurfaceView` image pixel for pixel (no resampling).

    Args:
        result: the analysis result.
        colouring: ``"hu"``, ``"zone"`` or ``"class"``.
        views: from :func:`render_surface_views` with the same colouring (rendered if ``None``).
    """
    if views is None:
        views = render_surface_views(result, colouring)
    frame = result.frame
    h, w = views[0].image.shape[:2]
    right_px = {"hu": 250, "zone": 200, "class": 240}[colouring]
    fig_w, fig_h, rects, side = _panel_layout(len(views), (w, h), right_px)
    fig = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    titles = {
        "hu": "Hounsfield units at the stem surface",
        "zone": "Gruen zones on the stem surface",
        "class": "Contact classes at the stem surface",
    }
    subtitle = {
        "hu": f"fixed colour range {HU_RANGE[0]:g} to {HU_RANGE[1]:g} HU ({HU_COLORMAP}), the same for every case",
        "zone": f"zones 1-7 (AP view) and 8-14 (lateral view); {frame.side} femur"
        + ("; sector zones shown, the zone table uses the projection scheme" if result.parameters.zone_scheme == "projection" else ""),
        "class": f"classes '{result.parameters.classes}'"
        + (f", metal at or above {result.parameters.metal_hu:g} HU" if result.parameters.metal_hu is not None else ""),
    }[colouring]
    fig.text(0.5, 1 - 18 / fig_h, titles[colouring], ha="center", va="top", fontsize=15, weight="bold")
    fig.text(0.5, 1 - 44 / fig_h, f"{_model_name(result)}: {subtitle}", ha="center", va="top", fontsize=10, color="#333333")
    zone_v = result.vertices["gruen_zone"].to_numpy()
    for i, (view, rect) in enumerate(zip(views, rects)):
        ax = fig.add_axes(rect)
        ax.imshow(view.image, interpolation="none", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_axis_off()
        ax.set_label(view.name)
        ax.set_title(f"{view.name.capitalize()} view", fontsize=12, pad=6)
        left_word = _side_word(-view.right, frame)
        right_word = _side_word(view.right, frame)
        ax.text(0.5, -0.012, f"\u2190 {left_word}    {right_word} \u2192", transform=ax.transAxes, ha="center", va="top",
                fontsize=9.5, color="#333333")
        if i == 0:
            ax.text(0.0, 1.0, "proximal \u2191", transform=ax.transAxes, ha="left", va="top", fontsize=9, color="#444444")
        if colouring == "zone":
            for z, (cx, cy) in _zone_label_positions(view, zone_v).items():
                ax.text(
                    cx, cy, str(z), ha="center", va="center", fontsize=10, weight="bold", color="black",
                    path_effects=[withStroke(linewidth=3, foreground="white")],
                )
    _draw_key(fig, result, colouring, side)
    # Scale bar under the key, in figure pixels: the panels show the renderings one to one.
    bar_px = 50.0 / views[0].mm_per_pixel
    x0, y0 = side[0] * fig_w, side[1] * fig_h + 8
    sax = fig.add_axes((0, 0, 1, 1), label="scale bar")
    sax.set_axis_off()
    sax.set_xlim(0, fig_w)
    sax.set_ylim(0, fig_h)
    sax.plot([x0, x0 + bar_px], [y0, y0], color="black", lw=3, solid_capstyle="butt")
    sax.text(x0 + bar_px / 2, y0 + 5, "50 mm (all views)", ha="center", va="bottom", fontsize=9)
    return fig


def _legend_handles(result, colouring: str) -> list[Patch]:
    handles = []
    if colouring == "zone":
        for z in ZONE_ORDER:
            handles.append(Patch(facecolor=ZONE_COLOURS[z], edgecolor="#555555", label=f"{z} {_SHORT_REGION[z]}"))
    elif colouring == "class":
        colours = class_colours(result)
        for name in result.class_names:
            handles.append(Patch(facecolor=colours[name], edgecolor="#555555", label=_class_label(result, name)))
        cls = result.vertices["contact_class"].to_numpy()
        if (cls == UNCLASSIFIED).any():
            handles.append(Patch(facecolor=UNCLASSIFIED_COLOUR, edgecolor="#555555", label="unclassified"))
    if colouring != "zone":
        handles.append(Patch(facecolor=NOT_SAMPLED_COLOUR, edgecolor="#555555", label="outside the CT (no HU)"))
    handles.append(Patch(facecolor=ABOVE_CUT_COLOUR, edgecolor="#555555", label="above the resection\n(not analysed)"))
    return handles


def _class_label(result, name: str) -> str:
    if name == METAL:
        return f"metal (\u2265 {result.parameters.metal_hu:g} HU)"
    if name == UNRELIABLE:
        return "unreliable (bone not told\nfrom the metal's bloom)"
    for b in parse_classes(result.parameters.classes):
        if b.name == name:
            if math.isinf(b.low_hu):
                return f"{name} (< {b.high_hu:g} HU)"
            if math.isinf(b.high_hu):
                return f"{name} (\u2265 {b.low_hu:g} HU)"
            return f"{name} ({b.low_hu:g}-{b.high_hu:g} HU)"
    return name.replace("_", " ")


def _draw_key(fig: Figure, result, colouring: str, side_rect) -> None:
    """Colour bar (HU) or legend (zones, classes) in the column right of the panels."""
    x, y, w, h = side_rect
    if colouring == "hu":
        fig_w = fig.get_figwidth() * _DPI
        cax = fig.add_axes((x + 85 / fig_w, y + 0.30 * h, 22 / fig_w, 0.62 * h))
        _hu_colourbar(fig, cax, result)
        lax = fig.add_axes((x, y, w, 0.22 * h))
        lax.set_axis_off()
        lax.legend(handles=_legend_handles(result, "hu"), loc="upper left", fontsize=9, frameon=False, borderaxespad=0)
    else:
        lax = fig.add_axes((x, y, w, h))
        lax.set_axis_off()
        title = "Gruen zone" if colouring == "zone" else "Contact class"
        lax.legend(
            handles=_legend_handles(result, colouring), loc="upper left", fontsize=9, frameon=False,
            title=title, title_fontsize=10, alignment="left", borderaxespad=0,
        )


def _hu_colourbar(fig: Figure, cax, result) -> None:
    """HU colour bar with the contact-class limits marked and the class names beside it."""
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=Normalize(*HU_RANGE), cmap=colormaps[HU_COLORMAP])
    cb = fig.colorbar(sm, cax=cax, extend="both")
    cb.set_label("HU", fontsize=10)
    cb.ax.tick_params(labelsize=9)
    # Class limits on the bar so the colours read as classes too.
    for b in parse_classes(result.parameters.classes):
        lo, hi = max(b.low_hu, HU_RANGE[0]), min(b.high_hu, HU_RANGE[1])
        if HU_RANGE[0] < b.low_hu < HU_RANGE[1]:
            cb.ax.axhline(b.low_hu, color="white", lw=2.4)
            cb.ax.axhline(b.low_hu, color="black", lw=1.0)
        if lo < hi:
            cb.ax.text(-0.35, 0.5 * (lo + hi), b.name.replace("_", " "), transform=cb.ax.get_yaxis_transform(),
                       ha="right", va="center", fontsize=8.5, color="#333333")


# --------------------------------------------------------------------------- unrolled map


@dataclass
class UnrolledMap:
    """The stem surface unrolled around its axis, on a regular grid.

    Columns run in azimuth from 0 (medial) through 90 (anterior), 180
    (lateral), 270 (posterior) back to 360 (medial); rows run from the
    highest point of the resection line (row 0, top) down to the tip.

    Attributes:
        azimuth_deg: ``(W,)`` azimuth of each column centre (degrees).
        height_mm: ``(H,)`` height above the tip of each row centre (mm), decreasing.
        vertex_id: ``(H, W)`` nearest vertex (in the unrolled plane) to each cell; -1 where none.
        hu: ``(H, W)`` HU interpolated linearly between vertices; NaN outside the CT.
        cut_height_mm: ``(W,)`` height of the resection line at each column (mm).
        band_heights_mm: ``(2, W)`` heights of the proximal/middle and middle/distal band boundaries (mm).
        tip_length_mm: height of the tip-zone boundary (mm).
        mm_per_degree: arc length per degree used to measure distances in the unrolled plane (mm).
    """

    azimuth_deg: np.ndarray
    height_mm: np.ndarray
    vertex_id: np.ndarray
    hu: np.ndarray
    cut_height_mm: np.ndarray
    band_heights_mm: np.ndarray
    tip_length_mm: float
    mm_per_degree: float

    def values(self, per_vertex: np.ndarray, fill=np.nan) -> np.ndarray:
        """Any per-vertex array looked up on the grid (nearest vertex); ``fill`` where no vertex."""
        per_vertex = np.asarray(per_vertex)
        out = np.full(self.vertex_id.shape, fill, dtype=np.result_type(per_vertex.dtype, np.asarray(fill).dtype))
        ok = self.vertex_id >= 0
        out[ok] = per_vertex[self.vertex_id[ok]]
        return out


def _radial(result) -> np.ndarray:
    v = result.vertices
    p = v[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float) - result.frame.tip
    axis = np.asarray(result.frame.axis, dtype=float)
    r = p - np.outer(p @ axis, axis)
    return np.linalg.norm(r, axis=1)


def _line_heights(result, az_deg: np.ndarray, fraction_below_cut: float) -> np.ndarray:
    """Height (mm above the tip) of the line at ``fraction_below_cut`` of the local cut height, per azimuth.

    The local cut height depends on where around the axis the surface is
    (an oblique cut): it is measured at the stem's own radius there, found
    from the vertices near that azimuth and height.
    """
    frame = result.frame
    v = result.vertices
    az_v = v["azimuth_deg"].to_numpy(dtype=float)
    h_v = v["height_mm"].to_numpy(dtype=float)
    r_v = _radial(result)
    below = v["gruen_zone"].to_numpy() > 0
    if not below.any():
        below = np.ones(len(v), dtype=bool)
    r_default = float(np.median(r_v[below]))
    med = np.asarray(frame.medial, dtype=float)
    ant = np.asarray(frame.anterior, dtype=float)
    tip = np.asarray(frame.tip, dtype=float)
    cut0 = float(np.median(frame.cut_height(tip[None, :] + r_default * med[None, :])))
    samples = np.linspace(0.0, 360.0, 145)
    guess = np.full(samples.shape, cut0 * (1.0 - fraction_below_cut))
    line = guess
    for _ in range(2):
        # The radius is looked up just below the cut for the cut line itself: above it is the neck.
        look = guess - (3.0 if fraction_below_cut == 0 else 0.0)
        radius = np.empty(samples.shape)
        for i, (a, ht) in enumerate(zip(samples, look)):
            d_az = np.abs((az_v - a + 180.0) % 360.0 - 180.0)
            sel = below & (d_az < 8.0) & (np.abs(h_v - ht) < 8.0)
            radius[i] = np.median(r_v[sel]) if sel.sum() >= 3 else r_default
        rad = np.radians(samples)
        p = tip[None, :] + radius[:, None] * (np.cos(rad)[:, None] * med[None, :] + np.sin(rad)[:, None] * ant[None, :])
        line = frame.cut_height(p) * (1.0 - fraction_below_cut)
        guess = line
    return np.interp(az_deg, samples, line, period=360.0)


def unrolled_map(result, width_px: int = 720, height_px: int = 520, pad_deg: float = 30.0) -> UnrolledMap:
    """Unroll the surface around the stem axis onto a regular (azimuth, height) grid.

    Each grid cell takes the nearest vertex in the unrolled plane, where an
    azimuth step is measured as arc length at the stem's median radius
    (``mm_per_degree``) so that nearest means nearest on the surface. The
    plane is padded by ``pad_deg`` on both sides so the map is continuous
    across 0/360 degrees. HU is interpolated linearly on the Delaunay
    triangulation of the unrolled vertices.

    Args:
        result: the analysis result.
        width_px, height_px: grid size (cells).
        pad_deg: periodic padding (degrees).
    """
    from matplotlib.tri import LinearTriInterpolator, Triangulation

    v = result.vertices
    az = v["azimuth_deg"].to_numpy(dtype=float)
    h = v["height_mm"].to_numpy(dtype=float)
    hu = v["hu"].to_numpy(dtype=float)
    zone = v["gruen_zone"].to_numpy()
    r = _radial(result)
    below = zone > 0
    r_med = float(np.median(r[below] if below.any() else r))
    mm_per_deg = max(2.0 * math.pi * r_med / 360.0, 1e-3)
    bands = np.cumsum(np.asarray(result.parameters.bands_axial, dtype=float))[:2]

    az_cols = (np.arange(width_px) + 0.5) * 360.0 / width_px
    cut = _line_heights(result, az_cols, 0.0)
    band_lines = np.stack([_line_heights(result, az_cols, float(b)) for b in bands])
    top = float(np.nanmax(cut)) + 3.0
    top = min(top, float(h.max()))
    heights = top - (np.arange(height_px) + 0.5) * top / height_px

    keep = h <= top + 15.0
    idx = np.nonzero(keep)[0]
    lo = idx[az[idx] < pad_deg]
    hi = idx[az[idx] > 360.0 - pad_deg]
    # Periodic in azimuth; mirrored below the tip, where every azimuth meets (the pole of the map).
    pole = idx[h[idx] < 5.0]
    all_idx = np.concatenate([idx, lo, hi, pole])
    x = np.concatenate([az[idx], az[lo] + 360.0, az[hi] - 360.0, az[pole]]) * mm_per_deg
    y = np.concatenate([h[idx], h[lo], h[hi], -h[pole]])
    # Coincident points (the apex of the tip) make Delaunay drop one of them: nudge them apart.
    x = x + 1e-6 * np.arange(x.size) / max(x.size, 1)
    tri = Triangulation(x, y)
    gx, gy = np.meshgrid(az_cols * mm_per_deg, heights)
    finder = tri.get_trifinder()
    t = finder(gx, gy)
    vid = np.full(gx.shape, -1, dtype=np.int64)
    inside = t >= 0
    corners = tri.triangles[t[inside]]
    d2 = (x[corners] - gx[inside][:, None]) ** 2 + (y[corners] - gy[inside][:, None]) ** 2
    nearest = corners[np.arange(corners.shape[0]), np.argmin(d2, axis=1)]
    vid[inside] = all_idx[nearest]
    hu_p = hu[all_idx]
    ok = np.isfinite(hu_p)
    # Linear interpolation needs a value at every vertex: interpolate with the gaps
    # filled, then give cells whose triangle touches a vertex without HU the value
    # of their nearest vertex (NaN when it has none).
    vals = LinearTriInterpolator(tri, np.where(ok, hu_p, 0.0))(gx, gy)
    hu_grid = np.where(np.ma.getmaskarray(vals), np.nan, np.ma.getdata(vals))
    touch = np.zeros(gx.shape, dtype=bool)
    touch[inside] = ~ok[corners].all(axis=1)
    hu_grid[touch] = hu[vid[touch]]
    hu_grid[vid < 0] = np.nan
    return UnrolledMap(
        azimuth_deg=az_cols,
        height_mm=heights,
        vertex_id=vid,
        hu=hu_grid,
        cut_height_mm=cut,
        band_heights_mm=band_lines,
        tip_length_mm=float(result.frame.tip_length_mm),
        mm_per_degree=mm_per_deg,
    )


def _unrolled_rgb(result, umap: UnrolledMap, kind: str) -> np.ndarray:
    zone = umap.values(result.vertices["gruen_zone"].to_numpy(), fill=-1)
    if kind == "hu":
        rgb = hu_to_rgb(umap.hu)
    elif kind == "class":
        per_vertex = vertex_colours(result, "class")
        rgb = np.stack([umap.values(per_vertex[:, c], fill=1.0) for c in range(3)], axis=-1)
    else:
        raise ValueError(f"kind must be 'hu' or 'class', got {kind!r}")
    rgb[zone == 0] = _rgb(ABOVE_CUT_COLOUR)
    rgb[zone < 0] = _WHITE
    return rgb


def unrolled_figure(result, kind: str = "hu", umap: UnrolledMap | None = None) -> Figure:
    """The unrolled map (``kind`` ``"hu"`` or ``"class"``) with the Gruen zone grid and numbers.

    Args:
        result: the analysis result.
        kind: colour by HU (fixed range :data:`HU_RANGE`) or by contact class.
        umap: from :func:`unrolled_map` (computed if ``None``).
    """
    if umap is None:
        umap = unrolled_map(result)
    rgb = _unrolled_rgb(result, umap, kind)
    hgt, wid = rgb.shape[:2]
    left, right, top, bottom = 90, 290, 86, 74
    fig_w, fig_h = left + wid + right, top + hgt + bottom
    fig = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, wid / fig_w, hgt / fig_h))
    top_mm = float(umap.height_mm[0] + 0.5 * (umap.height_mm[0] - umap.height_mm[1]))
    ax.imshow(rgb, extent=(0.0, 360.0, 0.0, top_mm), aspect="auto", interpolation="nearest", origin="upper")
    ax.set_xlim(0, 360)
    ax.set_ylim(0, top_mm)
    ax.set_xticks([0, 45, 90, 135, 180, 225, 270, 315, 360])
    ax.set_xticklabels(["0\u00b0\nmedial", "45\u00b0", "90\u00b0\nanterior", "135\u00b0", "180\u00b0\nlateral", "225\u00b0",
                        "270\u00b0\nposterior", "315\u00b0", "360\u00b0\nmedial"], fontsize=9)
    ax.set_ylabel("height above the tip (mm)", fontsize=10)
    ax.tick_params(labelsize=9)
    az = umap.azimuth_deg

    def grid_line(xs, ys, dashed=False):
        # A white line under a black one: readable on dark and light colours alike.
        ax.plot(xs, ys, color="white", lw=2.4, solid_capstyle="butt")
        ax.plot(xs, ys, color="black", lw=1.3, ls=(0, (5, 3)) if dashed else "-", solid_capstyle="butt")

    grid_line(az, umap.cut_height_mm)
    for b in umap.band_heights_mm:
        grid_line(az, b)
    if umap.tip_length_mm > 0:
        grid_line([0, 360], [umap.tip_length_mm] * 2)
    for a in (45, 135, 225, 315):
        k = min(int(a / 360.0 * len(az)), len(az) - 1)
        grid_line([a, a], [0, umap.cut_height_mm[k]], dashed=True)
    # Zone numbers at the middle of each cell of the grid.
    sectors = {"medial": (7, 6, 5, 4), "anterior": (8, 9, 10, 11), "lateral": (1, 2, 3, 4), "posterior": (14, 13, 12, 11)}
    centres = {"medial": (22.5, 337.5), "anterior": (90.0,), "lateral": (180.0,), "posterior": (270.0,)}
    for sector, zones in sectors.items():
        for a in centres[sector]:
            k = min(int(a / 360.0 * len(az)), len(az) - 1)
            levels = [umap.cut_height_mm[k], umap.band_heights_mm[0][k], umap.band_heights_mm[1][k], umap.tip_length_mm, 0.0]
            for band in range(4):
                if band == 3 and umap.tip_length_mm <= 0:
                    continue
                y = 0.5 * (levels[band] + levels[band + 1])
                ax.text(
                    a, y, str(zones[band]), ha="center", va="center", fontsize=11, weight="bold",
                    bbox=dict(boxstyle="round,pad=0.22", fc="white", ec="#333333", lw=0.6, alpha=0.85),
                )
    title = "Unrolled contact map: " + ("HU at the stem surface" if kind == "hu" else "contact class at the stem surface")
    fig.text(0.5, 1 - 16 / fig_h, title, ha="center", va="top", fontsize=15, weight="bold")
    fig.text(
        0.5, 1 - 42 / fig_h,
        f"{_model_name(result)}: azimuth around the stem axis against height, from the resection line (top) to the tip; "
        "lines: Gruen zone grid",
        ha="center", va="top", fontsize=9.5, color="#333333",
    )
    key = (1 - (right - 20) / fig_w, bottom / fig_h, (right - 40) / fig_w, hgt / fig_h)
    if kind == "hu":
        cax = fig.add_axes((key[0] + 85 / fig_w, key[1] + 0.30 * key[3], 22 / fig_w, 0.68 * key[3]))
        _hu_colourbar(fig, cax, result)
        lax = fig.add_axes((key[0], key[1], key[2], 0.22 * key[3]))
        lax.set_axis_off()
        lax.legend(handles=_legend_handles(result, "hu"), loc="upper left", fontsize=9, frameon=False, borderaxespad=0)
    else:
        lax = fig.add_axes(key)
        lax.set_axis_off()
        lax.legend(handles=_legend_handles(result, "class"), loc="upper left", fontsize=9, frameon=False,
                   title="Contact class", title_fontsize=10, alignment="left", borderaxespad=0)
    ax.set_label("unrolled")
    return fig


# --------------------------------------------------------------------------- bar chart


def zone_fractions_figure(result) -> Figure:
    """Stacked bars: area fraction of each contact class per Gruen zone, zones 1-7 then 8-14.

    Fractions are of the sampled area of each zone (``frac_<class>`` of the
    zone table); a zone partly outside the CT is marked with its sampled share.
    """
    zones = result.zones.set_index(result.zones["zone"].astype(str))
    colours = class_colours(result)
    fig = Figure(figsize=(11.5, 5.6), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.07, 0.2, 0.68, 0.6))
    xs = [z - 1 if z <= 7 else z for z in ZONE_ORDER]
    bottoms = np.zeros(len(ZONE_ORDER))
    rows = [zones.loc[str(z)] if str(z) in zones.index else None for z in ZONE_ORDER]
    for name in result.class_names:
        col = f"frac_{name}"
        vals = np.array([float(r[col]) if r is not None and col in r and np.isfinite(r[col]) else 0.0 for r in rows])
        ax.bar(xs, 100 * vals, bottom=100 * bottoms, color=colours[name], edgecolor="white", lw=0.6,
               label=_class_label(result, name), width=0.78)
        # Print the share inside segments tall enough to hold it, dark on light colours, light on dark.
        rgb = _rgb(colours[name])
        ink = "black" if 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] > 0.45 else "white"
        for x, b, val in zip(xs, bottoms, vals):
            if val >= 0.07:
                ax.text(x, 100 * (b + val / 2), f"{100 * val:.0f}", ha="center", va="center", fontsize=8, color=ink)
        bottoms += vals
    rest = np.clip(1.0 - bottoms, 0.0, 1.0)
    has_data = np.array([r is not None and float(r["area_sampled_mm2"]) > 0 for r in rows])
    unclassified = np.where(has_data & (rest > 1e-6), rest, 0.0)
    if unclassified.any():
        ax.bar(xs, 100 * unclassified, bottom=100 * bottoms, color=UNCLASSIFIED_COLOUR, edgecolor="white", lw=0.6,
               label="unclassified", width=0.78)
    if (~has_data).any():
        ax.bar(np.array(xs)[~has_data], 100.0, color="white", edgecolor=NOT_SAMPLED_COLOUR, hatch="///", width=0.78,
               label="no sampled area")
    for x, r in zip(xs, rows):
        if r is None:
            continue
        area, sampled = float(r["area_mm2"]), float(r["area_sampled_mm2"])
        if area > 0 and sampled < 0.995 * area:
            ax.text(x, 101.5, f"{100 * sampled / area:.0f}%\nsampled", ha="center", va="bottom", fontsize=7.5, color="#444444")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{z}\n" + _SHORT_REGION[z].replace(" ", "\n") for z in ZONE_ORDER], fontsize=8.5)
    ax.set_xlim(-0.7, 14.7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of the zone's sampled area (%)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.axvline(7.0, color="#999999", lw=0.8, ls=":")
    ax.text(3.0, -0.19, "AP view (zones 1-7)", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=10)
    ax.text(11.0, -0.19, "lateral view (zones 8-14)", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False, title="Contact class", title_fontsize=10,
              alignment="left")
    fig.text(0.5, 0.975, "Contact classes per Gruen zone", ha="center", va="top", fontsize=15, weight="bold")
    fig.text(0.5, 0.925, f"{_model_name(result)}: area-weighted, surface below the resection plane, zones in anatomical order",
             ha="center", va="top", fontsize=9.5, color="#333333")
    ax.set_label("zone_fractions")
    return fig


# --------------------------------------------------------------------------- report


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure at its own size and resolution (no cropping)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    return buf.getvalue()


def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if abs(x) < 1e-9:
            return "0"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.4g}"
        return f"{x:.4g}" if abs(x) < 10 else f"{x:.1f}"
    if isinstance(x, (list, tuple, np.ndarray)):
        return "(" + ", ".join(_fmt(v) for v in x) + ")"
    if x is None:
        return "\u2014"
    return str(x)


def _e(x) -> str:
    return html.escape(_fmt(x) if not isinstance(x, str) else x, quote=True)


def _kv_table(items) -> str:
    rows = "".join(f"<tr><th>{_e(str(k))}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


_CAPTIONS = {
    "heatmap_hu.png": "HU at the stem surface from four sides (parallel projection, proximal up, same scale). "
    "Colour range fixed at {lo:g} to {hi:g} HU ({cmap}) for every case; the marks on the colour bar are the contact-class limits. "
    "Thin dark lines are the Gruen zone boundaries and the resection line.",
    "zones.png": "Gruen zones on the stem surface: check by eye that the frame (axis, medial side, resection) is right.",
    "contact_classes.png": "Contact class of each vertex's area patch.",
    "unrolled_hu.png": "Unrolled map of HU: azimuth around the stem axis against height above the tip, "
    "with the Gruen zone grid (sector boundaries at 45, 135, 225 and 315 degrees; bands at thirds of the cut height; tip zone).",
    "unrolled_classes.png": "Unrolled map of the contact classes, with the Gruen zone grid.",
    "zone_fractions.png": "Area fraction of each contact class per zone (of the zone's sampled area).",
}


def report_html(result, pictures: dict[str, bytes], notes: list[str] | None = None) -> str:
    """One self-contained HTML page: inputs, frame, parameters, warnings, zone table, pictures.

    Args:
        result: the analysis result.
        pictures: PNG bytes by file name (embedded as base64 ``data:`` URLs).
        notes: extra lines for the warnings section (for example a picture that could not be made).

    The page is also well-formed XML (every element closed, text escaped), so
    any HTML or XML parser reads it.
    """
    from . import __version__
    from .analysis import library_versions
    from .classes import bands_to_json

    zones = result.zones
    params = result.parameters.to_dict()
    frame = result.frame.to_dict()
    warnings = list(result.warnings) + list(notes or [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{_e('Implant-bone contact: ' + _model_name(result))}</title>",
        "<style>"
        "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1500px;"
        "color:#222;padding:0 16px;line-height:1.4}"
        "h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccc;padding-bottom:3px}"
        "table{border-collapse:collapse;font-size:0.9em;margin:8px 0}"
        "th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:left;vertical-align:top}"
        "table.zones td{text-align:right}table.zones td.t{text-align:left}"
        "thead th{background:#f0f0f0}table.kv th{background:#f7f7f7;font-weight:600}"
        "code{font-size:0.9em;word-break:break-all}"
        "figure{margin:18px 0}figure img{max-width:100%;height:auto;border:1px solid #e4e4e4}"
        "figcaption{font-size:0.9em;color:#444;max-width:1100px}"
        ".warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 12px}"
        ".muted{color:#666;font-size:0.9em}"
        "</style></head><body>",
        "<h1>Implant-bone contact</h1>",
        f'<p class="muted">{_e(_model_name(result))} in {_e(str(result.inputs.get("ct", {}).get("name", "CT")))}; '
        f"{_e(result.frame.side)} femur; implant-bone-contact {_e(__version__)}; "
        f"report written {_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>",
    ]
    all_row = zones[zones["zone"].astype(str) == "all"]
    if len(all_row):
        r = all_row.iloc[0]
        summary = ", ".join(f"{_class_label(result, n)}: {100 * float(r[f'frac_{n}']):.1f}%" for n in result.class_names
                            if f"frac_{n}" in r and np.isfinite(float(r[f"frac_{n}"])))
        parts.append(f"<p><b>Whole stem below the resection:</b> {_e(summary)}; mean {_e(float(r['hu_mean']))} HU over "
                     f"{_e(float(r['area_sampled_mm2']))} mm\u00b2 sampled of {_e(float(r['area_mm2']))} mm\u00b2.</p>")
    parts.append("<h2>Warnings</h2>")
    if warnings:
        parts.append('<div class="warn"><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    else:
        parts.append("<p>None.</p>")

    parts.append("<h2>Pictures</h2>")
    for name in PICTURE_FILES:
        if name not in pictures:
            continue
        data = base64.b64encode(pictures[name]).decode("ascii")
        caption = _CAPTIONS.get(name, "").format(lo=HU_RANGE[0], hi=HU_RANGE[1], cmap=HU_COLORMAP)
        parts.append(
            f'<figure id="{_e(name)}"><img src="data:image/png;base64,{data}" alt="{_e(name)}"/>'
            f"<figcaption><code>{_e(name)}</code>: {_e(caption)}</figcaption></figure>"
        )

    parts.append("<h2>Zones</h2>")
    cols = ["zone", "region", "n_vertices", "area_mm2", "area_sampled_mm2", "hu_mean", "hu_std", "hu_p05", "hu_median", "hu_p95"]
    cols = [c for c in cols if c in zones.columns] + [f"frac_{n}" for n in result.class_names if f"frac_{n}" in zones.columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for _, r in zones.iterrows():
        cells = []
        for c in cols:
            val = r[c]
            cls = ' class="t"' if c in ("zone", "region") else ""
            if c.startswith("frac_"):
                text = f"{100 * float(val):.1f}%" if np.isfinite(float(val)) else "NaN"
            elif c in ("zone", "region"):
                text = str(val)
            elif c.startswith("n_"):
                text = str(int(val))
            else:
                text = _fmt(float(val))
            cells.append(f"<td{cls}>{_e(text)}</td>")
        body.append(f'<tr data-zone="{_e(str(r["zone"]))}">' + "".join(cells) + "</tr>")
    parts.append(f'<table class="zones"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    parts.append(f'<p class="muted">Zone scheme: {_e(result.parameters.zone_scheme)}. Fractions are of the sampled area; '
                 "HU statistics are area-weighted.</p>")

    parts.append("<h2>Inputs</h2>")
    input_rows = []
    for key, info in (result.inputs or {}).items():
        if not isinstance(info, dict):
            input_rows.append((key, info))
            continue
        for k in ("name", "path", "sha256"):
            if k in info:
                input_rows.append((f"{key} {k}", info[k]))
        for k, val in info.items():
            if k in ("name", "path", "sha256") or isinstance(val, dict):
                continue
            if k in ("ijk_to_ras", "matrix_ras"):
                val = "; ".join(_fmt(row) for row in val)
            input_rows.append((f"{key} {k}", val))
    parts.append(_kv_table(input_rows) if input_rows else "<p>Not recorded (analysis of objects in memory).</p>")

    parts.append("<h2>Stem frame</h2>")
    frame_rows = [(k, val) for k, val in frame.items() if k != "provenance"]
    frame_rows += [(f"provenance: {k}", val) for k, val in frame.get("provenance", {}).items()]
    parts.append(_kv_table(frame_rows))

    parts.append("<h2>Parameters</h2>")
    parts.append(_kv_table(sorted(params.items())))
    bands = bands_to_json(parse_classes(result.parameters.classes))
    parts.append(_kv_table([(b["name"], f"[{b['low_hu']}, {b['high_hu']}) HU") for b in bands]))

    parts.append("<h2>Software</h2>")
    parts.append(_kv_table(sorted(library_versions().items())))
    if result.timings_s:
        parts.append(_kv_table([(k, f"{float(s):.2f} s") for k, s in result.timings_s.items()]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- writing


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def make_pictures(result) -> tuple[dict[str, bytes], list[str]]:
    """Every picture as PNG bytes by file name, and notes about pictures that could not be made.

    The 3D views need OpenGL; when it is missing the other pictures are
    still made and the reason is noted.
    """
    pictures: dict[str, bytes] = {}
    notes: list[str] = []
    try:
        geometry = render_geometry(result)
    except Exception as exc:  # noqa: BLE001 - OpenGL can fail in many ways; the rest must still be written
        geometry = None
        notes.append(f"the 3D views could not be rendered (offscreen OpenGL failed: {exc}); the other pictures are complete")
    if geometry is not None:
        for colouring, name in (("hu", "heatmap_hu.png"), ("zone", "zones.png"), ("class", "contact_classes.png")):
            views = colour_views(result, geometry, colouring)
            pictures[name] = figure_png(surface_views_figure(result, colouring, views))
    umap = unrolled_map(result)
    pictures["unrolled_hu.png"] = figure_png(unrolled_figure(result, "hu", umap))
    pictures["unrolled_classes.png"] = figure_png(unrolled_figure(result, "class", umap))
    pictures["zone_fractions.png"] = figure_png(zone_fractions_figure(result))
    return pictures, notes


def write_pictures(result, folder: str | os.PathLike) -> list[str]:
    """Write every picture and ``report.html`` into ``folder``; return the file names written.

    Args:
        result: an :class:`~ImplantBoneContactLib.analysis.AnalysisResult`.
        folder: an existing folder (each file is written to a temporary name, then renamed).
    """
    folder = Path(folder)
    pictures, notes = make_pictures(result)
    written = []
    for name in PICTURE_FILES:
        if name in pictures:
            _write_bytes(folder / name, pictures[name])
            written.append(name)
    _write_bytes(folder / REPORT_FILE, report_html(result, pictures, notes).encode("utf-8"))
    written.append(REPORT_FILE)
    return written
