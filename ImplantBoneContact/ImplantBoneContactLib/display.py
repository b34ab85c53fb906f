"""Display settings shared by the pictures and the Slicer heat map (no dependencies).

One HU colour range for every view of a result, so that a colour means the same HU
in Slicer's 3D view, on its colour legend and in the saved pictures.
"""

from __future__ import annotations

#: Fixed HU range of the heat maps (HU): -200 keeps fat and soft tissue (about -100..60 HU)
#: apart from air at the bottom; 2000 is above adult cortical bone at the top, so dense cortex
#: is not washed out. Air and metal clamp to the end colours. Fixed, not per scan, so that two
#: stems or two patients get comparable colours.
HU_DISPLAY_RANGE: tuple[float, float] = (-200.0, 2000.0)

__all__ = ["HU_DISPLAY_RANGE"]
