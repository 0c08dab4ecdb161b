#!/usr/bin/env bash
# Deploy and operate the market-data streaming service on Google Cloud:
#   Pub/Sub ticks topic -> Dataflow Flex Template job (this repo's pipeline) -> BigQuery,
#   fed by an ingest worker (Python `mds ingest`, or the Node.js twin) on Cloud Run jobs.
#
# Usage: deploy/deploy-streaming-service.sh [STEP ...] [FLAGS]
# Steps (default: deploy = apis infra iam image template-build template-run ingest):
#   apis            enable the Google Cloud APIs the service uses
#   infra           bucket, Artifact Registry repo, Pub/Sub topics, the Dataflow subscription with
#                   its event-time guard (deploy/pubsub/event-time-guard.js), BigQuery dataset/tables/views
#   iam             service accounts (Dataflow, ingest, Cloud Build) and their roles (docs/runbook.md)
#   image           build and push the template image (and the Node ingest image with --nodejs)
#   template-build  write the Flex Template spec to gs://BUCKET/templates/
#   template-run    launch the Dataflow job (add --update to replace a running job in place)
#   ingest          deploy and start the ingest worker as a Cloud Run job (creates the Tardis
#                   secret from $TARDIS_API_KEY first if it does not exist)
#   status          list the Dataflow job and the ingest job executions
#   drain | cancel  stop the Dataflow job (drain finishes open windows; cancel drops them), then
#                   check that Dataflow took the request
#   stop-ingest     cancel the running ingest executions
# Flags:
#   --mode candles|ticks|both   pipeline mode (default candles)
#   --symbol SYM                symbol as users write it (default BTC-USDT)
#   --exchange EX               exchange id (default binance)
#   --duration D                how long the ingest worker runs: 90s, 30m, 6h, 1d (default 1h)
#   --source live|tardis        ingest source: the exchange's live WebSocket (default), or a
#                               Tardis.dev replay of [--from, --to) (needs --tardis-secret)
#   --from DATE --to DATE       replay window [from, to) for --source tardis, ISO UTC (2024-03-01T00:00)
#   --tardis-secret NAME        Secret Manager secret holding the Tardis.dev API key (live mode
#                               then falls back to a Tardis replay if the exchange is unreachable);
#                               created from $TARDIS_API_KEY (read from the environment, never a
#                               flag) when it does not exist
#   --nodejs                    run the Node.js ingest worker instead of the Python one
#   --project P                 (default: $GOOGLE_CLOUD_PROJECT, else gcloud's configured project)
#   --region R                  (default us-central1)
#   --bucket B                  staging/temp/template bucket (default PROJECT-mds)
#   --dataset D                 BigQuery dataset (default market_data)
#   --tag T                     image/template tag (default: git commit, '-dirty' if code changed)
#   --max-workers N             Dataflow autoscaling cap (default 3)
#   --machine-type T            Dataflow worker type (default n2-standard-2)
#   --service-account EMAIL     Dataflow launcher and worker account (default mds-dataflow@PROJECT...)
#   --ingest-service-account EMAIL  Cloud Run ingest job account (default mds-ingest@PROJECT...)
#   --build-service-account EMAIL   Cloud Build account (default mds-build@PROJECT...)
#   --use-docker                build with local docker instead of Cloud Build (needs
#                               `gcloud auth configure-docker REGION-docker.pkg.dev` once)
#   --update                    template-run replaces the running job of the same name
#   --transform-name-mappings OLD=NEW[,OLD=NEW]  with --update: steps renamed since the running job
#                               (name prefixes as in tests/dataflow_step_names.txt; docs/runbook.md)
#   --dry-run                   print every gcloud/bq/docker command instead of running it
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project venv (`make venv`): infra renders tables, views and the Pub/Sub transform from the
# code. No fallback to another interpreter: one without the project installed would create nothing.
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"
GUARD_JS="${REPO_ROOT}/deploy/pubsub/event-time-guard.js"
GUARD_FUNCTION="guardEventTime"
# IAM needs a few seconds to see a service account it just created: bindings are retried.
ATTEMPTS=5
VERIFY_ATTEMPTS=3
RETRY_DELAY="${MDS_DEPLOY_RETRY_DELAY:-5}"

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
INGEST_SERVICE_ACCOUNT=""
BUILD_SERVICE_ACCOUNT=""
USE_DOCKER=0
UPDATE=0
TRANSFORM_NAME_MAPPINGS=""
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
    --ingest-service-account) INGEST_SERVICE_ACCOUNT="${2:?--ingest-service-account needs a value}"; shift 2 ;;
    --build-service-account) BUILD_SERVICE_ACCOUNT="${2:?--build-service-account needs a value}"; shift 2 ;;
    --use-docker) USE_DOCKER=1; shift ;;
    --update) UPDATE=1; shift ;;
    --transform-name-mappings) TRANSFORM_NAME_MAPPINGS="${2:?--transform-name-mappings needs a value}"; shift 2 ;;
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
[[ "${SYMBOL}" =~ ^[A-Za-z0-9]+(-[A-Za-z0-9]+)+$ ]] || die "--symbol must look like BTC-USDT or BTC-USD-PERP, got '${SYMBOL}'"
[[ "${EXCHANGE}" =~ ^[a-z0-9-]+$ ]] || die "--exchange must be a Tardis exchange id like binance, got '${EXCHANGE}'"
[[ "${MAX_WORKERS}" =~ ^[1-9][0-9]*$ ]] || die "--max-workers must be a positive integer"
[[ "${SOURCE}" != "tardis" || -n "${TARDIS_SECRET}" ]] || die "--source tardis needs --tardis-secret NAME"
[[ "${SOURCE}" != "tardis" || -n "${FROM_DATE}" ]] || die "--source tardis needs --from DATE"
# The worker refuses a replay without an end (exit 2), which Cloud Run would retry three times.
[[ "${SOURCE}" != "tardis" || -n "${TO_DATE}" ]] || die "--source tardis needs --to DATE: the replay window is [--from, --to)"
[[ "${SOURCE}" == "tardis" || -z "${FROM_DATE}${TO_DATE}" ]] || die "--from/--to only apply to --source tardis"
ISO_DATE='^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?)?Z?$'
[[ -z "${FROM_DATE}" || "${FROM_DATE}" =~ ${ISO_DATE} ]] || die "--from must be an ISO date/time, got '${FROM_DATE}'"
[[ -z "${TO_DATE}" || "${TO_DATE}" =~ ${ISO_DATE} ]] || die "--to must be an ISO date/time, got '${TO_DATE}'"
epoch_seconds() { date -u -d "$1" +%s 2>/dev/null || die "not a valid date/time: '$1'"; }
if [[ -n "${FROM_DATE}" && -n "${TO_DATE}" ]]; then
  (( $(epoch_seconds "${FROM_DATE}") < $(epoch_seconds "${TO_DATE}") )) \
    || die "--from must be before --to, got [${FROM_DATE}, ${TO_DATE})"
