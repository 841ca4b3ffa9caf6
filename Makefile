# Rapport: `make run` brings the whole stack up, `make test` runs every test. Both install what
# they need (venv, pip, Redis from apt, Cassandra jars from Maven Central, Go tools) and cache
# downloads under .cache/ (git-ignored).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export RAPPORT_CACHE ?= $(CURDIR)/.cache
export RAPPORT_STATE ?= $(CURDIR)/.state
BIN := $(RAPPORT_CACHE)/bin
PROTOS := $(shell find protos -name '*.proto')
PYTEST_ARGS ?=

.PHONY: help venv gen tools browser stack run console stop status test test-unit lint bench-identity bench-profile chaos-profile replay eval-sessions eval-sessions-yoochoose bench-decision bench-messaging bench-tracing k8s-validate demo clean

help:
	@echo "make run             start Redis, Cassandra and every service (prints ports and the dev API key)"
	@echo "make console         (stack up) start the staff console on http://127.0.0.1:8060 (make run starts it too)"
	@echo "make stop            stop all of it"
	@echo "make test            unit + integration + end-to-end tests against real Redis and Cassandra"
	@echo "make lint            buf lint, ruff, mypy"
	@echo "make bench-identity  ghz load on Resolve vs the health-check floor"
	@echo "make bench-profile   sustained TrackBatch load, durable writes: events_per_s, p99_batch_ms"
	@echo "make chaos-profile   kill -9 the profile process under load: acked, stored, lost"
	@echo "make replay DATA=../shared/data   replay the real datasets through TrackBatch (stack running)"
	@echo "make eval-sessions [TRAIN=… TEST=… OUT=…]   next-item HR@20 / MRR@20 (Diginetica by default)"
	@echo "make bench-decision  ghz load on Decide with warm profiles vs the health-check floor"
	@echo "make demo            (stack up) replay real data, narrate a few visitors' visits and an abandoned-cart email"
	@echo "make k8s-validate    render every Kustomize overlay and validate it offline (kubeconform -strict + project rules)"
	@echo "make bench-messaging triggers fanned out to a real SMTP server, duplicates injected, a replica killed"
	@echo "make bench-tracing   per-RPC cost of trace context in the shared interceptor, without and with spans"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# google/rpc/status.proto comes with googleapis-common-protos (whose Python module the generated
# code imports); a copy under .cache/proto-deps lets protoc and buf see it.
PROTO_DEPS := $(RAPPORT_CACHE)/proto-deps

gen/.stamp: $(PROTOS) $(VENV)/.installed
	rm -rf gen $(PROTO_DEPS) && mkdir -p gen $(PROTO_DEPS)/google/rpc
	cp "$$($(PY) -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(m.__file__))')/status.proto" $(PROTO_DEPS)/google/rpc/
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos -I $(PROTO_DEPS) \
	  --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen $(PROTOS)
	touch $@

gen: gen/.stamp

tools:
	scripts/tools.sh grpcurl grpc-health-probe ghz buf

# Debian's chromium and chromedriver, for the console's browser test (apt, only if missing).
browser:
	scripts/browser.sh install

stack: venv
	scripts/redis.sh install
	scripts/redis.sh start
	scripts/cassandra.sh install
	scripts/cassandra.sh start

run: venv gen stack
	@scripts/services.sh start
	@echo
	@echo "Redis      127.0.0.1:$${REDIS_PORT:-6379}"
	@echo "Cassandra  127.0.0.1:$${CASSANDRA_PORT:-9042}"
	@echo "Dev API key (all scopes): $$(scripts/services.sh dev-key)"
	@echo "Staff console: http://127.0.0.1:$${RAPPORT_CONSOLE_PORT:-8060}/ (sign in with the dev API key)"
	@echo "Try: $(BIN)/grpcurl -plaintext 127.0.0.1:50051 list   (make tools installs grpcurl)"
	@echo "Stop everything with: make stop"

# The staff console alone, next to services already running (make run starts it with them).
console: venv gen
	@scripts/services.sh console
	@echo "Sign in with the dev API key: $$(scripts/services.sh dev-key)"

stop:
	-scripts/services.sh stop
	-scripts/cassandra.sh stop
	-scripts/redis.sh stop

status:
	-scripts/services.sh status
	-scripts/cassandra.sh status
	-scripts/redis.sh status

test: venv gen stack tools browser lint k8s-validate
	PATH=$(BIN):$$PATH $(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv gen
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv gen
	scripts/tools.sh buf
	$(BIN)/buf lint
	$(VENV)/bin/ruff check services tests bench deploy demo
	$(VENV)/bin/mypy services tests bench deploy demo

bench-identity: venv gen stack tools
	PATH=$(BIN):$$PATH PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m bench.identity_resolve

# With the stack up (make run): real data through every service, visitors' visits narrated.
demo: venv gen
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m demo.storefront --data $(DATA)

k8s-validate:
	scripts/k8s-validate.sh

bench-messaging: venv gen stack
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m bench.messaging_fanout

bench-profile: venv gen stack
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m bench.profile_track

# The real datasets through the public TrackBatch RPC (the stack must be running: `make run`).
DATA ?= ../shared/data
replay: venv gen
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m services.profile.cli.replay --data $(DATA) $(REPLAY_ARGS)

chaos-profile: venv gen stack
	PATH=$(BIN):$$PATH PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m bench.profile_chaos

# Next-item quality on public session data (SR-GNN protocol): recommend without targets, then score.
TRAIN ?= ../shared/data/diginetica/train_sessions.txt
TEST ?= ../shared/data/diginetica/test.tsv
OUT ?= $(RAPPORT_STATE)/eval/recs.txt
eval-sessions: venv gen
	mkdir -p "$$(dirname $(OUT))"
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m services.decision.cli.eval_sessions --train $(TRAIN) --test $(TEST) --out $(OUT)
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m services.decision.cli.eval_sessions --score --test $(TEST) --out $(OUT)

# The same on the YOOCHOOSE click sample, whose test clicks are first cut into prefix/target cases.
YOOCHOOSE ?= ../shared/data/yoochoose-clicks-100k
eval-sessions-yoochoose: venv gen
	mkdir -p $(RAPPORT_STATE)/eval
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m services.decision.cli.eval_sessions --make-test-cases $(YOOCHOOSE)/test.tsv --train $(YOOCHOOSE)/train.tsv --out $(RAPPORT_STATE)/eval/yoochoose-cases.tsv
	$(MAKE) eval-sessions TRAIN=$(YOOCHOOSE)/train.tsv TEST=$(RAPPORT_STATE)/eval/yoochoose-cases.tsv OUT=$(RAPPORT_STATE)/eval/yoochoose-recs.txt

# In process, no stack: the interceptor's path per RPC with tracing off, passed through, and exported.
bench-tracing: venv gen
	PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m bench.tracing_overhead

bench-decision: venv gen stack tools
	PATH=$(BIN):$$PATH PYTHONPATH=$(CURDIR):$(CURDIR)/gen $(PY) -m bench.decision_decide

clean:
	rm -rf gen .pytest_cache .mypy_cache .ruff_cache
