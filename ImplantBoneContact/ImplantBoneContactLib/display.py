"""Display constants shared by every picture and by the Slicer module: one HU range, one colour per class.

Plain Python (no matplotlib, no VTK), so the Slicer adapter can import it at
no cost. Colours are hex strings.
"""

from __future__ import annotations

#: HU colour range of every HU picture, CT slice and Slicer colour map (low, high), HU. Values outside
#: are drawn in the end colours. -200 HU keeps fat and soft tissue (about
#: -100..60 HU) apart from air; 2000 HU is above adult cortical bone
#: (about 1000-1900 HU) and below implant metal, so bone is never clipped.
HU_DISPLAY_RANGE: tuple[float, float] = (-200.0, 2000.0)
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

#: Colour of each known contact class, by class name: red for no bone, warm
#: for sparse or unstable bone, blue for dense bone. Add a class here to give
#: it a fixed colour everywhere; unknown names get :data:`CLASS_PALETTES`
#: colours by their place in HU order (see :func:`class_colour_table`).
CLASS_COLOURS: dict[str, str] = {
    # preset "default"
    "no_bone": "#d7301f",
    "cancellous": "#f5a623",
    "cortical": "#2c5fa8",
    # preset "pedicle-screw"
    "low_density": "#d7301f",
    "medium_density": "#f5a623",
    "high_density": "#2c5fa8",
    # preset "fixation"
    "air": "#7a1212",
    "loosening": "#d7301f",
    "micromotion": "#f5a623",
    "stable": "#86bde6",
    # not bands
    "metal": METAL_COLOUR,
    "not_sampled": NOT_SAMPLED_COLOUR,
    "unclassified": UNCLASSIFIED_COLOUR,
    "unreliable": UNRELIABLE_COLOUR,
}

#: Fallback colours of classes missing from :data:`CLASS_COLOURS`, from low to high HU, by number of bands.
CLASS_PALETTES: dict[int, tuple[str, ...]] = {
    1: ("#2c5fa8",),
    2: ("#d7301f", "#2c5fa8"),
    3: ("#d7301f", "#f5a623", "#2c5fa8"),
    4: ("#d7301f", "#f5a623", "#86bde6", "#2c5fa8"),
    5: ("#7a1212", "#d7301f", "#f5a623", "#86bde6", "#2c5fa8"),
}
#: Colour of a class that is neither in :data:`CLASS_COLOURS` nor a band (for example a new label).
FALLBACK_CLASS_COLOUR = "#b15928"


def class_colour_table(band_names: list[str] | tuple[str, ...], extra: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Colour (hex) of each class: the bands (given from low to high HU), then ``extra`` names.

    A name in :data:`CLASS_COLOURS` keeps its colour. When every band is
    known the table is used as it is; when any band is unknown, all bands take
    the :data:`CLASS_PALETTES` colours by HU order (so no two bands share a
    colour). ``metal``, ``not_sampled`` and ``unclassified`` are always
    included; other ``extra`` names not in the table get
    :data:`FALLBACK_CLASS_COLOUR`.
    """
    names = list(band_names)
    out: dict[str, str] = {}
    known = [CLASS_COLOURS.get(n) for n in names]
    if all(known) and len(set(known)) == len(known):
        out.update(zip(names, known))
    else:
        n = len(names)
        palette = list(CLASS_PALETTES.get(n, ()))
        if not palette:
            palette = [_diverging(i / max(n - 1, 1)) for i in range(n)]
        out.update(zip(names, palette))
    for name in ("metal", "not_sampled", "unclassified", *extra):
        out.setdefault(name, CLASS_COLOURS.get(name, FALLBACK_CLASS_COLOUR))
    return out


def _diverging(x: float) -> str:
    """Red (0) through yellow to blue (1), without matplotlib."""
    stops = ((0.0, (215, 48, 31)), (0.5, (245, 166, 35)), (1.0, (44, 95, 168)))
    for (x0, c0), (x1, c1) in zip(stops[:-1], stops[1:]):
        if x <= x1:
            t = (x - x0) / (x1 - x0)
            r, g, b = (int(round(a + t * (b_ - a))) for a, b_ in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#2c5fa8"
