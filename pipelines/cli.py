"""The ``mds`` command: one entry point, thin; each sub-command lives in its own module."""
from __future__ import annotations

import importlib
import sys

# sub-command -> module whose main(argv) -> int runs it
COMMANDS = {
    "replay": ("pipelines.replay", "Replay trade files through the pipeline on the DirectRunner."),
    "backfill": ("pipelines.backfill", "Days × symbols (Tardis datasets or files) through the bounded pipeline."),
    "run": ("pipelines.streaming_pipeline", "Run the streaming pipeline (Pub/Sub in, BigQuery out)."),
    "demo": ("pipelines.demo", "Whole chain locally: emulators, ingest, streaming pipeline, views."),
    "ingest": ("ingest.cli", "Publish trades to Pub/Sub: Tardis replay, live WebSocket, or a file."),
    "stack": ("pipelines.local_stack", "Start/stop the local Pub/Sub and BigQuery emulators."),
    "status": ("pipelines.operate", "Job/emulator health, row counts and lag."),
    "tail": ("pipelines.operate", "Follow the candles output topic."),
    "chart": ("pipelines.operate", "Candlestick chart from BigQuery or a replay output."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: mds COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<8} {help_text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command][0])
    if module.__name__ == "pipelines.operate":
        rest = [command] + rest
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
