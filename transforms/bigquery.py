"""BigQuery tables and views as code (SPEC §6): the clients, the dataset's tables from
``transforms.schemas``, and the views, whose SQL lives in ``transforms/views/*.sql``.

Every step is idempotent, so ``mds stack up``, the demo, a launch and the deploy script may all
run it. The writers are ``transforms.bigquery_sink``.
"""
from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from transforms import schemas

# Legacy streaming inserts: $0.01 per 200 MB (MB = 2^20 bytes), each row billed as >= 1 KB
# (https://cloud.google.com/bigquery/pricing, "Streaming Inserts").
STREAMING_INSERT_USD_PER_200_MIB = 0.01
STREAMING_INSERT_MIN_ROW_BYTES = 1024

# Storage Write API: $0.025 per GiB ingested, the first 2 TiB per month free
# (https://cloud.google.com/bigquery/pricing, "Data ingestion pricing"; docs/cost-model.md).
STORAGE_WRITE_USD_PER_GIB = 0.025

VIEWS_DIR = Path(__file__).resolve().parent / "views"
# In creation order: a view is created after the views it reads.
VIEW_NAMES = ("ticks_unique", "candles_unique", "candles_latest", "candles_current",
              "latency_by_minute", "volume_by_hour", "rows_cost_by_day", "reconciliation_by_day",
              "completeness_by_day")


def make_client(project: str, endpoint: str | None = None) -> Any:
    """A google-cloud-bigquery Client; with ``endpoint`` (the local emulator) it is anonymous."""
    from google.cloud import bigquery

    if endpoint is None:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


def split_dataset_ref(dataset_ref: str) -> tuple[str, str]:
    """``PROJECT:DATASET`` or ``PROJECT.DATASET`` -> (project, dataset)."""
    project, sep, dataset = dataset_ref.replace(":", ".").partition(".")
    if not sep or not project or not dataset or "." in dataset:
        raise ValueError(f"expected PROJECT:DATASET or PROJECT.DATASET, got {dataset_ref!r}")
    return project, dataset


def ensure_tables(client: Any, dataset_ref: str) -> list[str]:
    """Create the dataset and the ticks/candles/dead_letter tables if missing; give a table an
    older release created the columns added since (``add_new_columns``).

    Returns the tables created by this call (empty when everything existed: a no-op).
    """
    from google.cloud import bigquery

    project, dataset = split_dataset_ref(dataset_ref)
    client.create_dataset(bigquery.Dataset(f"{project}.{dataset}"), exists_ok=True)
    existing = {t.table_id for t in client.list_tables(f"{project}.{dataset}")}
    created = []
    for name, fields in schemas.FIELDS.items():
        if name in existing:
            add_new_columns(client, f"{project}.{dataset}.{name}", fields)
            continue
        table = bigquery.Table(f"{project}.{dataset}.{name}",
                               schema=[bigquery.SchemaField.from_api_repr(f) for f in fields])
        partitioning = schemas.TIME_PARTITIONING[name]
        table.time_partitioning = bigquery.TimePartitioning(type_=partitioning["type"],
                                                            field=partitioning["field"])
        table.clustering_fields = schemas.CLUSTERING[name]
        client.create_table(table, exists_ok=True)
        created.append(name)
    return created


def add_new_columns(client: Any, table_id: str, fields: list[dict[str, Any]]) -> list[str]:
    """Appends the schema's columns an existing table lacks and returns their names. New columns
    are NULLABLE and last (``schemas``), which BigQuery adds in place: old rows read NULL, and
    the writers (whose row encoding follows ``schemas``) find every column they write.

    The schema update adds them with their descriptions; the DDL after it is a no-op on
    BigQuery, and adds them to bqemulator's storage, which the update leaves as it was."""
    from google.cloud import bigquery

    table = client.get_table(table_id)
    have = {field.name for field in table.schema}
    new = [field for field in fields if field["name"] not in have]
    if new:
        table.schema = list(table.schema) + [bigquery.SchemaField.from_api_repr(f) for f in new]
        client.update_table(table, ["schema"])
        for field in new:
            client.query(f"ALTER TABLE `{table_id}` ADD COLUMN IF NOT EXISTS `{field['name']}` "
                         f"{field['type']}").result()
    return [field["name"] for field in new]


def _row_bytes_sql(table: str) -> str:
    """SQL for one row's size by BigQuery's data size rules (numbers 8, BOOL 1, STRING 2+len,
    NULL 0)."""
    sizes = {"FLOAT64": 8, "INT64": 8, "TIMESTAMP": 8, "BOOL": 1}
    terms = []
    for field in schemas.FIELDS[table]:
        name = f"`{field['name']}`"
        if field["type"] == "STRING":
            terms.append(f"IFNULL(2 + BYTE_LENGTH({name}), 0)")
        else:
            terms.append(f"IF({name} IS NULL, 0, {sizes[field['type']]})")
    return " + ".join(terms)


def view_sql(project: str, dataset: str) -> dict[str, str]:
    """The SPEC §6 views as Standard SQL SELECTs (name -> query), from ``transforms/views``; valid
    on BigQuery and bqemulator."""
    row_bytes = "\n  UNION ALL\n  ".join(
        f"SELECT '{table}' AS table_name, DATE(COALESCE(timestamp_out, "
        f"{schemas.TIME_PARTITIONING[table]['field']})) AS day, {_row_bytes_sql(table)} AS row_bytes "
        f"FROM `{project}.{dataset}.{table}`"
        for table in schemas.FIELDS)
    values = {"dataset": f"{project}.{dataset}", "row_bytes_per_table": row_bytes,
              "streaming_insert_min_row_bytes": STREAMING_INSERT_MIN_ROW_BYTES,
              "streaming_insert_usd_per_200_mib": STREAMING_INSERT_USD_PER_200_MIB,
              "storage_write_usd_per_gib": STORAGE_WRITE_USD_PER_GIB}
    return {name: Template(_statement(VIEWS_DIR / f"{name}.sql")).substitute(values) for name in VIEW_NAMES}


def _statement(path: Path) -> str:
    """A view file without its comment lines: the deploy script sends each view as one line, where
    a ``--`` comment would swallow the rest of the statement."""
    return "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("--"))


def ensure_views(client: Any, dataset_ref: str) -> list[str]:
    """Create or replace every SPEC §6 view (idempotent); returns their names in creation
    order."""
    project, dataset = split_dataset_ref(dataset_ref)
    queries = view_sql(project, dataset)
    for name in VIEW_NAMES:
        statement = f"CREATE OR REPLACE VIEW `{project}.{dataset}.{name}` AS {queries[name]}"
        client.query(statement).result()
    return list(VIEW_NAMES)
