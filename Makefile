# The README's two commands: `make demo` (the main job) and `make test` (everything CI runs).
# Each creates its own virtual environment in .venv; nothing else needs to be installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test lint venv test-env clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)
	$(PIP) install --quiet -e .

test-env: $(PY)
	bash scripts/setup-test-env.sh $(VENV)

demo: venv
	$(VENV)/bin/codellama-lsp complete examples/demo.py --line 6 --character 0 --model demo

# Style, types and declared dependencies (configured in pyproject.toml); seconds, so it runs before pytest.
lint: test-env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/deptry .

test: lint
	$(PY) -m pytest -ra tests

clean:
	rm -rf $(VENV) .cache build *.egg-info
