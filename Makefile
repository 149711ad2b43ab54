# meshca — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test lint format bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: set up, then serve the CA on the embedded SQLite default (creating it on first start)
## on 127.0.0.1:15012 (TLS), trusting tokens signed by a local dev key in .meshca-dev/.
run: $(STAMP)
	$(BIN)/meshca dev signing-key --dir .meshca-dev
	$(BIN)/meshca ca serve --listen 127.0.0.1:15012 --mtls-listen 127.0.0.1:15013 \
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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
