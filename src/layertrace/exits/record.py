"""``ExitRecord``: ``exit.json`` read back as a typed record (what ``layertrace exit`` wrote).

The writer is :meth:`layertrace.exits.run.ExitEvaluation.to_dict`; the points are the sweep's own
:class:`~layertrace.exits.simulate.ExitPoint` s. Keys this record does not declare (the model / data
description, ``oracle``, ``flops``, ``operating_point``, ``config``, and whatever a newer writer adds)
are kept in :attr:`ExitRecord.extra`, so reading and writing a file loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import run_folder
from ..errors import LayertraceError
from ..io import read_json_dict
from .simulate import ExitPoint


@dataclass
class ExitRecord:
    """One early-exit sweep as written to ``exit.json`` (``exit-<policy>.json`` for more policies).

    Attributes:
        policy: the exit policy's name (``confidence``, ``entropy``, ...).
        points: one :class:`ExitPoint` per threshold (accuracy, speed-up, exit histogram, measurements).
        n_layers: L; ``n_samples``: samples of the sweep.
        full_accuracy: accuracy of the full-depth model (``None`` without labels).
        readout: ``shared`` or ``per-layer heads`` (multi-head runs read their own heads).
        exit_layers: the candidate exit layers (1-based; ``layer_accuracy`` runs over them).
        layer_accuracy: accuracy of the readout at each candidate exit layer.
        params: ``{"shared_head", "per_layer_heads", "this_run"?}`` parameter counts.
        timing: the executor's measurements (``{"clock", "batch": {...}, "batch1": {...}}``; ``{}`` if none).
        extra: every other key of the file, as read.
    """

    policy: str
    points: list[ExitPoint]
    n_layers: int | None = None
    n_samples: int | None = None
    full_accuracy: float | None = None
    readout: str = "shared"
    exit_layers: list[int] = field(default_factory=list)
    layer_accuracy: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def per_layer_heads(self) -> bool:
        """Whether the sweep read the model's own per-layer heads (a multi-head run)."""
        return self.readout.startswith("per-layer")

    def layer_accuracy_by_layer(self) -> dict[int, float]:
        """``{exit layer: accuracy}`` of the readout (``exit_layers`` default 1..len)."""
        acc = self.layer_accuracy or []
        layers = self.exit_layers or list(range(1, len(acc) + 1))
        return {int(l): float(a) for l, a in zip(layers, acc) if a is not None and a == a}  # NaN: no value

    def to_dict(self) -> dict[str, Any]:
        """The JSON content: the declared fields, the points' own ``to_dict``, then ``extra``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "points")}
        return {**self.extra, **out, "points": [p.to_dict() for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], policy: str = "confidence") -> "ExitRecord":
        """Rebuild the record from ``exit.json``'s content (``policy``: used when the file names none)."""
        points = data.get("points")
        if not isinstance(points, list):
            raise LayertraceError("no 'points' list")
        name = str(data.get("policy") or policy)
        known = {f.name for f in fields(cls)} - {"extra", "points", "policy"}
        kwargs = {k: data[k] for k in known if data.get(k) is not None}
        return cls(policy=name, points=[ExitPoint.from_dict(p, name) for p in points], **kwargs,
                   extra={k: v for k, v in data.items() if k not in known | {"points", "policy"}})

    @classmethod
    def from_json(cls, path: str | Path) -> "ExitRecord":
        """Read ``exit.json`` (a file, or a folder holding ``exit.json``); a file that is not one is a
        one-line error naming it and the fix (re-run ``layertrace exit``)."""
        path = Path(path)
        if path.is_dir():
            path = path / run_folder.EXIT
        fix = f"re-run `layertrace exit ... --out {path.parent}`"
        data = read_json_dict(path, fix)
        match = re.fullmatch(r"exit-(.+)\.json", path.name)
        try:
            return cls.from_dict(data, policy=match.group(1) if match else "confidence")
        except LayertraceError as exc:  # before ValueError: LayertraceError is one
            raise LayertraceError(f"{path}: {exc}; it is not an exit.json, {fix}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise LayertraceError(f"{path}: exit sweep cannot be read ({exc}); {fix}") from None
