#!/usr/bin/env bash
# Deploy and operate the market-data streaming service on Google Cloud:
#   Pub/Sub ticks topic -> Dataflow Flex Template job (this repo's pipeline) -> BigQuery,
#   fed by an ingest worker (Python `mds ingest`, or the Node.js twin) on Cloud Run jobs.
#
# Usage: deploy/deploy-streaming-service.sh [STEP ...] [FLAGS]
# Steps (default: deploy = apis infra image template-build template-run ingest):
#   apis            enable the Google Cloud APIs the service uses
#   infra           bucket, Artifact Registry repo, Pub/Sub topics/subscription, BigQuery dataset/tables/views
#   image           build and push the template image (and the Node ingest image with --nodejs)
#   template-build  write the Flex Template spec to gs://BUCKET/templates/
#   template-run    launch the Dataflow job (add --update to replace a running job in place)
#   ingest          deploy and start the ingest worker as a Cloud Run job
#   status          list the Dataflow job and the ingest job executions
#   drain | cancel  stop the Dataflow job (drain finishes open windows; cancel drops them)
#   stop-ingest     cancel the running ingest executions
# Flags:
#   --mode candles|ticks|both   pipeline mode (default candles)
#   --symbol SYM                symbol as users write it (default BTC-USDT)
#   --exchange EX               exchange id (default binance)
#   --duration D                how long the ingest worker runs: 90s, 30m, 6h, 1d (default 1h)
#   --source live|tardis        ingest source: the exchange's live WebSocket (default), or a
#                               Tardis.dev replay of [--from, --to) (needs --tardis-secret)
#   --from DATE --to DATE       replay window for --source tardis, ISO UTC (2024-03-01T00:00)
#   --tardis-secret NAME        Secret Manager secret holding the Tardis.dev API key (live mode
#                               then falls back to a Tardis replay if the exchange is unreachable)
#   --nodejs                    run the Node.js ingest worker instead of the Python one
#   --project P                 (default: $GOOGLE_CLOUD_PROJECT, else gcloud's configured project)
#   --region R                  (default us-central1)
#   --bucket B                  staging/temp/template bucket (default PROJECT-mds)
#   --dataset D                 BigQuery dataset (default market_data)
#   --tag T                     image/template tag (default: git commit, '-dirty' if code changed)
#   --max-workers N             Dataflow autoscaling cap (default 3)
#   --machine-type T            Dataflow worker type (default n2-standard-2)
#   --service-account EMAIL     worker/launcher/Cloud Run service account
#   --use-docker                build with local docker instead of Cloud Build
#   --update                    template-run replaces the running job of the same name
#   --dry-run                   print every gcloud/bq/docker command instead of running it
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON="python3"

MODE="candles"
SYMBOL="BTC-USDT"
EXCHANGE="binance"
DURATION="1h"
SOURCE="live"
TARDIS_SECRET=""
FROM_DATE=""
TO_DATE=""
NODEJS=0
PROJECT="${GOOGLE_CLOUD_PROJECT:-}"
REGION="us-central1"
BUCKET=""
DATASET="market_data"
# Default tag = the checked-out commit, so separate invocations (image, then template-run, then
# ingest) agree on the image and template spec without passing --tag around.
TAG="$(git -C "${REPO_ROOT}" rev-parse --short=12 HEAD 2>/dev/null || date -u +%Y%m%d-%H%M%S)"
if git -C "${REPO_ROOT}" rev-parse HEAD >/dev/null 2>&1 \
    && ! git -C "${REPO_ROOT}" diff --quiet HEAD -- pipelines ingest transforms templates setup.py 2>/dev/null; then
  TAG="${TAG}-dirty"
fi
MAX_WORKERS=3
MACHINE_TYPE="n2-standard-2"
SERVICE_ACCOUNT=""
USE_DOCKER=0
UPDATE=0
DRY_RUN=0
JOB_ID=""
STEPS=()

