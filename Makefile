# One task runner for people and CI. `make run` does the main job; `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
export FRAUD_HOME ?= $(ROOT)/.fraud
export PREFECT_HOME ?= $(FRAUD_HOME)/prefect
export BENTOML_HOME ?= $(FRAUD_HOME)/bentoml
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := $(ROOT)/.venv/bin/python
FRAUD := $(ROOT)/.venv/bin/fraud
ROWS ?= 200000
# pytest-xdist processes for `make test` and `make test-prod` (whole modules per process): the
# integration tests mostly wait on servers, so two overlap well even on two cores
WORKERS ?= 2
DATA := $(FRAUD_HOME)/data/transactions.parquet
PROD_HOME := $(or $(FRAUD_PROD_HOME),$(FRAUD_HOME)/prod)
PROD_DATA := $(PROD_HOME)/data/transactions.parquet
# the pipeline image of the committed tree (deploy/pipeline.Dockerfile), and where releases push
GIT_SHA := $(shell git -C "$(ROOT)" rev-parse HEAD 2>/dev/null)
PIPELINE_IMAGE ?= fraud-pipeline:$(shell echo "$(GIT_SHA)" | cut -c1-12)
REGISTRY ?= $(FRAUD_IMAGE_REGISTRY)

.PHONY: help install data docker up deploy run release down status test test-fast lint format bench bench-serve bench-arrow bench-soak bench-hostile bench-swap bench-tls bench-drift bench-bootstrap drift serve fleet-up fleet-down fleet-status bench-rollout demo-drift mlflow-ui monitor-ui rollback history clean up-prod down-prod run-prod test-prod pipeline-image push-images k8s-render prometheus prometheus-down

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## install uv if missing, then the locked environment (.venv)
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || python3 -m pip install --quiet --user uv
	@$(UV) sync --frozen --quiet

data: install ## generate the synthetic data set if absent (ROWS=200000)
	@[ -f "$(DATA)" ] || $(FRAUD) generate-data "$(DATA)" --rows $(ROWS) --invalid-rows 40

docker: ## provide a Docker engine and the base image if none answers (root; reused when running)
	@docker info >/dev/null 2>&1 || scripts/docker-engine.sh start "$(FRAUD_HOME)/docker" \
	  || echo "[make] WARNING: no Docker engine; releases will skip the image (build_image=false)"

up: install ## start the local Prefect server and a process worker (reused when running)
	@$(FRAUD) stack up

deploy: up ## deploy prefect.yaml
	@$(FRAUD) stack deploy

run: data docker deploy ## the main job: train-and-release as a Prefect deployment run, then where things are
	@$(FRAUD) stack release
	@$(FRAUD) stack summary

release: install ## run train-and-release again on the running stack
	@$(FRAUD) stack release
	@$(FRAUD) stack summary

down: install ## stop what `make run` started (by PID), and Prometheus if `make prometheus` started it
	@$(FRAUD) stack down
	@$(FRAUD) prometheus down
	@scripts/docker-engine.sh stop "$(FRAUD_HOME)/docker"

status: install ## what is running
	@$(FRAUD) stack status
	@$(FRAUD) prometheus status

rollback: up ## move champion back: make rollback VERSION=N [REASON="..."] [NO_IMAGE=1]
	@[ -n "$(VERSION)" ] || { echo "usage: make rollback VERSION=N [REASON=\"why\"] [NO_IMAGE=1]"; exit 2; }
	@PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$${FRAUD_PREFECT_PORT:-4200}/api} \
	  $(FRAUD) rollback --version "$(VERSION)" --reason "$(or $(REASON),manual rollback)" $(if $(NO_IMAGE),--no-image,)

history: install ## every move of the champion alias (releases and rollbacks), oldest first
	@$(FRAUD) history

monitor-ui: install ## the Evidently UI on http://127.0.0.1:8000: drift and realized performance over time (stopped by make down)
	@$(FRAUD) stack monitor-ui