fi
if [[ -n "${TRANSFORM_NAME_MAPPINGS}" ]]; then
  ((UPDATE)) || die "--transform-name-mappings only applies to an update (--update)"
  [[ "${TRANSFORM_NAME_MAPPINGS}" =~ ^[^=,]+=[^=,]+(,[^=,]+=[^=,]+)*$ ]] \
    || die "--transform-name-mappings must look like Old/Step=New/Step[,Old=New], got '${TRANSFORM_NAME_MAPPINGS}'"
fi
SA_EMAIL='^[a-z0-9][-a-z0-9]{0,62}@[-a-z0-9.]+\.gserviceaccount\.com$'
for account in "${SERVICE_ACCOUNT}" "${INGEST_SERVICE_ACCOUNT}" "${BUILD_SERVICE_ACCOUNT}"; do
  [[ -z "${account}" || "${account}" =~ ${SA_EMAIL} ]] || die "not a service account email: '${account}'"
done

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

# Service accounts live in the project's domain: example.com:proj -> proj.example.com.
if [[ "${PROJECT}" == *:* ]]; then SA_DOMAIN="${PROJECT#*:}.${PROJECT%%:*}"; else SA_DOMAIN="${PROJECT}"; fi
SA_DOMAIN="${SA_DOMAIN}.iam.gserviceaccount.com"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-mds-dataflow@${SA_DOMAIN}}"
INGEST_SERVICE_ACCOUNT="${INGEST_SERVICE_ACCOUNT:-mds-ingest@${SA_DOMAIN}}"
BUILD_SERVICE_ACCOUNT="${BUILD_SERVICE_ACCOUNT:-mds-build@${SA_DOMAIN}}"

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
# Dataflow reads event time from the `ts` attribute and then creates its own watermark tracking
# subscription (<subscription>__df_internal<hash>) on the ticks topic, which needs these.
TRACKING_ROLE="mdsDataflowPubsubTracking"
TRACKING_PERMISSIONS="pubsub.subscriptions.create,pubsub.subscriptions.get,pubsub.subscriptions.consume,pubsub.subscriptions.delete"
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