die() { echo "error: $*" >&2; exit 2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --mode) MODE="${2:?--mode needs a value}"; shift 2 ;;
    --symbol) SYMBOL="${2:?--symbol needs a value}"; shift 2 ;;
    --exchange) EXCHANGE="${2:?--exchange needs a value}"; shift 2 ;;
    --duration) DURATION="${2:?--duration needs a value}"; shift 2 ;;
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    --tardis-secret) TARDIS_SECRET="${2:?--tardis-secret needs a value}"; shift 2 ;;
    --from) FROM_DATE="${2:?--from needs a value}"; shift 2 ;;
    --to) TO_DATE="${2:?--to needs a value}"; shift 2 ;;
    --nodejs) NODEJS=1; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --region) REGION="${2:?--region needs a value}"; shift 2 ;;
    --bucket) BUCKET="${2:?--bucket needs a value}"; shift 2 ;;
    --dataset) DATASET="${2:?--dataset needs a value}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
    --max-workers) MAX_WORKERS="${2:?--max-workers needs a value}"; shift 2 ;;
    --machine-type) MACHINE_TYPE="${2:?--machine-type needs a value}"; shift 2 ;;
    --service-account) SERVICE_ACCOUNT="${2:?--service-account needs a value}"; shift 2 ;;
    --use-docker) USE_DOCKER=1; shift ;;
    --update) UPDATE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --*) die "unknown flag $1 (see --help)" ;;
    *) STEPS+=("$1"); shift ;;
  esac
done

# ---------------------------------------------------------------------------------------------
# Validation: fail before touching the cloud, with the reason.
# ---------------------------------------------------------------------------------------------
case "${MODE}" in candles|ticks|both) ;; *) die "--mode must be candles, ticks or both, got '${MODE}'" ;; esac
case "${SOURCE}" in live|tardis) ;; *) die "--source must be live or tardis, got '${SOURCE}'" ;; esac
[[ "${SYMBOL}" =~ ^[A-Za-z0-9]+-[A-Za-z0-9]+$ ]] || die "--symbol must look like BTC-USDT, got '${SYMBOL}'"
[[ "${EXCHANGE}" =~ ^[a-z0-9-]+$ ]] || die "--exchange must be a Tardis exchange id like binance, got '${EXCHANGE}'"
[[ "${MAX_WORKERS}" =~ ^[1-9][0-9]*$ ]] || die "--max-workers must be a positive integer"
[[ "${SOURCE}" != "tardis" || -n "${TARDIS_SECRET}" ]] || die "--source tardis needs --tardis-secret NAME"
[[ "${SOURCE}" != "tardis" || -n "${FROM_DATE}" ]] || die "--source tardis needs --from DATE"
ISO_DATE='^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?)?Z?$'
[[ -z "${FROM_DATE}" || "${FROM_DATE}" =~ ${ISO_DATE} ]] || die "--from must be an ISO date/time, got '${FROM_DATE}'"
[[ -z "${TO_DATE}" || "${TO_DATE}" =~ ${ISO_DATE} ]] || die "--to must be an ISO date/time, got '${TO_DATE}'"

duration_seconds() {
  local value="$1" number unit
  [[ "${value}" =~ ^([1-9][0-9]*)([smhd]?)$ ]] || die "--duration must look like 90s, 30m, 6h or 1d, got '${value}'"
  number="${BASH_REMATCH[1]}"
  unit="${BASH_REMATCH[2]:-s}"
  case "${unit}" in
    s) echo "${number}" ;;
    m) echo $((number * 60)) ;;
    h) echo $((number * 3600)) ;;
    d) echo $((number * 86400)) ;;
  esac
}
DURATION_SECONDS="$(duration_seconds "${DURATION}")"

if [[ -z "${PROJECT}" ]]; then
  if ((DRY_RUN)); then
    PROJECT="PROJECT_ID"
  else
    command -v gcloud >/dev/null || die "gcloud is not installed; pass --project and install the Google Cloud CLI"
    PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
  fi
