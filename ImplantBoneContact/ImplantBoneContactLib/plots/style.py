"""Colours, labels and titles shared by every picture.

The constants live in :mod:`ImplantBoneContactLib.display` (no matplotlib),
so the Slicer module shows the same range and colours.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_rgb

from ..classes import METAL, NOT_SAMPLED, UNCLASSIFIED, UNRELIABLE, parse_classes
from ..display import (
    ABOVE_CUT_COLOUR,
    HU_COLORMAP,
    HU_DISPLAY_RANGE,
    NOT_SAMPLED_COLOUR,
    UNCLASSIFIED_COLOUR,
    ZONE_COLOURS,
    class_colour_table,
)

#: Resolution of every figure (dots per inch): figure sizes are given in pixels / DPI.
DPI = 100

#: Colour of class ``unreliable`` vertices in the HU pictures: their value is the plain reading at the bounded
#: depth, not the bone at the surface, so it is not drawn on the HU scale. Pink, which the HU colour map
#: (viridis) never takes; the class pictures keep :data:`~ImplantBoneContactLib.display.UNRELIABLE_COLOUR`,
#: a teal the HU scale takes near 900 HU.
UNRELIABLE_HU_COLOUR = "#e377c2"

#: Legend text of :data:`UNRELIABLE_HU_COLOUR`.
UNRELIABLE_HU_LABEL = "unreliable: bone not told\nfrom the metal's bloom"


def unreliable_vertices(vertices) -> np.ndarray:
    """True per vertex of class ``unreliable`` (post-operative: bone not told from the metal's bloom); all False
    when the table has no ``contact_class`` column."""
    if "contact_class" not in vertices.columns:
        return np.zeros(len(vertices), dtype=bool)
    return vertices["contact_class"].to_numpy() == UNRELIABLE

SHORT_REGION = {
    1: "lat prox", 2: "lat mid", 3: "lat dist", 4: "tip", 5: "med dist", 6: "med mid", 7: "calcar",
    8: "ant prox", 9: "ant mid", 10: "ant dist", 11: "tip", 12: "post dist", 13: "post mid", 14: "post prox",
}


def rgb(colour: str) -> np.ndarray:
    """RGB (0..1) of a colour name or hex string."""
    return np.asarray(to_rgb(colour), dtype=float)


def to_hex(values) -> str:
    r, g, b = (int(round(255 * float(c))) for c in values[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def hu_to_rgb(hu: np.ndarray) -> np.ndarray:
    """Colour of HU values on the fixed scale (:data:`HU_DISPLAY_RANGE`, :data:`HU_COLORMAP`).

    Args:
        hu: HU values, any shape; NaN gives :data:`NOT_SAMPLED_COLOUR`.

    Returns:
        RGB in [0, 1], shape ``hu.shape + (3,)``.
    """
    hu = np.asarray(hu, dtype=float)
    cmap = colormaps[HU_COLORMAP]
    lut = cmap(np.arange(cmap.N))[:, :3]
    lo, hi = HU_DISPLAY_RANGE
    finite = np.isfinite(hu)
    out = np.empty(hu.shape + (3,))
    # The colormap's own lookup: x in [0, 1] takes entry floor(x N), the last one at 1.
    idx = np.clip(np.floor((hu[finite] - lo) / (hi - lo) * cmap.N), 0, cmap.N - 1).astype(np.int64)
    out[finite] = lut[idx]
    out[~finite] = rgb(NOT_SAMPLED_COLOUR)
    return out


def hu_norm() -> Normalize:
    return Normalize(*HU_DISPLAY_RANGE)


def class_colours(result) -> dict[str, str]:
    """Colour (hex) of each contact class of a result, plus ``metal``, ``not_sampled`` and ``unclassified``.

    From the table :data:`~ImplantBoneContactLib.display.CLASS_COLOURS` by
    class name; classes missing from it fall back on a palette by HU order
    (see :func:`~ImplantBoneContactLib.display.class_colour_table`).
    """
    bands = parse_classes(result.parameters.classes)
    return class_colour_table([b.name for b in bands], extra=list(result.class_names))


def vertex_colours(result, colouring: str, grey_above_cut: bool = True) -> np.ndarray:
    """RGB colour (0..1) of every vertex for ``colouring`` ``"hu"``, ``"zone"`` or ``"class"``.

    Zone-0 vertices (above the resection plane) are :data:`ABOVE_CUT_COLOUR`
    in every colouring unless ``grey_above_cut`` is False (the pictures grey
    out what lies above the plane themselves, exactly, rather than by whole
    vertex patches); vertices without HU are :data:`NOT_SAMPLED_COLOUR` in the
    HU and class colourings, class ``unreliable`` vertices :data:`UNRELIABLE_HU_COLOUR`
    in the HU colouring.
    """
    v = result.vertices
    zone = v["gruen_zone"].to_numpy()
    if colouring == "hu":
        out = hu_to_rgb(v["hu"].to_numpy(dtype=float))
        out[unreliable_vertices(v)] = rgb(UNRELIABLE_HU_COLOUR)
    elif colouring == "zone":
        out = zone_rgb(zone)
    elif colouring == "class":
        colours = class_colours(result)
        cls = v["contact_class"].to_numpy()
        out = np.tile(rgb(UNCLASSIFIED_COLOUR), (len(v), 1))
        for name, c in colours.items():
            out[cls == name] = rgb(c)
    else:
        raise ValueError(f"colouring must be 'hu', 'zone' or 'class', got {colouring!r}")
    if grey_above_cut:
        out[zone == 0] = rgb(ABOVE_CUT_COLOUR)
    return out


def zone_rgb(zone: np.ndarray) -> np.ndarray:
    """RGB of Gruen zone numbers (0 and unknown: :data:`ABOVE_CUT_COLOUR`)."""
    lut = np.tile(rgb(ABOVE_CUT_COLOUR), (16, 1))
    for z, c in ZONE_COLOURS.items():
        lut[z] = rgb(c)
    zone = np.asarray(zone)
    return lut[np.clip(zone, 0, 15)]


def class_label(result, name: str) -> str:
    """Legend text of a class: its name and HU limits."""
    if name == METAL:
        return f"metal (\u2265 {result.parameters.metal_hu:g} HU)"
    if name == NOT_SAMPLED:
        return "outside the CT (no HU)"
    if name == UNCLASSIFIED:
        return "unclassified"
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


def model_name(result) -> str:
    model = result.inputs.get("model", {}) if isinstance(result.inputs, dict) else {}
    return str(model.get("name", "implant model"))


def ct_name(result) -> str:
    ct = result.inputs.get("ct", {}) if isinstance(result.inputs, dict) else {}
    return str(ct.get("name", "CT in memory"))


def sampling_words(params, postop: dict | None = None) -> str:
    """How the HU were sampled, in words: method, offset, profile or the metal-aware reading, metal level.

    ``postop`` is the result's post-operative record (``AnalysisResult.postop``): when the bone was read past
    the metal's bloom, that is what the words say.
    """
    words = [params.sampling]
    if postop and postop.get("metal_aware_sampling"):
        words.append("post-operative CT: bone read past the metal's bloom")
    elif params.profile is not None:
        words.append(f"profile {params.profile} mm ({params.profile_aggregate})")
    elif float(params.offset_mm) != 0.0:
        words.append(f"offset {float(params.offset_mm):g} mm")
    else:
        words.append("at the surface")
    if params.metal_hu is not None:
        words.append(f"metal \u2265 {params.metal_hu:g} HU")
    return ", ".join(words)


def run_description(result) -> str:
    """One line naming what was measured: model, CT, side, sampling (for every picture's subtitle)."""
    return (f"{model_name(result)} in {ct_name(result)}; {result.frame.side} femur; "
            f"{sampling_words(result.parameters, getattr(result, 'postop', None))}")
