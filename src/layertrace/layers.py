"""The layer-index convention, and the one selector used by the CLI, configs and code.

A transformer with L blocks has L + 1 traced layers:

* ``0``      the embedding output (input of block 1),
* ``l``      the output of block ``l`` for ``l`` in ``1..L``,
* ``L``      the last block, the one the model's own head reads.

:func:`resolve_layers` turns a user's spec into a sorted list of indices in ``0..L``.
"""

from __future__ import annotations

from typing import Sequence, Union

from .errors import LayertraceError

LayerSpec = Union[None, int, str, Sequence[int]]


def _check(index: int, n_layers: int, spec: object) -> int:
    """Map a possibly negative index into ``0..n_layers`` or raise a one-line error."""
    if not -(n_layers + 1) <= index <= n_layers:
        raise LayertraceError(
            f"layer {index} in spec {spec!r} is out of range: valid layers are 0..{n_layers} "
            f"(or -{n_layers + 1}..-1 from the end)"
        )
    return index % (n_layers + 1)


def resolve_layers(n_layers: int, spec: LayerSpec = None) -> list[int]:
    """Resolve a layer selector into sorted, unique layer indices in ``0..n_layers``.

    Args:
        n_layers: L, the number of blocks (layers 0..L exist).
        spec: ``None`` -> all layers ``0..L``; an ``int`` -> that one layer (negative counts from the
            end, ``-1`` is L); a list/tuple of ints (negatives allowed); a string: a Python slice over
            ``0..L`` such as ``"0::2"``, ``"1:"``, ``"-3:"``, a comma list ``"1,4,-1"``, a single
            index ``"6"``, or ``"all"``.

    Returns:
        Sorted list of unique ints in ``[0, n_layers]``.

    Raises:
        LayertraceError: an index out of range, an empty selection, or an unparsable string.
    """
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 0:
        raise LayertraceError(f"n_layers must be a non-negative int, got {n_layers!r}")
    all_layers = list(range(n_layers + 1))
    if spec is None:
        return all_layers
    if isinstance(spec, bool):
        raise LayertraceError(f"layer spec {spec!r} is a bool; give an int, a list or a slice like '0::2'")
    if isinstance(spec, int):
        return [_check(spec, n_layers, spec)]
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "all", ":"):
            return all_layers
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise LayertraceError(f"layer spec {spec!r} is not a slice: use start:stop:step, e.g. '0::2'")
            try:
                nums = [int(p) if p.strip() else None for p in parts]
            except ValueError:
                raise LayertraceError(f"layer spec {spec!r} is not a slice of ints: use e.g. '0::2' or '1:-1'") from None
            if len(nums) == 3 and nums[2] == 0:
                raise LayertraceError(f"layer spec {spec!r} has step 0: use a positive step such as '0::2'")
            chosen = all_layers[slice(*nums)]
        else:
            try:
                items = [int(p) for p in text.split(",") if p.strip()]
            except ValueError:
                raise LayertraceError(
                    f"layer spec {spec!r} is not understood: use an int, a comma list '1,4,-1' or a slice '0::2'"
                ) from None
            chosen = [_check(i, n_layers, spec) for i in items]
    else:
        try:
            items = [int(i) for i in spec]
        except (TypeError, ValueError):
            raise LayertraceError(f"layer spec {spec!r} is not a list of ints") from None
        chosen = [_check(i, n_layers, spec) for i in items]
    result = sorted(set(chosen))
    if not result:
        raise LayertraceError(f"layer spec {spec!r} selects no layer out of 0..{n_layers}")
    return result
