# adaptbed: the two commands of README.md.
#   make demo   set everything up, then run the main job (meta-train and evaluate navigation-2d)
#   make test   set everything up, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test envs clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The local CPU build of torch first: anything else would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/adaptbed quickstart

test: install
	$(PY) -m pytest -q

envs: install
	$(VENV)/bin/adaptbed envs

clean:
	rm -rf $(VENV) *.egg-info
