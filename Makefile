# dd-detectron: `make demo` runs the pipeline on the embedded synthetic data, `make test` the tests.
# Both set up .venv first (dev/setup_env.py; idempotent: a second run does nothing).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.dd-setup-done
# A DETECTRON2_SOURCE given on the command line or in the environment is always (re)checked.
FORCE_SETUP := $(if $(DETECTRON2_SOURCE),force-setup)

.PHONY: setup demo demo-full test lint clean force-setup

setup: $(STAMP)

$(STAMP): setup.py dev/setup_env.py $(FORCE_SETUP)
	$(PYTHON) dev/setup_env.py --venv $(VENV)
	touch $@

# The pipeline on the demo profile of the synthetic data (quick to learn): one seed, single-view
# labels for comparison, label pictures (report and pictures in output/demo).
demo: setup
	$(VPY) tools/run_pipeline.py --config-file configs/Synthetic/pipeline_nR18-FPN_demo.yaml

# Full schedules, 3 seeds, every ablation (report in output/demo-full).
demo-full: setup
	$(VPY) tools/run_pipeline.py --config-file configs/Synthetic/pipeline_nR18-FPN_full.yaml

test: setup
	$(VPY) -m pytest tests -q

# Formatting, import order and flake8 (settings in pyproject.toml and setup.cfg); not part of test.
lint: setup
	$(VPY) -m black --check .
	$(VPY) -m isort --check-only .
	$(VPY) -m flake8 .

clean:
	rm -rf $(VENV) build output
