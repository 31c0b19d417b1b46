# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs
# into .venv (torch pinned by constraints.txt) and then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
PYTEST_WORKERS ?= 2

DIST_VENV ?= build/dist-venv

.PHONY: demo test test-fast install install-dev lint docs dist-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(PIP) -e '.[cli]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/paranorm demo

test: install-dev
	$(PY) -m pytest -n $(PYTEST_WORKERS)

test-fast: install-dev
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks examples tools conftest.py
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

# The documentation site, built strictly (a broken link or reference fails), into build/site.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d build/site

# The sdist and the wheel, each installed into a fresh venv (torch from constraints.txt) and
# smoke-tested there without the cli extra.
dist-check: install-dev
	rm -rf dist $(DIST_VENV)
	$(PY) -m build --outdir dist .
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt dist/*.whl
	cd build && ../$(DIST_VENV)/bin/python ../tests/smoke/installed.py
	$(DIST_VENV)/bin/python -m pip install --disable-pip-version-check -q --force-reinstall --no-deps dist/*.tar.gz
	cd build && ../$(DIST_VENV)/bin/python ../tests/smoke/installed.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .hypothesis src/*.egg-info
