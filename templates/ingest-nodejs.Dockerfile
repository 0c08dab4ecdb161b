# The Node.js ingest worker (ingest/nodejs, `mds-ingest` with the same flags as `mds ingest`),
# for Cloud Run jobs. The Python worker needs no image of its own: it runs from templates/Dockerfile.
# Build from the repository root:  docker build -f templates/ingest-nodejs.Dockerfile -t IMAGE .
FROM node:20-slim

# The repository's layout: the worker reads the venue and instrument tables it shares with the
# Python worker from ingest/contract, two directories up from its src/.
WORKDIR /app/ingest/nodejs
ENV NODE_ENV=production
COPY ingest/nodejs/package.json ingest/nodejs/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY ingest/contract /app/ingest/contract
COPY ingest/nodejs/bin bin
COPY ingest/nodejs/src src

USER node
ENTRYPOINT ["node", "bin/mds-ingest.js"]
