"""Export the BigQuery tables and views of transforms/ as files and flags for the `bq` CLI.

The deploy script creates the tables with `bq mk` before the first job starts, from the same
schema code the pipeline uses (transforms/schemas.py, transforms/bigquery.py, transforms/views/), so a table made
by hand can never disagree with what the pipeline writes.

    python -m pipelines.export_schema schema candles      # JSON field list for `bq mk --table`
    python -m pipelines.export_schema flags candles       # partitioning/clustering flags
    python -m pipelines.export_schema views PROJECT:DATASET   # CREATE OR REPLACE VIEW ...; lines
"""
from __future__ import annotations

import argparse
import json
import sys

from transforms import schemas


def schema_json(table: str) -> str:
    """The field list in the JSON form `bq mk --table DATASET.TABLE schema.json` reads."""
    return json.dumps(schemas.FIELDS[table], indent=2)


def bq_mk_flags(table: str) -> list[str]:
    """Partitioning and clustering flags of `bq mk --table` for one table."""
    partitioning = schemas.TIME_PARTITIONING[table]
    return [f"--time_partitioning_type={partitioning['type']}",
            f"--time_partitioning_field={partitioning['field']}",
            f"--clustering_fields={','.join(schemas.CLUSTERING[table])}"]


def view_statements(dataset_ref: str) -> list[str]:
    """One single-line CREATE OR REPLACE VIEW statement per view, in dependency order."""
    from transforms.bigquery import VIEW_NAMES, split_dataset_ref, view_sql

    project, dataset = split_dataset_ref(dataset_ref)
    queries = view_sql(project, dataset)
    return [" ".join(f"CREATE OR REPLACE VIEW `{project}.{dataset}.{name}` AS {queries[name]}".split())
            for name in VIEW_NAMES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.export_schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("schema", "flags", "tables", "views"))
    parser.add_argument("target", nargs="?", default=None,
                        help="table name (schema, flags) or PROJECT:DATASET (views)")
    args = parser.parse_args(argv)
    if args.what == "tables":
        print("\n".join(schemas.FIELDS))
        return 0
    if args.target is None:
        parser.error(f"{args.what} needs a target")
    if args.what == "views":
        print("\n".join(view_statements(args.target)))
        return 0
    if args.target not in schemas.FIELDS:
        parser.error(f"unknown table {args.target!r}; tables: {', '.join(schemas.FIELDS)}")
    print(schema_json(args.target) if args.what == "schema" else " ".join(bq_mk_flags(args.target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
