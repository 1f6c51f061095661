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
	$(PY) -m envs.native
	$(PY) -m pytest -q

envs: install
	$(VENV)/bin/adaptbed envs

clean:
	rm -rf $(VENV) *.egg-info

# --- GPU check on a lent machine (PyTorch + tensorboard preinstalled, no network) --------------
# `make gpu-wheels` (here, with network) downloads into the git-ignored .whl/ the Python 3.12
# manylinux x86_64 wheels of what such a machine lacks: gymnasium, mujoco, stable-baselines3
# and their non-torch dependencies (pins: the set with which `make gpu-check` passed on 2026-11-27;
# some, such as cloudpickle and pytest, differ from the CPU venv's; numpy, pillow, packaging and
# a few others come from the machine's own torch and tensorboard installs).
# `make gpu-check` (there) installs them into /tmp/site, builds the native stepping loop in
# place if it can, and runs the GPU tests and the quick GPU benchmark, within 10 minutes.
GPU_WHEELS := gymnasium==1.4.0 farama-notifications==0.0.6 cloudpickle==2.1.0 \
	mujoco==3.3.0 glfw==2.11.0 pyopengl==3.1.10 etils==1.15.0 zipp==4.1.2 \
	stable-baselines3==2.9.2 tqdm==4.70.1 imageio==2.38.1 \
	matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 \
	pyparsing==3.3.2 python-dateutil==2.9.0.post0 six==1.17.0 \
	pytest==9.0.3 iniconfig==2.3.0 pluggy==1.6.0 pygments==2.20.0
GPU_SITE := /tmp/site

.PHONY: gpu-wheels gpu-check

gpu-wheels:
	mkdir -p .whl
	for req in $(GPU_WHEELS); do \
		$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
			--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
			--platform manylinux2014_x86_64 -d .whl "$$req" || exit 1; \
	done
	du -sh .whl

gpu-check:
	rm -rf $(GPU_SITE)
	$(PYTHON) -m pip install --quiet --no-index --no-deps --target $(GPU_SITE) .whl/*.whl
	# the native stepping loop, where that machine has a C compiler (else the Python loop runs)
	-$(PYTHON) setup.py --quiet build_ext --inplace
	PYTHONPATH=$(CURDIR):$(GPU_SITE) timeout 600 sh -c '$(PYTHON) -m pytest -q -m gpu tests && \
		$(PYTHON) -m experiments.bench --device cuda --quick --json'
