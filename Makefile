# pdscaler developer entry points. `make plan` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: plan test venv components lint test-unit test-integration test-e2e bench crd clean image

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## Main job: plan the embedded default (the paper's worked example).
plan: venv
	$(BIN)/pdscaler plan

## Real components for the integration and end-to-end tiers (cached outside the repository).
components:
	bash scripts/install-prometheus.sh
	bash scripts/install-kube.sh
	bash scripts/install-kwok.sh
	bash scripts/install-vllm.sh
	bash scripts/install-helm.sh

lint: venv
	$(BIN)/ruff check operator planner tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit --doctest-modules planner operator/pdscaler $(PYTEST_ARGS)

test-integration: venv components
	$(BIN)/python -m pytest -q tests/integration -m "integration and not e2e" $(PYTEST_ARGS)

test-e2e: venv components
	$(BIN)/python -m pytest -q tests -m e2e $(PYTEST_ARGS)

## The whole suite: lint, type checks, import contract, all test tiers.
test: venv components lint
	$(BIN)/python -m pytest -q tests --doctest-modules planner operator/pdscaler $(PYTEST_ARGS)

## The operator image (needs root: mmdebstrap and rootful podman; docs/install.md).
image:
	bash scripts/build-image.sh

bench: venv
	$(BIN)/python benchmarks/plan_speed.py

## Mutation testing (slow, not part of CI): writes docs/mutation.md. Narrow or widen it with
## e.g. MUTATION_ARGS="--sample 0 --jobs 2 planner/models.py" (docs/mutation.md says how).
MUTATION_ARGS ?= --sample 100 --jobs 2
.PHONY: mutation
mutation: venv
	$(BIN)/python scripts/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
