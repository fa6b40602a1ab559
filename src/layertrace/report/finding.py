"""One checked claim of the paper (:class:`Finding`), shared by every report section that checks one
(:mod:`.findings`, :mod:`.layer_weights`): its own module so that those sections never import each
other in a circle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["holds", "does not hold", "not checked"]


@dataclass
class Finding:
    """One claim of the paper checked on these runs.

    Attributes:
        claim: the paper's claim, phrased as the test that is run.
        scope: which runs it was checked on.
        status: ``holds``, ``does not hold`` or ``not checked`` (data missing).
        evidence: the numbers from the JSON that decide it.
        per_run: a check of one run on its own (shown in the per-run matrix) rather than a comparison.
        short: the deciding number in a few characters, for the per-run matrix.
    """

    claim: str
    scope: str
    status: Status
    evidence: str
    per_run: bool = False
    short: str = ""


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals: 0.1234 -> '12.34%'."""
    return f"{100 * x:.2f}%"
