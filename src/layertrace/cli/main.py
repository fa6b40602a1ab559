"""``layertrace`` command line: one subcommand per pipeline stage, plus ``demo``.

Each subcommand lives in its own module (``layertrace.cli.<name>``; the demo's orchestration in
``layertrace.demo.suite``, which sits above every stage) exposing

    HELP: str                                  one line for the overview
    add_arguments(parser) -> None              its options (usually config.add_config_args)
    run(args) -> int                           the work; returns the exit code

Only the chosen subcommand's module is imported, so ``layertrace env`` stays fast. A
:class:`~layertrace.errors.LayertraceError` or a usage error is printed as one line without a
traceback, exit code 2; any other exception (a bug) as one line asking for a bug report, exit code 1.
``--debug`` (any subcommand) or ``LAYERTRACE_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Sequence

from ..errors import LayertraceError, did_you_mean

# subcommand -> (module path, one-line help). Order is the pipeline order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("layertrace.demo.suite", "train, analyze and early-exit the paper's comparisons on the embedded data; write the report"),
    "train": ("layertrace.cli.train", "train a model: standard, aligned, aligned-alternating, multi-head or cos-reg"),
    "analyze": ("layertrace.cli.analyze", "one pass over data: COS/CKA similarity, layer-wise readout, saturation, theory checks"),
    "probe": ("layertrace.cli.probe", "linear probe per layer on frozen features of any model and dataset (task transfer)"),
    "analyze-clip": ("layertrace.cli.clip", "CLIP within- and cross-modal COS per layer (paired images and class-name captions)"),
    "exit": ("layertrace.cli.exit_cmd", "early-exit sweep (simulated and measured) with a shared classifier or per-layer heads"),
    "report": ("layertrace.cli.report", "build report.html + summary.md from run folders"),
    "export": ("layertrace.cli.export", "export the first k blocks plus the shared head as a standalone HF model"),
    "generate": ("layertrace.cli.generate", "decode text from a causal LM: self-speculative (lossless) or full decoding"),
    "params": ("layertrace.cli.params", "parameter counts: one shared head vs one head per layer (the paper's Table 1)"),
    "env": ("layertrace.cli.env", "versions, device, threads, and which embedded datasets / models are installed"),
}


def _overview() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: layertrace <command> [--config FILE.yaml] [--key value ...] [--out DIR]",
        "",
        "Trace how a transformer's representation progresses layer by layer, train aligned models,",
        "and serve them with single-classifier early exit.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run 'layertrace <command> --help' for a command's options."]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line :class:`LayertraceError` s (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise LayertraceError(f"{message}; see {self.prog} --help")


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The argparse parser of subcommand ``name`` and its module."""
    module_name, text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"layertrace {name}", description=getattr(module, "HELP", text))
    module.add_arguments(parser)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, print the full traceback (for bug reports); also LAYERTRACE_DEBUG=1")
    return parser, module


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("LAYERTRACE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process; returns the exit code (0 ok, 2 user error, 1 failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"layertrace {__version__}")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"layertrace: error: unknown command {name!r}{did_you_mean(name, SUBCOMMANDS)}; "
              f"commands: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    debug = _debug(argv[1:])
    try:
        parser, module = build_parser(name)
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit as exc:  # argparse: --help (0)
            return int(exc.code or 0)
        return int(module.run(args) or 0)
    except LayertraceError as exc:
        if debug:
            traceback.print_exc()
        print(f"layertrace {name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layertrace {name}: interrupted; finished work is saved and a re-run resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line by default, the traceback with --debug
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"layertrace {name}: internal error ({type(exc).__name__}: {first}); re-run with --debug "
              f"(or LAYERTRACE_DEBUG=1) and report the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
