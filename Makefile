# The README's two commands: `make demo` (the main job) and `make test` (everything CI runs).
# Each creates its own virtual environment in .venv; nothing else needs to be installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test lint venv test-env dist clean

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

# What users install: dist/codellama_lsp-VERSION-py3-none-any.whl and .tar.gz (python -m build: the sdist, then the
# wheel built from it) and dist/codellama-lsp-VERSION.vsix (vsce). The version is pyproject.toml's; the extension's
# package.json must carry the same one (tests/test_dist.py checks).
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
dist: $(PY)
	$(PIP) install --quiet build
	rm -rf dist
	$(PY) -m build --outdir dist .
	cd vscode-client && npm ci --no-audit --no-fund && npm run package
	cp vscode-client/codellama-lsp.vsix dist/codellama-lsp-$(VERSION).vsix
	ls -l dist

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
