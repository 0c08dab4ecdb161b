"""Point Beam's BigQuery sink at the local BigQuery stand-in (bqemulator). Local runs ONLY.

Beam's ``WriteToBigQuery`` builds two clients (``apache_beam/io/gcp/bigquery_tools.py``,
``BigQueryWrapper.__init__``): a ``google-cloud-bigquery`` ``Client`` that does the streaming
inserts, and an apitools ``BigqueryV2`` with a fixed ``https://bigquery.googleapis.com`` base URL.
Both ask ``google.auth.default`` for credentials, which offline ends in an OAuth prompt. So a local
run needs three process-wide settings, applied by ``enable_local_bigquery``:

1. ``google.auth.default`` returns anonymous credentials and the local project;
2. ``BIGQUERY_EMULATOR_HOST`` sends the ``google-cloud-bigquery`` client to the emulator;
3. the apitools client's ``BASE_URL`` points at the emulator, so no call can reach Google.

Beam caches the credentials it resolved first (``apache_beam.internal.gcp.auth._Credentials``);
a cached "none found" would send apitools to its interactive OAuth flow, so the cache is reset.

They act only inside this process, i.e. on DirectRunner workers running in-process (the default
``in_memory`` mode; not ``multi_processing``). The Dataflow path must never call this: Dataflow
workers use their service account and the real endpoint.
"""
from __future__ import annotations

import logging
import os
from typing import Any

_LOGGER = logging.getLogger(__name__)


def enable_local_bigquery(endpoint: str, project: str) -> None:
    """Make every BigQuery client of this process (Beam's sink included) use ``endpoint``.

    ``endpoint`` is the emulator's base URL, e.g. ``http://127.0.0.1:9050``. Idempotent.
    """
    import google.auth
    from apache_beam.internal.gcp import auth as beam_auth
    from apache_beam.io.gcp.internal.clients import bigquery as apitools_bigquery
    from google.auth.credentials import AnonymousCredentials

    endpoint = endpoint.rstrip("/")

    def anonymous_default(*_args: Any, **_kwargs: Any) -> tuple[AnonymousCredentials, str]:
        return AnonymousCredentials(), project

    google.auth.default = anonymous_default
    os.environ["BIGQUERY_EMULATOR_HOST"] = endpoint
    apitools_bigquery.BigqueryV2.BASE_URL = f"{endpoint}/bigquery/v2/"
    with beam_auth._Credentials._credentials_lock:
        beam_auth._Credentials._credentials_init = False
    _LOGGER.info("local mode: BigQuery clients of this process use %s (project %s)", endpoint, project)