mlflow-ui: install ## the MLflow UI on http://127.0.0.1:5000 for the local store
	$(ROOT)/.venv/bin/mlflow ui --host 127.0.0.1 --port 5000 \
	  --workers 1 --backend-store-uri "sqlite:///$(FRAUD_HOME)/mlflow/mlflow.db"

test: install ## the whole test suite (unit and integration against real servers; WORKERS=2 processes)
	$(ROOT)/.venv/bin/pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install ## unit tests only: no servers, a few minutes at most
	$(ROOT)/.venv/bin/pytest -m "not integration"

lint: install ## ruff, format check, bandit, serving requirements in step with uv.lock, import layers, promtool
	$(ROOT)/.venv/bin/ruff check .
	$(ROOT)/.venv/bin/ruff format --check .
	$(ROOT)/.venv/bin/bandit -c pyproject.toml -r flows bento data_contracts scripts benchmarks -ll -ii -q
	UV="$(UV)" $(PY) scripts/serving_requirements.py --check
	$(ROOT)/.venv/bin/lint-imports --config "$(ROOT)/pyproject.toml"
	@mkdir -p "$(PREFECT_HOME)"  # prefect makes only the last folder of its home
	$(FRAUD) k8s check
	$(ROOT)/.venv/bin/jactionlint --color=never --shellcheck="$(ROOT)/.venv/bin/shellcheck"
	$(FRAUD) prometheus check

format: install
	$(ROOT)/.venv/bin/ruff format .
	$(ROOT)/.venv/bin/ruff check --fix .

bench: install ## train-and-release on 100k and 1M rows; sklearn vs onnxruntime scoring
	$(PY) benchmarks/release/bench.py

bench-serve: install ## bento vs the FastAPI baseline at c=1/8/64: req/s, p99/p99.9/max, worst second, batches beside single rows, log rows vs scored (needs wrk)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
	$(PY) -m benchmarks.serve.bench

bench-arrow: install ## /predict_batch with Arrow IPC vs JSON bodies: records/s at 1k/10k records, single-row p99 beside each (needs wrk)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
	$(PY) -m benchmarks.serve.arrow_batch

bench-soak: install ## the bento at its measured capacity for 60 s: non-2xx, RSS growth, p50/p99 (wrk)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
	$(PY) -m benchmarks.serve.soak

bench-tls: install ## single-row /predict through HAProxy: TLS and the API-key check vs plain HTTP (wrk)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
	$(PY) -m benchmarks.serve.tls

bench-swap: install ## checkout bentoml serve under wrk while the champion moves: failed requests, swap latency, req/s vs steady
	$(PY) -m benchmarks.serve.swap

bench-hostile: install ## one bento worker under hostile requests + normal scoring for 60 s: p99, RSS, /metrics, 5xx
	$(PY) -m benchmarks.serve.hostile

bench-drift: install ## drift check: 1M-row window vs naive Evidently; 1M and 10M windows, wall and peak RSS
	$(PY) -m benchmarks.drift.bench
	$(PY) -m benchmarks.drift.bench_window

bench-bootstrap: install ## the gate's paired F1 bootstrap on a 40k-row holdout vs the row-index bootstrap
	$(PY) benchmarks/bench_bootstrap.py

fleet-up: install ## the serving fleet: REPLICAS (2) champion containers behind HAProxy on 127.0.0.1:3000
	@$(FRAUD) stack fleet-up --replicas $(or $(REPLICAS),2) $(if $(FLEET_PORT),--port $(FLEET_PORT),)

fleet-down: install ## stop the serving fleet (balancer by PID, replicas by container id)
	@$(FRAUD) stack fleet-down

fleet-status: install ## each fleet replica, its /readyz and the balancer's view of it
	@$(FRAUD) fleet status

