# Google Cloud targets, included by the top-level Makefile (`include deploy/deploy.mk`).
# Every target calls deploy/deploy-streaming-service.sh, which holds the actual gcloud/bq/docker
# commands; DRY_RUN=1 prints them instead of running them.
#
#   make deploy PROJECT=my-proj MODE=candles SYMBOL=BTC-USDT DURATION=6h
#   make template-run PROJECT=my-proj UPDATE=1      # replace the running job in place
#   make drain PROJECT=my-proj MODE=candles
#   make deploy PROJECT=my-proj DRY_RUN=1           # print the plan only
#   make ingest-run PROJECT=my-proj SOURCE=tardis FROM=2024-03-01 TO=2024-03-02 TARDIS_SECRET=tardis-api-key
#
# Every flag of the script has a variable here (empty = the script's default), so nothing set on
# the make command line is silently dropped.

DEPLOY_SCRIPT ?= deploy/deploy-streaming-service.sh
PROJECT ?= $(GOOGLE_CLOUD_PROJECT)
REGION ?= us-central1
MODE ?= candles
SYMBOL ?= BTC-USDT
EXCHANGE ?= binance
DURATION ?= 1h
SOURCE ?= live
TARDIS_SECRET ?=
FROM ?=
TO ?=
DATASET ?= market_data
BUCKET ?=
TAG ?=
MAX_WORKERS ?= 3
MACHINE_TYPE ?=
SERVICE_ACCOUNT ?=
INGEST_SERVICE_ACCOUNT ?=
BUILD_SERVICE_ACCOUNT ?=
USE_DOCKER ?=
NODEJS ?=
UPDATE ?=
TRANSFORM_NAME_MAPPINGS ?=
DRY_RUN ?=

DEPLOY_FLAGS = --mode $(MODE) --symbol $(SYMBOL) --exchange $(EXCHANGE) --duration $(DURATION) \
	--source $(SOURCE) --region $(REGION) --dataset $(DATASET) --max-workers $(MAX_WORKERS) \
	$(if $(PROJECT),--project $(PROJECT)) $(if $(TAG),--tag $(TAG)) \
	$(if $(TARDIS_SECRET),--tardis-secret $(TARDIS_SECRET)) \
	$(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) $(if $(BUCKET),--bucket $(BUCKET)) \
	$(if $(MACHINE_TYPE),--machine-type $(MACHINE_TYPE)) \
	$(if $(SERVICE_ACCOUNT),--service-account $(SERVICE_ACCOUNT)) \
	$(if $(INGEST_SERVICE_ACCOUNT),--ingest-service-account $(INGEST_SERVICE_ACCOUNT)) \
	$(if $(BUILD_SERVICE_ACCOUNT),--build-service-account $(BUILD_SERVICE_ACCOUNT)) \
	$(if $(USE_DOCKER),--use-docker) $(if $(NODEJS),--nodejs) \
	$(if $(UPDATE),--update) $(if $(TRANSFORM_NAME_MAPPINGS),--transform-name-mappings $(TRANSFORM_NAME_MAPPINGS)) \
	$(if $(DRY_RUN),--dry-run)

.PHONY: deploy gcp-apis gcp-infra gcp-iam image template-build template-run template-update ingest-run \
	ingest-stop deploy-status drain cancel

deploy:           ## everything: APIs, infra, IAM, image, template, Dataflow job, ingest worker
	$(DEPLOY_SCRIPT) deploy $(DEPLOY_FLAGS)

gcp-apis:         ## enable the Google Cloud APIs
	$(DEPLOY_SCRIPT) apis $(DEPLOY_FLAGS)

gcp-infra:        ## bucket, Artifact Registry, Pub/Sub topics + subscription, BigQuery dataset/tables/views
	$(DEPLOY_SCRIPT) infra $(DEPLOY_FLAGS)

gcp-iam:          ## service accounts and their least-privilege roles (docs/runbook.md)
	$(DEPLOY_SCRIPT) iam $(DEPLOY_FLAGS)

image:            ## build and push the template image (+ Node ingest image with NODEJS=1)
	$(DEPLOY_SCRIPT) image $(DEPLOY_FLAGS)

template-build: image  ## build the image, then the Flex Template spec on GCS
	$(DEPLOY_SCRIPT) template-build $(DEPLOY_FLAGS)

template-run:     ## launch the Dataflow streaming job from the template (UPDATE=1 to replace in place)
	$(DEPLOY_SCRIPT) template-run $(DEPLOY_FLAGS)

template-update:  ## rebuild and replace the running job, keeping its state
	$(DEPLOY_SCRIPT) image template-build template-run --update $(DEPLOY_FLAGS)

ingest-run:       ## deploy and start the ingest worker on Cloud Run jobs
	$(DEPLOY_SCRIPT) ingest $(DEPLOY_FLAGS)

ingest-stop:      ## cancel running ingest executions
	$(DEPLOY_SCRIPT) stop-ingest $(DEPLOY_FLAGS)

deploy-status:    ## Dataflow job and ingest executions
	$(DEPLOY_SCRIPT) status $(DEPLOY_FLAGS)

drain:            ## drain the Dataflow job: stop reading, finish open windows, then stop
	$(DEPLOY_SCRIPT) drain $(DEPLOY_FLAGS)

cancel:           ## cancel the Dataflow job now (open windows are lost)
	$(DEPLOY_SCRIPT) cancel $(DEPLOY_FLAGS)
