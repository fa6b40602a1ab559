"""User-facing errors.

A :class:`LayertraceError` is a mistake a person can act on (a bad path, a wrong shape, an unknown
model family). Its message is one line that names the input and the fix; the CLI prints it without a
traceback and exits with code 2. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class LayertraceError(ValueError):
    """A one-line, actionable error about the user's input."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest of ``choices`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def loader_option(name: str, example: str) -> str:
    """How a user sets dataset-loader option ``name``: the same spelling in every command
    (``--data.loader_kwargs '{name: example}'``) and in the Python API (``name=example``)."""
    return f"--data.loader_kwargs '{{{name}: {example}}}' (Python: {name}={example})"
