"""What a boundary refiner did: the share of the predicted patches' pixels it gave another class than the
decoded token mask (upsampled nearest), so that a report that says "refined" also says how much.

A refiner that changes (almost) nothing has not learnt yet (too few steps) or has nothing to do; below
:data:`IDLE_SHARE` the reports warn. Counts add up over batches and ranks like every meter's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rleseg.metrics.meter import Meter

# Below this share of the patch pixels changed, a refiner "changed (almost) nothing": 1 pixel in 1,000. A
# trained refiner changes far more (on MNI152 about 2.7% of the pixels: 6% of a band that covers 45%).
IDLE_SHARE = 0.001


class RefinementMeter(Meter):
    """Pixels the refiner changed and pixels it could have changed (every predicted patch pixel)."""

    def __init__(self) -> None:
        self.reset()

    def _fields(self) -> dict[str, tuple[tuple[int, ...], type]]:
        return {"changed": ((), np.int64), "pixels": ((), np.int64)}

    def update(self, changed: np.ndarray | int, pixels: int) -> None:
        """``changed``: pixels changed per patch ((B,) or their sum); ``pixels``: the B patches' pixels."""
        self._add("changed", int(np.sum(changed)))
        self._add("pixels", int(pixels))

    def compute(self) -> dict[str, Any] | None:
        """``{"changed_pixels", "patch_pixels", "changed_share"}``, or None when nothing was refined."""
        changed, pixels = int(self._state["changed"]), int(self._state["pixels"])
        if pixels == 0:
            return None
        return {"changed_pixels": changed, "patch_pixels": pixels, "changed_share": changed / pixels}