bench-rollout: install ## wrk at c=8 and c=64 through the fleet during a promotion and a rollback (needs Docker)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
	@command -v haproxy >/dev/null 2>&1 || apt-get install -y -qq haproxy >/dev/null
	$(PY) -m benchmarks.serve.rollout

serve: up ## bentoml serve the champion on http://127.0.0.1:3000 (background; make down stops it)
	@$(FRAUD) stack serve

demo-drift: run ## the monitoring story: traffic, no drift, drifted traffic, drift, email, retraining
	@$(FRAUD) stack demo-drift

prometheus: install ## Prometheus on http://127.0.0.1:9090 scraping the serving fleet and `make serve` (fraud prometheus)
	@$(FRAUD) prometheus up

prometheus-down: install ## stop Prometheus (by PID)
	@$(FRAUD) prometheus down

drift: install ## run the drift-check deployment now on the running stack
	@$(FRAUD) stack drift

up-prod: install ## the production profile: PostgreSQL, Prefect + MLflow servers on it, worker, Prometheus (fraud stack --profile production)
	@$(FRAUD) stack --profile production up

down-prod: install ## stop what `make up-prod` started (by PID)
	@$(FRAUD) stack --profile production down

run-prod: data docker up-prod ## the main job against the production profile (flow runs as containers on its Docker work pool)
	@$(FRAUD) stack --profile production deploy
	@# the data set inside the profile home: the home is what flow containers mount
	@mkdir -p "$(PROD_HOME)/data" && { ln -f "$(DATA)" "$(PROD_DATA)" 2>/dev/null || cp -f "$(DATA)" "$(PROD_DATA)"; }
	@$(FRAUD) stack --profile production release --param data_path="$(PROD_DATA)"
	@$(FRAUD) stack --profile production summary

test-prod: install ## the integration tests that use a server stack, on the production profile (PostgreSQL)
	FRAUD_TEST_PROFILE=prod $(ROOT)/.venv/bin/pytest -m "integration and stack and not embedded_only" \
	  -n $(WORKERS) --dist loadfile --no-loadscope-reorder

pipeline-image: ## build the pipeline image of the committed tree: fraud-pipeline:<commit> (deploy/)
	@[ -n "$(GIT_SHA)" ] || { echo "pipeline-image: not a git checkout"; exit 2; }
	@git -C "$(ROOT)" diff --quiet HEAD -- || echo "[make] note: uncommitted changes are not in the image"
	@# the committed tree with every timestamp at 0: the builder's layer cache then keys on
	@# content, so a code change rebuilds the code layers and keeps the dependency layer
	ctx="$$(mktemp -d)"; trap 'rm -rf "$$ctx"' EXIT; \
	  git -C "$(ROOT)" archive --format=tar HEAD | tar -x -C "$$ctx" && \
	  tar -C "$$ctx" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . | \
	  DOCKER_BUILDKIT=0 docker build --network host -f deploy/pipeline.Dockerfile \
	    --build-arg GIT_COMMIT=$(GIT_SHA) \
	    --label org.opencontainers.image.revision=$(GIT_SHA) -t "$(PIPELINE_IMAGE)" -

push-images: install ## push the champion's bento image and the pipeline image to REGISTRY=host/team
	@[ -n "$(REGISTRY)" ] || { echo "usage: make push-images REGISTRY=registry.example.com/team"; exit 2; }
	$(FRAUD) k8s push --registry "$(REGISTRY)" --pipeline-image "$(PIPELINE_IMAGE)"

k8s-render: install ## deploy/k8s/ filled with the current image tags, into build/k8s (REGISTRY=...)
	$(FRAUD) k8s render --registry "$(REGISTRY)" --out "$(ROOT)/build/k8s"

clean: down down-prod ## stop the stacks and delete all local state (.fraud, and the profile's own PostgreSQL cluster)
	@$(FRAUD) stack --profile production pg-remove
	rm -rf "$(FRAUD_HOME)"