fi
[[ -n "${PROJECT}" ]] || die "no project: pass --project or run 'gcloud config set project ...'"
[[ "${PROJECT}" =~ ^([a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$ || "${PROJECT}" == "PROJECT_ID" ]] \
  || die "--project '${PROJECT}' is not a valid project id"
BUCKET="${BUCKET:-${PROJECT}-mds}"
(( ${#STEPS[@]} )) || STEPS=(deploy)

# ---------------------------------------------------------------------------------------------
# Names: one place, derived from the flags, so every step agrees.
# ---------------------------------------------------------------------------------------------
SYMBOL_SLUG="$(echo "${EXCHANGE}-${SYMBOL}" | tr '[:upper:]' '[:lower:]')"
REPOSITORY="mds"
IMAGE_BASE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}"
TEMPLATE_IMAGE="${IMAGE_BASE}/mds-pipeline:${TAG}"
NODE_IMAGE="${IMAGE_BASE}/mds-ingest-nodejs:${TAG}"
TEMPLATE_SPEC="gs://${BUCKET}/templates/mds-streaming-${TAG}.json"
TICKS_TOPIC="mds-ticks"
TICKS_SUBSCRIPTION="mds-ticks-dataflow-${MODE}"
CANDLES_TOPIC="mds-candles"
JOB_NAME="mds-${MODE}"
INGEST_JOB="mds-ingest-${SYMBOL_SLUG}"
((NODEJS)) && INGEST_JOB="${INGEST_JOB}-node"
DATASET_REF="${PROJECT}:${DATASET}"
APIS=(dataflow.googleapis.com compute.googleapis.com pubsub.googleapis.com bigquery.googleapis.com
      storage.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com
      run.googleapis.com secretmanager.googleapis.com logging.googleapis.com monitoring.googleapis.com)

# ---------------------------------------------------------------------------------------------
# Command runner: the single place that executes cloud commands, so --dry-run covers them all.
# ---------------------------------------------------------------------------------------------
run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    echo "+ $*" >&2
    "$@"
  fi
}

# Runs a describe command quietly; 0 if the resource exists. In dry-run it "does not exist" so
# the create command is printed.
exists() {
  ((DRY_RUN)) && return 1
  "$@" >/dev/null 2>&1
}

step_apis() {
  run gcloud services enable "${APIS[@]}" --project "${PROJECT}"
}

step_infra() {
  exists gcloud storage buckets describe "gs://${BUCKET}" --project "${PROJECT}" \
    || run gcloud storage buckets create "gs://${BUCKET}" --project "${PROJECT}" --location "${REGION}" \
         --uniform-bucket-level-access
  exists gcloud artifacts repositories describe "${REPOSITORY}" --location "${REGION}" --project "${PROJECT}" \
    || run gcloud artifacts repositories create "${REPOSITORY}" --repository-format docker \
         --location "${REGION}" --project "${PROJECT}" --description "market-data streaming images"
  for topic in "${TICKS_TOPIC}" "${CANDLES_TOPIC}"; do
    exists gcloud pubsub topics describe "${topic}" --project "${PROJECT}" \
      || run gcloud pubsub topics create "${topic}" --project "${PROJECT}" --message-retention-duration 1d
  done
  exists gcloud pubsub subscriptions describe "${TICKS_SUBSCRIPTION}" --project "${PROJECT}" \
    || run gcloud pubsub subscriptions create "${TICKS_SUBSCRIPTION}" --topic "${TICKS_TOPIC}" \
         --project "${PROJECT}" --ack-deadline 60 --message-retention-duration 7d --expiration-period never
  exists bq --project_id "${PROJECT}" show --dataset "${DATASET_REF}" \
    || run bq --project_id "${PROJECT}" mk --dataset --location "${REGION}" \
         --description "market-data streaming: ticks, candles, dead letters" "${DATASET_REF}"
  # Kept under build/ (git-ignored) so a printed --dry-run command still finds its schema file.
  local schema_dir="${REPO_ROOT}/build/bq-schema" table
  mkdir -p "${schema_dir}"
  for table in $(cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema tables); do
    (cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema schema "${table}") > "${schema_dir}/${table}.json"
    local flags=()
    read -r -a flags <<< "$(cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema flags "${table}")"
    exists bq --project_id "${PROJECT}" show "${DATASET_REF}.${table}" \
      || run bq --project_id "${PROJECT}" mk --table "${flags[@]}" \
           "${DATASET_REF}.${table}" "${schema_dir}/${table}.json"
  done
  local statement
  while IFS= read -r statement; do
    run bq --project_id "${PROJECT}" --location "${REGION}" query --use_legacy_sql=false "${statement}"
  done < <(cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema views "${DATASET_REF}")
}

build_image() {  # build_image DOCKERFILE IMAGE
  if ((USE_DOCKER)); then
    run docker build --file "${REPO_ROOT}/$1" --tag "$2" "${REPO_ROOT}"
    run docker push "$2"
  else
    run gcloud builds submit "${REPO_ROOT}" --config "${REPO_ROOT}/templates/cloudbuild.yaml" \
      --substitutions "_IMAGE=$2,_DOCKERFILE=$1" --project "${PROJECT}" --region "${REGION}"
  fi
}

step_image() {
  build_image templates/Dockerfile "${TEMPLATE_IMAGE}"
  ((NODEJS)) && build_image templates/ingest-nodejs.Dockerfile "${NODE_IMAGE}"
  return 0
}

step_template_build() {
  run gcloud dataflow flex-template build "${TEMPLATE_SPEC}" \
    --image "${TEMPLATE_IMAGE}" --sdk-language PYTHON \
    --metadata-file "${REPO_ROOT}/templates/metadata.json" --project "${PROJECT}"
}

step_template_run() {
  # `^~^` makes `~` the separator: parameter values (timeframes) contain commas.
  local parameters="^~^mode=${MODE}"
  parameters+="~input_subscription=projects/${PROJECT}/subscriptions/${TICKS_SUBSCRIPTION}"
  parameters+="~output_dataset=${DATASET_REF}"
  [[ "${MODE}" != "ticks" ]] && parameters+="~output_topic=projects/${PROJECT}/topics/${CANDLES_TOPIC}"
  parameters+="~sdk_container_image=${TEMPLATE_IMAGE}"
  local extra=()
  [[ -n "${SERVICE_ACCOUNT}" ]] && extra+=(--service-account-email "${SERVICE_ACCOUNT}")
  ((UPDATE)) && extra+=(--update)
  run gcloud dataflow flex-template run "${JOB_NAME}" \
    --template-file-gcs-location "${TEMPLATE_SPEC}" \
    --region "${REGION}" --project "${PROJECT}" \
    --staging-location "gs://${BUCKET}/staging" --temp-location "gs://${BUCKET}/temp" \
    --enable-streaming-engine --max-workers "${MAX_WORKERS}" --worker-machine-type "${MACHINE_TYPE}" \
    --parameters "${parameters}" "${extra[@]}"
}

step_ingest() {
  local topic_path="projects/${PROJECT}/topics/${TICKS_TOPIC}"
  # `^@^` makes `@` the list separator of --args (symbol lists may contain commas).
  local ingest_args="--exchange@${EXCHANGE}@--symbol@${SYMBOL}@--project@${PROJECT}@--topic@${topic_path}"
  ingest_args+="@--duration@${DURATION_SECONDS}@--quiet"
  if [[ "${SOURCE}" == "tardis" ]]; then
    ingest_args+="@--from@${FROM_DATE}"
    [[ -n "${TO_DATE}" ]] && ingest_args+="@--to@${TO_DATE}"
  else
    ingest_args+="@--live"
    [[ -n "${TARDIS_SECRET}" ]] && ingest_args+="@--fallback-replay"
  fi
  local image command=()
  if ((NODEJS)); then
    image="${NODE_IMAGE}"
  else
    image="${TEMPLATE_IMAGE}"
    command=(--command mds)
    ingest_args="ingest@${ingest_args}"
  fi
  local extra=()
  [[ -n "${TARDIS_SECRET}" ]] && extra+=(--set-secrets "TARDIS_API_KEY=${TARDIS_SECRET}:latest")
  [[ -n "${SERVICE_ACCOUNT}" ]] && extra+=(--service-account "${SERVICE_ACCOUNT}")
  # The task may run the whole duration plus start-up; no retries past a clean finish.
  run gcloud run jobs deploy "${INGEST_JOB}" --image "${image}" "${command[@]}" --args "^@^${ingest_args}" \
    --region "${REGION}" --project "${PROJECT}" --tasks 1 --max-retries 3 \
    --task-timeout "$((DURATION_SECONDS + 600))s" --cpu 1 --memory 1Gi "${extra[@]}"
  run gcloud run jobs execute "${INGEST_JOB}" --region "${REGION}" --project "${PROJECT}" --async
}

lookup_job_id() {  # sets JOB_ID to the id of the active Dataflow job named JOB_NAME
  local lookup=(gcloud dataflow jobs list --region "${REGION}" --project "${PROJECT}" --status active
                --filter "name=${JOB_NAME}" --format "value(JOB_ID)")
  if ((DRY_RUN)); then
    run "${lookup[@]}"
    JOB_ID="JOB_ID_OF_${JOB_NAME}"
    return
  fi
  JOB_ID="$("${lookup[@]}" | head -n 1)"
  [[ -n "${JOB_ID}" ]] || die "no active Dataflow job named ${JOB_NAME} in ${PROJECT}/${REGION}"
}

step_status() {
  run gcloud dataflow jobs list --region "${REGION}" --project "${PROJECT}" --status active \
    --filter "name=${JOB_NAME}"
  run gcloud run jobs executions list --job "${INGEST_JOB}" --region "${REGION}" --project "${PROJECT}" \
    --limit 5
}

step_drain() {
  lookup_job_id
  run gcloud dataflow jobs drain "${JOB_ID}" --region "${REGION}" --project "${PROJECT}"
}

step_cancel() {
  lookup_job_id
  run gcloud dataflow jobs cancel "${JOB_ID}" --region "${REGION}" --project "${PROJECT}"
}

step_stop_ingest() {
  if ((DRY_RUN)); then
    run gcloud run jobs executions list --job "${INGEST_JOB}" --region "${REGION}" --project "${PROJECT}" \
      --filter "NOT status.completionTime:*" --format "value(name)"
    run gcloud run jobs executions cancel "EXECUTION_OF_${INGEST_JOB}" --region "${REGION}" \
      --project "${PROJECT}" --quiet
    return
  fi
  local execution
  for execution in $(gcloud run jobs executions list --job "${INGEST_JOB}" --region "${REGION}" \
      --project "${PROJECT}" --filter "NOT status.completionTime:*" --format "value(name)"); do
    run gcloud run jobs executions cancel "${execution}" --region "${REGION}" --project "${PROJECT}" --quiet
  done
}

for step in "${STEPS[@]}"; do
  case "${step}" in
    deploy) step_apis; step_infra; step_image; step_template_build; step_template_run; step_ingest ;;
    apis) step_apis ;;
    infra) step_infra ;;
    image) step_image ;;
    template-build) step_template_build ;;
    template-run) step_template_run ;;
    ingest) step_ingest ;;
    status) step_status ;;
    drain) step_drain ;;
    cancel) step_cancel ;;
    stop-ingest) step_stop_ingest ;;
    *) die "unknown step '${step}' (see --help)" ;;
  esac
done