# run "$@" up to ATTEMPTS times (for IAM bindings on a service account created a moment ago).
retry() {
  local attempt
  for ((attempt = 1; ; attempt++)); do
    run "$@" && return 0
    ((attempt < ATTEMPTS)) || return 1
    echo "retrying in ${RETRY_DELAY}s (attempt ${attempt} of ${ATTEMPTS} failed)" >&2
    sleep "${RETRY_DELAY}"
  done
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

require_project_python() {
  [[ -x "${PYTHON}" ]] || die "no project venv at ${PYTHON}: run 'make venv' first (or set PYTHON)"
  (cd "${REPO_ROOT}" && "${PYTHON}" -c "import pipelines.export_schema") >/dev/null 2>&1 \
    || die "${PYTHON} cannot import the pipeline package: run 'make venv' first"
}

# The Pub/Sub message transforms file for the Dataflow subscription, generated from the UDF's
# source so the deployed code is always the tested one. Prints its path.
message_transforms_file() {
  local out="${REPO_ROOT}/build/pubsub/event-time-guard.json"
  mkdir -p "$(dirname "${out}")"
  "${PYTHON}" -c 'import json, sys
path, name = sys.argv[1:]
code = open(path, encoding="utf-8").read()
if f"function {name}(" not in code:
    sys.exit(f"error: {path} does not define {name}")
json.dump([{"javascriptUdf": {"functionName": name, "code": code}}], sys.stdout, indent=2)' \
    "${GUARD_JS}" "${GUARD_FUNCTION}" > "${out}"
  echo "${out}"
}

step_infra() {
  require_project_python
  exists gcloud storage buckets describe "gs://${BUCKET}" --project "${PROJECT}" \
    || run gcloud storage buckets create "gs://${BUCKET}" --project "${PROJECT}" --location "${REGION}" \
         --uniform-bucket-level-access
  exists gcloud artifacts repositories describe "${REPOSITORY}" --location "${REGION}" --project "${PROJECT}" \
    || run gcloud artifacts repositories create "${REPOSITORY}" --repository-format docker \
         --location "${REGION}" --project "${PROJECT}" --description "market-data streaming images"
  # The event-time guard goes on every run, so an existing topic or subscription gets the current
  # UDF too. On the ticks topic it guards every subscription, including the one Dataflow creates
  # itself to track the ts attribute's watermark; on the subscription it guards messages already
  # published before the topic had it (the UDF is idempotent: a guarded ts passes unchanged).
  local transforms
  transforms="$(message_transforms_file)"
  if exists gcloud pubsub topics describe "${TICKS_TOPIC}" --project "${PROJECT}"; then
    run gcloud pubsub topics update "${TICKS_TOPIC}" --project "${PROJECT}" \
      --message-transforms-file "${transforms}"
  else
    run gcloud pubsub topics create "${TICKS_TOPIC}" --project "${PROJECT}" --message-retention-duration 1d \
      --message-transforms-file "${transforms}"
  fi
  exists gcloud pubsub topics describe "${CANDLES_TOPIC}" --project "${PROJECT}" \
    || run gcloud pubsub topics create "${CANDLES_TOPIC}" --project "${PROJECT}" --message-retention-duration 1d
  if exists gcloud pubsub subscriptions describe "${TICKS_SUBSCRIPTION}" --project "${PROJECT}"; then
    run gcloud pubsub subscriptions update "${TICKS_SUBSCRIPTION}" --project "${PROJECT}" \
      --message-transforms-file "${transforms}"
  else
    run gcloud pubsub subscriptions create "${TICKS_SUBSCRIPTION}" --topic "${TICKS_TOPIC}" \
      --project "${PROJECT}" --ack-deadline 60 --message-retention-duration 7d --expiration-period never \
      --message-transforms-file "${transforms}"
  fi
  exists bq --project_id "${PROJECT}" show --dataset "${DATASET_REF}" \
    || run bq --project_id "${PROJECT}" mk --dataset --location "${REGION}" \
         --description "market-data streaming: ticks, candles, dead letters" "${DATASET_REF}"
  # Kept under build/ (git-ignored) so a printed --dry-run command still finds its schema file.
  # Every export is captured before use: a failing one stops the script instead of looping over nothing.
  local schema_dir="${REPO_ROOT}/build/bq-schema" tables table flag_text views statement
  mkdir -p "${schema_dir}"
  tables="$(cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema tables)"
  [[ -n "${tables}" ]] || die "pipelines.export_schema listed no tables"
  for table in ${tables}; do
    (cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema schema "${table}") > "${schema_dir}/${table}.json"
    flag_text="$(cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema flags "${table}")"
    local flags=()
    read -r -a flags <<< "${flag_text}"
    exists bq --project_id "${PROJECT}" show "${DATASET_REF}.${table}" \
      || run bq --project_id "${PROJECT}" mk --table "${flags[@]}" \
           "${DATASET_REF}.${table}" "${schema_dir}/${table}.json"
  done
  views="$(cd "${REPO_ROOT}" && "${PYTHON}" -m pipelines.export_schema views "${DATASET_REF}")"
  [[ -n "${views}" ]] || die "pipelines.export_schema rendered no views"
  # Read on fd 3: a command in the loop that reads stdin must not swallow the remaining lines.
  while IFS= read -r statement <&3; do
    run bq --project_id "${PROJECT}" --location "${REGION}" query --use_legacy_sql=false "${statement}"
  done 3<<< "${views}"
}

# Creates the service account if it is one of this project's and missing; an account of
# another project must exist already.
ensure_service_account() {  # ensure_service_account EMAIL DESCRIPTION
  local email="$1"
  if [[ "${email}" != *"@${SA_DOMAIN}" ]]; then
    local describe=(gcloud iam service-accounts describe "${email}" --format "value(email)")
    if ((DRY_RUN)); then run "${describe[@]}"; return; fi
    "${describe[@]}" >/dev/null 2>&1 \
      || die "service account ${email} is not in ${PROJECT} and cannot be described: check the name and your access"
    return
  fi
  exists gcloud iam service-accounts describe "${email}" --project "${PROJECT}" \
    || run gcloud iam service-accounts create "${email%%@*}" --project "${PROJECT}" --display-name "$2"
}

grant_project() {  # grant_project MEMBER ROLE
  retry gcloud projects add-iam-policy-binding "${PROJECT}" --member "$1" --role "$2" --condition None
}

# Least privilege: every role on the one resource that needs it, project-wide only where
# Google offers nothing narrower. docs/runbook.md says why each is needed.
step_iam() {
  ensure_service_account "${SERVICE_ACCOUNT}" "market-data streaming: Dataflow launcher and workers"
  ensure_service_account "${INGEST_SERVICE_ACCOUNT}" "market-data streaming: ingest worker (Cloud Run)"
  ensure_service_account "${BUILD_SERVICE_ACCOUNT}" "market-data streaming: image builds (Cloud Build)"
  exists gcloud iam roles describe "${TRACKING_ROLE}" --project "${PROJECT}" \
    || run gcloud iam roles create "${TRACKING_ROLE}" --project "${PROJECT}" --stage GA \
         --title "Dataflow Pub/Sub watermark tracking" \
         --description "Create, read and delete the tracking subscription Dataflow adds for event-time reads" \
         --permissions "${TRACKING_PERMISSIONS}"
  local worker="serviceAccount:${SERVICE_ACCOUNT}" ingest="serviceAccount:${INGEST_SERVICE_ACCOUNT}"
  local build="serviceAccount:${BUILD_SERVICE_ACCOUNT}" role
  for role in roles/dataflow.worker roles/bigquery.dataEditor roles/bigquery.jobUser \
      "projects/${PROJECT}/roles/${TRACKING_ROLE}"; do
    grant_project "${worker}" "${role}"
  done
  for role in roles/pubsub.subscriber roles/pubsub.viewer; do
    retry gcloud pubsub subscriptions add-iam-policy-binding "${TICKS_SUBSCRIPTION}" --project "${PROJECT}" \
      --member "${worker}" --role "${role}"
  done
  retry gcloud pubsub topics add-iam-policy-binding "${TICKS_TOPIC}" --project "${PROJECT}" \
    --member "${worker}" --role roles/pubsub.subscriber
  if [[ "${MODE}" != "ticks" ]]; then
    retry gcloud pubsub topics add-iam-policy-binding "${CANDLES_TOPIC}" --project "${PROJECT}" \
      --member "${worker}" --role roles/pubsub.publisher
  fi
  retry gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --project "${PROJECT}" \
    --member "${worker}" --role roles/storage.objectAdmin
  retry gcloud artifacts repositories add-iam-policy-binding "${REPOSITORY}" --location "${REGION}" \
    --project "${PROJECT}" --member "${worker}" --role roles/artifactregistry.reader
  retry gcloud pubsub topics add-iam-policy-binding "${TICKS_TOPIC}" --project "${PROJECT}" \
    --member "${ingest}" --role roles/pubsub.publisher
  retry gcloud artifacts repositories add-iam-policy-binding "${REPOSITORY}" --location "${REGION}" \
    --project "${PROJECT}" --member "${build}" --role roles/artifactregistry.writer
  retry gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --project "${PROJECT}" \
    --member "${build}" --role roles/storage.objectViewer
  grant_project "${build}" roles/logging.logWriter
}

build_image() {  # build_image DOCKERFILE IMAGE
  if ((USE_DOCKER)); then
    run docker build --file "${REPO_ROOT}/$1" --tag "$2" "${REPO_ROOT}"
    run docker push "$2"
  else
    # As mds-build, with the source staged in our bucket: no reliance on the project's default
    # build account (the Compute Engine default account on projects created since 2024).
    run gcloud builds submit "${REPO_ROOT}" --config "${REPO_ROOT}/templates/cloudbuild.yaml" \
      --substitutions "_IMAGE=$2,_DOCKERFILE=$1" --project "${PROJECT}" --region "${REGION}" \
      --service-account "projects/${PROJECT}/serviceAccounts/${BUILD_SERVICE_ACCOUNT}" \
      --gcs-source-staging-dir "gs://${BUCKET}/cloudbuild-source"
  fi
}

check_docker_login() {
  ((USE_DOCKER && !DRY_RUN)) || return 0
  local config="${DOCKER_CONFIG:-${HOME}/.docker}/config.json"
  grep -q "\"${REGION}-docker.pkg.dev\"" "${config}" 2>/dev/null \
    || die "docker cannot push to ${REGION}-docker.pkg.dev: run 'gcloud auth configure-docker ${REGION}-docker.pkg.dev' once"
}

step_image() {
  check_docker_login
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
  ((UPDATE)) && extra+=(--update)
  [[ -n "${TRANSFORM_NAME_MAPPINGS}" ]] && extra+=(--transform-name-mappings "${TRANSFORM_NAME_MAPPINGS}")
  run gcloud dataflow flex-template run "${JOB_NAME}" \
    --template-file-gcs-location "${TEMPLATE_SPEC}" \
    --region "${REGION}" --project "${PROJECT}" \
    --staging-location "gs://${BUCKET}/staging" --temp-location "gs://${BUCKET}/temp" \
    --service-account-email "${SERVICE_ACCOUNT}" \
    --enable-streaming-engine --max-workers "${MAX_WORKERS}" --worker-machine-type "${MACHINE_TYPE}" \
    --parameters "${parameters}" "${extra[@]}"
}

# The ingest job reads the key as TARDIS_API_KEY from this secret: it must exist, with an enabled
# latest version, before the job references it. A missing secret is created from
# $TARDIS_API_KEY, passed on stdin so the key never appears in a command line or log.
ensure_tardis_secret() {
  if exists gcloud secrets describe "${TARDIS_SECRET}" --project "${PROJECT}"; then
    local state
    state="$(gcloud secrets versions describe latest --secret "${TARDIS_SECRET}" --project "${PROJECT}" \
      --format "value(state)" 2>/dev/null || true)"
    [[ "${state}" == "ENABLED" ]] || die "secret ${TARDIS_SECRET} has no enabled latest version (state: ${state:-none}): add one with 'gcloud secrets versions add ${TARDIS_SECRET} --data-file=-'"
  elif [[ -n "${TARDIS_API_KEY:-}" || DRY_RUN -eq 1 ]]; then
    printf '%s' "${TARDIS_API_KEY:-}" | run gcloud secrets create "${TARDIS_SECRET}" --project "${PROJECT}" \
      --replication-policy automatic --data-file=-
  else
    die "secret ${TARDIS_SECRET} does not exist in ${PROJECT}: export TARDIS_API_KEY=<key> and re-run to create it"
  fi
  retry gcloud secrets add-iam-policy-binding "${TARDIS_SECRET}" --project "${PROJECT}" \
    --member "serviceAccount:${INGEST_SERVICE_ACCOUNT}" --role roles/secretmanager.secretAccessor
}

step_ingest() {
  [[ -n "${TARDIS_SECRET}" ]] && ensure_tardis_secret
  local topic_path="projects/${PROJECT}/topics/${TICKS_TOPIC}"
  # `^@^` makes `@` the list separator of --args (symbol lists may contain commas).
  local ingest_args="--exchange@${EXCHANGE}@--symbol@${SYMBOL}@--project@${PROJECT}@--topic@${topic_path}"
  ingest_args+="@--duration@${DURATION_SECONDS}@--quiet"
  if [[ "${SOURCE}" == "tardis" ]]; then
    ingest_args+="@--from@${FROM_DATE}@--to@${TO_DATE}"
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
  # The task may run the whole duration plus start-up; no retries past a clean finish.
  run gcloud run jobs deploy "${INGEST_JOB}" --image "${image}" "${command[@]}" --args "^@^${ingest_args}" \
    --region "${REGION}" --project "${PROJECT}" --tasks 1 --max-retries 3 \
    --task-timeout "$((DURATION_SECONDS + 600))s" --cpu 1 --memory 1Gi \
    --service-account "${INGEST_SERVICE_ACCOUNT}" "${extra[@]}"
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

# gcloud's drain and cancel exit 0 even when Dataflow refused the request: read the job back and
# fail unless it is stopping as asked.
verify_stopping() {  # verify_stopping REQUESTED_STATE STOPPING_STATE
  local describe=(gcloud dataflow jobs describe "${JOB_ID}" --region "${REGION}" --project "${PROJECT}"
                  --format "value(currentState,requestedState)")
  if ((DRY_RUN)); then
    run "${describe[@]}"
    return
  fi
  local attempt states current="" requested=""
  for ((attempt = 1; attempt <= VERIFY_ATTEMPTS; attempt++)); do
    states="$("${describe[@]}" 2>/dev/null || true)"
    IFS=$'\t' read -r current requested <<< "${states}"
    if [[ "${requested}" == "$1" || "${current}" == "$2" || "${current}" == "$1" ]]; then
      echo "job ${JOB_ID} (${JOB_NAME}): ${current}, requested ${requested:-$1}" >&2
      return 0
    fi
    ((attempt < VERIFY_ATTEMPTS)) && sleep "${RETRY_DELAY}"
  done
  die "Dataflow did not take the request for job ${JOB_ID} (${JOB_NAME}): state ${current:-unknown}, requested ${requested:-nothing}; see gcloud's message above"
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
  verify_stopping JOB_STATE_DRAINED JOB_STATE_DRAINING
}

step_cancel() {
  lookup_job_id
  run gcloud dataflow jobs cancel "${JOB_ID}" --region "${REGION}" --project "${PROJECT}"
  verify_stopping JOB_STATE_CANCELLED JOB_STATE_CANCELLING
}

# Running executions are those without a completion time. (gcloud's --filter cannot express that:
# 'NOT status.completionTime:*' fails with "Unknown string format: *" once one has finished.)
step_stop_ingest() {
  local list=(gcloud run jobs executions list --job "${INGEST_JOB}" --region "${REGION}" --project "${PROJECT}"
              --format "value(metadata.name,status.completionTime)")
  if ((DRY_RUN)); then
    run "${list[@]}"
    run gcloud run jobs executions cancel "EXECUTION_OF_${INGEST_JOB}" --region "${REGION}" \
      --project "${PROJECT}" --quiet
    return
  fi
  local listing name completed cancelled=0
  listing="$("${list[@]}")" || die "could not list the executions of ${INGEST_JOB}"
  while IFS=$'\t' read -r name completed <&3; do
    [[ -n "${name}" && -z "${completed}" ]] || continue
    run gcloud run jobs executions cancel "${name}" --region "${REGION}" --project "${PROJECT}" --quiet
    cancelled=$((cancelled + 1))
  done 3<<< "${listing}"
  echo "cancelled ${cancelled} running execution(s) of ${INGEST_JOB}" >&2
}

for step in "${STEPS[@]}"; do
  case "${step}" in
    deploy) step_apis; step_infra; step_iam; step_image; step_template_build; step_template_run; step_ingest ;;
    apis) step_apis ;;
    infra) step_infra ;;
    iam) step_iam ;;
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
