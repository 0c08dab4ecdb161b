"""The names of the local stack, one place: ``mds stack up``, the demo, docker-compose.yml, the
ingest worker's defaults and the tests all provision or reach these."""

LOCAL_PROJECT = "local-project"
DEFAULT_DATASET = "market_data"
TICKS_TOPIC, TICKS_SUBSCRIPTION, CANDLES_TOPIC = "ticks", "ticks-sub", "candles"
DEFAULT_PUBSUB_PORT = 8085
DEFAULT_BIGQUERY_PORT = 9050
