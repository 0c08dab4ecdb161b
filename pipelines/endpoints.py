"""Where the stack lives for the operator commands (``mds status``, ``mds tail``): the local
emulators, or Google Cloud with ``--cloud``."""
from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager

from pipelines.emulators import pubsub_env
from pipelines.local_names import DEFAULT_DATASET, LOCAL_PROJECT

DEFAULT_PUBSUB_HOST = "127.0.0.1:8085"
DEFAULT_BIGQUERY_ENDPOINT = "http://127.0.0.1:9050"


@dataclass
class Endpoints:
    """Where the stack lives: emulators (local) or Google Cloud (``cloud=True``)."""

    project: str
    dataset: str
    pubsub_host: str | None
    bigquery_endpoint: str | None
    cloud: bool
    region: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Endpoints":
        if args.cloud:
            if not args.project:
                raise SystemExit("--cloud needs --project")
            return cls(args.project, args.dataset, None, None, True, args.region)
        return cls(args.project or os.environ.get("MDS_PROJECT", LOCAL_PROJECT), args.dataset,
                   args.pubsub_host or os.environ.get("PUBSUB_EMULATOR_HOST", DEFAULT_PUBSUB_HOST),
                   args.bigquery_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST",
                                                            DEFAULT_BIGQUERY_ENDPOINT),
                   False, args.region)

    def pubsub_clients(self) -> ContextManager[None]:
        """Pub/Sub clients created inside this block reach the emulator (or Google Cloud)."""
        return pubsub_env(self.pubsub_host) if self.pubsub_host else contextlib.nullcontext()


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default=None,
                        help=f"Google Cloud project (default: $MDS_PROJECT or {LOCAL_PROJECT}).")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="BigQuery dataset name.")
    parser.add_argument("--pubsub-host", default=None,
                        help=f"Pub/Sub emulator host:port (default $PUBSUB_EMULATOR_HOST or {DEFAULT_PUBSUB_HOST}).")
    parser.add_argument("--bigquery-endpoint", default=None,
                        help=f"BigQuery emulator URL (default $BIGQUERY_EMULATOR_HOST or {DEFAULT_BIGQUERY_ENDPOINT}).")
    parser.add_argument("--cloud", action="store_true",
                        help="Use Google Cloud (application default credentials) instead of emulators.")
    parser.add_argument("--region", default="us-central1", help="Dataflow region (with --cloud).")
