"""The ``mds`` command: one argparse tree, one module per sub-command.

A command module offers ``add_arguments(parser)`` and ``run_command(args, parser) -> int``; it may
add ``check_arguments(args, parser)`` (checks across flags) and ``PASSES_BEAM_OPTIONS = True``
when the arguments it does not know are pipeline options (``--runner=...``, snake_case as the
Flex Template parameters), handed over as ``args.beam_args``. The CLI's own flags are kebab-case.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import TextIO

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("pipelines.replay", "Replay trade files through the pipeline on the DirectRunner."),
    "backfill": ("pipelines.backfill", "Days × symbols (Tardis datasets or files) through the bounded pipeline."),
    "run": ("pipelines.streaming_pipeline", "Run the streaming pipeline (Pub/Sub in, BigQuery out)."),
    "demo": ("pipelines.demo", "Whole chain locally: emulators, ingest, streaming pipeline, views."),
    "ingest": ("ingest.cli", "Publish trades to Pub/Sub: Tardis replay, live WebSocket, or a file."),
    "stack": ("pipelines.local_stack", "Start/stop the local Pub/Sub and BigQuery emulators."),
    "status": ("pipelines.status", "Job/emulator health, row counts and lag."),
    "tail": ("pipelines.tail", "Follow the candles output topic."),
    "chart": ("pipelines.chart", "Candlestick chart from BigQuery or a replay output."),
}


def _add_command(commands: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = commands.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(command_module=module, command_parser=parser)
    return parser


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole tree, or the root with just the command ``only`` (no imports of the others)."""
    parser = argparse.ArgumentParser(prog="mds", description="Market-data streaming: ingest, "
                                     "pipeline, local stack and operator commands.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ([only] if only in COMMANDS else COMMANDS):
        _add_command(commands, name)
    return parser


def parse_command(name: str, argv: list[str]) -> argparse.Namespace:
    """``mds NAME ARGV`` parsed as the tree does; exits 2 with the usage on bad arguments."""
    return _parse(build_parser(name), [name, *argv])


def _parse(root: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, extra = root.parse_known_args(argv)
    module: ModuleType = args.command_module
    parser: argparse.ArgumentParser = args.command_parser
    extra = [a for a in extra if a != "--"]
    if extra and not getattr(module, "PASSES_BEAM_OPTIONS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    check = getattr(module, "check_arguments", None)
    if check is not None:
        check(args, parser)
    return args


def main(argv: list[str] | None = None, console: TextIO | None = None) -> int:
    """Runs one command; ``console`` is where the operator commands print (default stdout)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the command asked for: importing every command module costs seconds.
    name = next((a for a in argv if not a.startswith("-")), None)
    args = _parse(build_parser(name if name in COMMANDS else None), argv)
    args.console = console or sys.stdout
    return int(args.command_module.run_command(args, args.command_parser) or 0)


if __name__ == "__main__":
    sys.exit(main())
