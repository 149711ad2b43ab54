# meshca — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Exact versions (with hashes) of every runtime, test and build dependency: `make lock` refreshes it.
LOCK   := requirements/lock.txt
PIP    := PIP_DISABLE_PIP_VERSION_CHECK=1 $(BIN)/python -m pip
# The lock tool, pinned; it runs in its own venv.
PIP_TOOLS := pip-tools==7.7.0
LOCK_VENV := .venv-lock
# Newest versions the floors in pyproject.toml allow (`make test-latest`).
LATEST_VENV := .venv-latest
LATEST_TESTS := tests/core tests/cli tests/server/test_create_certificate.py

.PHONY: run demo test lint format bench protos clean lock test-latest check-wheel postgres

# The locked dependencies (hashes required), then meshca itself, editable, built with the locked
# setuptools (no build isolation, so nothing unlocked is fetched).
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: set up, then serve the CA on the embedded SQLite default (creating it on first start)
## on 127.0.0.1:15012 (TLS), trusting tokens signed by a local dev key in .meshca-dev/.
RUN_HOST ?= 127.0.0.1
RUN_PORT ?= 15012
RUN_MTLS_PORT ?= 15013
RUN_METRICS_PORT ?= 15014
run: $(STAMP)
	$(BIN)/meshca dev signing-key --dir .meshca-dev >/dev/null
	@echo "make run: serving the CA from ./meshca.db on $(RUN_HOST):$(RUN_PORT) (TLS) until Ctrl-C."
	@echo "make run: get a certificate from another shell:"
	@echo "  $(BIN)/meshca root bundle > root.pem"
	@echo "  $(BIN)/meshca dev token --namespace default --service-account web > token"
	@echo "  $(BIN)/meshca cert request --ca $(RUN_HOST):$(RUN_PORT) --ca-root root.pem \\"
	@echo "      --token-file token --out-cert web.pem --out-key web.key"
	$(BIN)/meshca ca serve --listen $(RUN_HOST):$(RUN_PORT) \
		--mtls-listen $(RUN_HOST):$(RUN_MTLS_PORT) --metrics-listen $(RUN_HOST):$(RUN_METRICS_PORT) \
		--jwt-issuer meshca-dev --jwt-public-key .meshca-dev/sa-signer.pub.pem

## demo: set up, then run a throwaway mesh (CA, two SDS agents, two Envoys doing SPIFFE mTLS)
## in a temp dir on free ports, send requests both ways, show an intruder refused, stop it all.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## test: set up, lint, type-check and run the whole suite.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ca sds tests scripts
	$(BIN)/ruff format --check ca sds tests scripts
	$(BIN)/mypy ca sds

format: $(STAMP)
	$(BIN)/ruff format ca sds tests scripts
	$(BIN)/ruff check --fix ca sds tests scripts

## bench: issuance throughput in process and over gRPC with TLS (SQLite and PostgreSQL),
## then the agent: start-up, bundle push to 20 Envoys, 10,000 WatchBundle streams, RSS;
## then rotation: NOTIFY across replicas, the reissue window, the ledger's authority check.
bench: $(STAMP)
	$(BIN)/python tests/bench/bench_issuance.py
	$(BIN)/python tests/bench/bench_grpc.py
	$(BIN)/python tests/bench/bench_agent.py
	$(BIN)/python tests/bench/bench_rotation.py

## protos: regenerate ca/api/*_pb2.py(i) from proto/ (tests check they are current).
protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen-protos

## lock: re-resolve requirements/lock.txt against the newest versions pyproject.toml allows
## (runtime + test extra + build backend), with hashes. Commit it ("Lock refreshed: ...").
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(LOCK_VENV)/bin/python -m pip install --quiet '$(PIP_TOOLS)'
	mkdir -p $(dir $(LOCK))
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --upgrade \
		--generate-hashes --allow-unsafe --strip-extras --no-emit-find-links --extra test \
		--build-deps-for wheel \
		--output-file $(LOCK) pyproject.toml

## test-latest: a second venv (.venv-latest) with the newest versions the floors allow (no
## lock), the key versions next to the locked ones, then a quick subset of the suite.
test-latest:
	$(PYTHON) -m venv $(LATEST_VENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(LATEST_VENV)/bin/python -m pip install --quiet --upgrade \
		--upgrade-strategy eager -e '.[test]'
	$(LATEST_VENV)/bin/python scripts/latest_versions.py $(LOCK)
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS) $(LATEST_TESTS)

## check-wheel: build the wheel, install it (not editable) with the locked dependencies in a
## fresh venv, and run `meshca` from outside the source tree: db upgrade, ca init/sign, audit.
check-wheel:
	PYTHON=$(PYTHON) scripts/check-wheel

## postgres: make PostgreSQL answer on 127.0.0.1:5432 for the tests (installs Debian's
## postgresql when missing, creates/starts a cluster, trusts local TCP, creates database `test`).
postgres:
	scripts/postgres-up

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info build dist
