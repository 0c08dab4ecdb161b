# The local BigQuery stand-in of docker-compose.yml: bqemulator (DuckDB-backed BigQuery REST +
# gRPC), started through pipelines/bqemulator_offline.py, which skips the one start-up step that
# needs the internet (DuckDB's spatial extension; nothing here uses GEOGRAPHY).
# Versions as in docs/local-stack.md (bqemulator 1.4.0 needs numpy, undeclared).
FROM python:3.11-slim

RUN pip install --no-cache-dir bqemulator==1.4.0 duckdb==2.0.1 numpy==2.4.6
WORKDIR /app
COPY pipelines/__init__.py pipelines/bqemulator_offline.py pipelines/
ENV BQEMU_ENABLE_FORMAT_EXTENSIONS=false
VOLUME ["/data"]
EXPOSE 9050 9060
ENTRYPOINT ["python", "-m", "pipelines.bqemulator_offline"]
CMD ["start", "--rest-host", "0.0.0.0", "--rest-port", "9050", "--grpc-host", "0.0.0.0", \
     "--grpc-port", "9060", "--project", "local-project", "--data-dir", "/data/db"]
