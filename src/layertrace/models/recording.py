"""Block recording for the discovery adapter (:mod:`layertrace.models.hf_auto`): a recorder in place
of every block stores the arguments the model's own forward passes it; the placeholders stand for the
hidden state, per-sample tensors and shared values in a recorded call."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from torch import nn

from ..errors import LayertraceError


class _Stop(Exception):
    """Raised by the last block's recorder: the embedding step is done, stop the forward."""


class _CacheWritten(Exception):
    """Raised by :meth:`HFAutoAdapter.fill_cache`'s wrapped ``cache.update``: the keys / values are in."""


class _Hidden:
    """Placeholder of the hidden-state argument in a recorded call."""


class _Ref:
    """Placeholder of a per-sample tensor (``State.per_sample[key]``) in a recorded call.

    ``flat`` marks a tensor the model passes with batch and heads flattened into its first dim
    (BLOOM's ALiBi (B * H, 1, T)): it is kept as (B, H, ...) so that ``State.select`` slices it.
    """

    __slots__ = ("key", "flat")

    def __init__(self, key: str, flat: bool = False):
        self.key = key
        self.flat = flat


_HIDDEN = _Hidden()


class _Shared:
    """Placeholder of a value the state carries in ``State.shared[key]`` (the decode path's KV cache)."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key


@dataclass
class _Call:
    """One recorded block call: the module and its arguments with placeholders."""

    module: nn.Module
    args: tuple
    kwargs: dict


class _Recorder(nn.Module):
    """Stands in for one block while recording: stores the call, returns the hidden input unchanged.

    Attribute reads fall through to the real block (models read ``layer.attention_type`` etc.).
    """

    def __init__(self, block: nn.Module, calls: list, n_calls: int | None, arity: int):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_calls", calls)
        object.__setattr__(self, "_n_calls", n_calls)
        object.__setattr__(self, "_arity", arity)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.append((self._block, args, kwargs))
        if self._n_calls is not None and len(self._calls) >= self._n_calls:
            raise _Stop
        hidden = args[0] if args else _hidden_kwarg(kwargs)
        # the same structure as the real block's output (DeBERTa unpacks ``hidden, att = layer(...)``)
        return (hidden,) + (None,) * (self._arity - 1) if self._arity else hidden


# id(block list) -> its recorders, reused by every recording of that list (an embed() records once per
# batch; building 12 recorders and swapping them in through nn.Module.__setattr__ cost ~0.2-0.5 ms a batch)
_RECORDERS: dict[int, list[_Recorder]] = {}


@contextmanager
def recording_blocks(blocks: nn.ModuleList, n_calls: int | None, arity: int = 0) -> Iterator[list]:
    """Put a :class:`_Recorder` in place of every block of ``blocks`` while the context is open.

    Yields the list of recorded ``(block, args, kwargs)`` calls, in call order; after ``n_calls``
    calls the recorder raises :class:`_Stop`. The blocks are put back in ``finally``. Hooks on the
    real blocks (the user's, Accelerate's) do not fire while recording.
    """
    calls: list = []
    slots = blocks._modules  # the ModuleList's own storage: a plain dict write, no __setattr__ checks
    keys = list(slots)
    originals = [slots[k] for k in keys]
    recorders = _RECORDERS.get(id(blocks))
    if recorders is None or len(recorders) != len(originals) or any(
            object.__getattribute__(r, "_block") is not m for r, m in zip(recorders, originals)):
        if len(_RECORDERS) > 64:
            _RECORDERS.clear()
        recorders = _RECORDERS[id(blocks)] = [_Recorder(m, calls, n_calls, arity) for m in originals]
    for r in recorders:
        object.__setattr__(r, "_calls", calls)
        object.__setattr__(r, "_n_calls", n_calls)
        object.__setattr__(r, "_arity", arity)
    try:
        for k, r in zip(keys, recorders):
            slots[k] = r
        yield calls
    finally:
        for k, m in zip(keys, originals):
            slots[k] = m


_MISSING = object()
_HIDDEN_KWARGS = ("hidden_states", "hidden_state", "hidden", "x")


def _hidden_kwarg(kwargs: Mapping[str, Any]) -> Any:
    for name in _HIDDEN_KWARGS:
        if name in kwargs:
            return kwargs[name]
    raise LayertraceError(f"a block was called without a hidden-state argument (kwargs {sorted(kwargs)})")
