"""Contact classes: named Hounsfield-unit bands.

A class scheme is an ordered list of half-open bands ``[low, high)`` in HU that
do not overlap. A sample at or above the metal level is class ``metal``
whatever the bands say (the model seems to sit in a post-operative CT). A
sample that falls in no band is ``unclassified``; one that was not sampled
(outside the CT) is ``not_sampled``.

Presets (``--classes NAME``):

``default``
    ``no_bone < 150 <= cancellous < 700 <= cortical``. 150 HU is the lower
    end of the cancellous range used by the phantom and by CT bone-density
    work (cancellous bone of the proximal femur is roughly 150-400 HU;
    marrow and soft tissue stay below 100 HU); 700 HU sits between the
    densest cancellous bone and cortical bone (> 1000 HU in adults).
``pedicle-screw``
    The grading of the 3D Slicer extension Pedicle Screw Simulator:
    ``low_density < 130 <= medium_density < 250 <= high_density``.
``fixation``
    Four bands for uncemented-stem fixation: ``air < -200 <= loosening < 100
    <= micromotion < 400 <= stable < 1000 <= cortical``: below -200 HU is gas,
    -200..100 HU fibrous/soft tissue at a loose interface, 100..400 HU
    sparse bone that allows micromotion, 400..1000 HU dense bone giving stable
    fixation, 1000 HU and above cortex.

Custom: ``"name:low:high,name:low:high"`` (``-inf``/``inf`` allowed) or a JSON
file ``[{"name": ..., "low_hu": ..., "high_hu": ...}, ...]``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

METAL = "metal"
NOT_SAMPLED = "not_sampled"
UNCLASSIFIED = "unclassified"
#: ``contact_class`` of a vertex above the resection plane (Gruen zone 0): not analysed, so no class.
ABOVE_RESECTION = "above_resection"
#: A point of a post-operative CT whose bone cannot be told from the metal's bloom (see :mod:`.postop`).
UNRELIABLE = "unreliable"
DEFAULT_METAL_HU = 2500.0


@dataclass(frozen=True)
class ContactBand:
    """One class: HU in ``[low_hu, high_hu)``."""

    name: str
    low_hu: float
    high_hu: float


PRESETS: dict[str, tuple[ContactBand, ...]] = {
    "default": (
        ContactBand("no_bone", -math.inf, 150.0),
        ContactBand("cancellous", 150.0, 700.0),
        ContactBand("cortical", 700.0, math.inf),
    ),
    "pedicle-screw": (
        ContactBand("low_density", -math.inf, 130.0),
        ContactBand("medium_density", 130.0, 250.0),
        ContactBand("high_density", 250.0, math.inf),
    ),
    "fixation": (
        ContactBand("air", -math.inf, -200.0),
        ContactBand("loosening", -200.0, 100.0),
        ContactBand("micromotion", 100.0, 400.0),
        ContactBand("stable", 400.0, 1000.0),
        ContactBand("cortical", 1000.0, math.inf),
    ),
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def validate_bands(bands: list[ContactBand] | tuple[ContactBand, ...]) -> tuple[ContactBand, ...]:
    """Check names and order; return the bands sorted by their low end.

    Raises:
        InputError: no band, a bad or repeated name, a reserved name, an empty
            band (low >= high), NaN limits, or two bands that overlap.
    """
    bands = tuple(bands)
    if not bands:
        raise InputError("at least one contact class is needed")
    names = [b.name for b in bands]
    for b in bands:
        if not _NAME.match(b.name):
            raise InputError(f"class name {b.name!r} must start with a letter and hold only letters, digits and _")
        if b.name in (METAL, NOT_SAMPLED, UNCLASSIFIED, ABOVE_RESECTION, UNRELIABLE):
            raise InputError(f"class name {b.name!r} is reserved")
        if math.isnan(b.low_hu) or math.isnan(b.high_hu):
            raise InputError(f"class {b.name!r} has a NaN limit")
        if not b.low_hu < b.high_hu:
            raise InputError(f"class {b.name!r} is empty or reversed: low {b.low_hu} HU is not below high {b.high_hu} HU")
    if len(set(names)) != len(names):
        raise InputError(f"class names repeat: {names}")
    ordered = tuple(sorted(bands, key=lambda b: b.low_hu))
    if ordered != bands:
        raise InputError(
            "contact classes must be listed from low to high HU: "
            + ", ".join(f"{b.name} [{b.low_hu}, {b.high_hu})" for b in bands)
        )
    for a, b in zip(ordered[:-1], ordered[1:]):
        if b.low_hu < a.high_hu:
            raise InputError(
                f"contact classes {a.name!r} [{a.low_hu}, {a.high_hu}) and {b.name!r} [{b.low_hu}, {b.high_hu}) overlap"
            )
    return ordered


def parse_classes(spec: str) -> tuple[ContactBand, ...]:
    """Parse a preset name, a JSON file path, or ``name:low:high,...``."""
    spec = spec.strip()
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith(".json") or Path(spec).is_file():
        p = Path(spec)
        if not p.is_file():
            raise InputError(f"class file not found: {p}")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            bands = [ContactBand(str(d["name"]), float(d["low_hu"]), float(d["high_hu"])) for d in data]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"cannot read classes from {p}: expected a JSON list of {{name, low_hu, high_hu}} ({exc})"
            ) from None
        return validate_bands(bands)
    bands = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise InputError(
                f"cannot read class {item!r}: use name:low:high (HU), for example "
                f"'none:-inf:150,cancellous:150:700,cortical:700:inf', or a preset: {', '.join(PRESETS)}"
            )
        try:
            bands.append(ContactBand(parts[0].strip(), float(parts[1]), float(parts[2])))
        except ValueError:
            raise InputError(f"class {item!r}: the limits must be numbers (or -inf, inf)") from None
    return validate_bands(bands)


def class_names(bands: tuple[ContactBand, ...], include_metal: bool = True) -> list[str]:
    """Names in table order: the bands, then metal."""
    names = [b.name for b in bands]
    return names + [METAL] if include_metal else names


def classify_codes(hu: np.ndarray, bands: tuple[ContactBand, ...], metal_hu: float | None = DEFAULT_METAL_HU) -> np.ndarray:
    """Class of each HU value as a small integer: an index into :func:`class_labels`.

    ``0..len(bands)-1`` the bands in order, then ``metal`` (when ``metal_hu`` is
    not ``None``), then ``unclassified``, then ``not_sampled``. Integer codes
    let the statistics count millions of surface samples without string
    comparisons.
    """
    hu = np.asarray(hu, dtype=float)
    labels = class_labels(bands, metal_hu is not None)
    out = np.full(hu.shape, labels.index(UNCLASSIFIED), dtype=np.int8)
    for code, b in enumerate(bands):
        out[(hu >= b.low_hu) & (hu < b.high_hu)] = code
    if metal_hu is not None:
        out[hu >= metal_hu] = labels.index(METAL)
    out[~np.isfinite(hu)] = labels.index(NOT_SAMPLED)
    return out


def class_labels(bands: tuple[ContactBand, ...], include_metal: bool = True) -> list[str]:
    """Every label :func:`classify` can give, in code order: the classes, ``unclassified``, ``not_sampled``."""
    return class_names(bands, include_metal) + [UNCLASSIFIED, NOT_SAMPLED]


def classify(hu: np.ndarray, bands: tuple[ContactBand, ...], metal_hu: float | None = DEFAULT_METAL_HU) -> np.ndarray:
    """Class name for each HU value (object array of str).

    NaN gives ``not_sampled``; a value in no band ``unclassified``; a value at
    or above ``metal_hu`` ``metal`` (``None`` turns the metal class off).
    """
    labels = np.array(class_labels(bands, metal_hu is not None), dtype=object)
    return labels[classify_codes(hu, bands, metal_hu)]


def band_gaps(bands: tuple[ContactBand, ...], metal_hu: float | None = DEFAULT_METAL_HU) -> list[tuple[float, float]]:
    """HU ranges ``[low, high)`` no class covers (below the metal level, which covers everything above it).

    A finite sample in a gap is ``unclassified``.
    """
    top = math.inf if metal_hu is None else float(metal_hu)
    gaps = []
    edge = -math.inf
    for b in sorted(bands, key=lambda b: b.low_hu):
        if b.low_hu > edge and edge < top:
            gaps.append((edge, min(b.low_hu, top)))
        edge = max(edge, b.high_hu)
    if edge < top:
        gaps.append((edge, top))
    return gaps


def bands_to_json(bands: tuple[ContactBand, ...]) -> list[dict]:
    """JSON-ready description (infinities as the strings ``-inf``/``inf``)."""

    def f(x: float):
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")

    return [{"name": b.name, "low_hu": f(b.low_hu), "high_hu": f(b.high_hu)} for b in bands]
