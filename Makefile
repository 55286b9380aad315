# The two set-up commands: `make demo` (no services needed) and `make test` (installs and starts
# everything the suite needs). Everything else here is a building block of those two.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
VELO := $(VENV)/bin/velo
STAMP := $(VENV)/.installed
# The compiled operators core (native/, Rust): built into the venv where cargo exists, rebuilt
# when its sources change. Without cargo everything runs on the Python operators.
CARGO ?= $(shell command -v cargo || ls $(HOME)/.cargo/bin/cargo 2>/dev/null)
NATIVE_STAMP := $(VENV)/.native-installed
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)

.PHONY: demo test venv system-deps services-up services-down lint bench model clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
ifeq ($(CARGO),)
	@echo "cargo not found: velo_native not built, the operators run on the Python implementation"
else
	PATH="$(dir $(CARGO)):$$PATH" $(VENV)/bin/pip install -q ./native
	touch $(NATIVE_STAMP)
endif

venv: $(STAMP) $(NATIVE_STAMP)

demo: venv
	$(VELO) demo

system-deps:
	bash scripts/install-system-deps.sh

services-up: venv
	$(VELO) services up

services-down:
	-$(VELO) services down

test: system-deps venv
	bash scripts/run-tests.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(VENV)/bin/pip install -q zeep==4.3.3
	$(VENV)/bin/pip install -q --no-deps -r bench/requirements.txt
	$(VENV)/bin/python -m bench.replay

# Every model number of docs/model.md, reproduced from the HKJC files (about 30 minutes).
HKJC ?= ../shared/data/racing/hkjc
model: venv
	bash scripts/reproduce-model.sh $(HKJC) .data/model-run

clean:
	rm -rf $(VENV) .data native/target
