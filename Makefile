# otpd: `make run` serves on the dev defaults; `make test` runs the whole suite.
# Both create .venv and install the pinned dependencies (constraints.txt) on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint format bench lock clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "otpd needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/otpd serve

# Two workers (pytest-xdist): most tests wait on real servers and sockets, so the suite
# takes about half the time on two cores. PYTEST_ARGS adds options, e.g. -m "not slow".
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check otpd tests bench
	$(BIN)/ruff format --check otpd tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format otpd tests bench
	$(BIN)/ruff check --fix otpd tests bench

bench: $(STAMP)
	@for script in bench/*.py; do \
		case $$script in */__init__.py|*/_*) continue;; esac; \
		echo "== $$script"; $(BIN)/python $$script || exit 1; \
	done

# Re-resolve the pins (run deliberately, then commit constraints.txt).
lock:
	rm -rf /tmp/otpd-lock && $(PYTHON) -m venv /tmp/otpd-lock
	/tmp/otpd-lock/bin/python -m pip install --quiet -e '.[test,dev]'
	/tmp/otpd-lock/bin/python -m pip freeze --exclude-editable | grep -v '^otpd' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
