# dd-detectron: `make demo` runs the pipeline on the embedded synthetic data, `make test` the tests.
# Both set up .venv first (dev/setup_env.py; idempotent: a second run does nothing).
#   make setup PYTHON=python3.12        the venv from another interpreter (3.10 to 3.13)
#   make setup WHEELHOUSE=DIR           install from a folder of wheels alone (no network)
#   make wheelhouse WHEELHOUSE=DIR [PYTHON_VERSION=3.12 PLATFORM=TAG WITH_TORCH=1 TARGET_HAS=FILE]
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.dd-setup-done
# Set-up is (re)checked whenever the command line or the environment names what it installs
# from: DETECTRON2_SOURCE, WHEELHOUSE, or another PYTHON.
PYTHON_CHOSEN := $(filter command line environment,$(origin PYTHON))
FORCE_SETUP := $(if $(DETECTRON2_SOURCE)$(WHEELHOUSE)$(PYTHON_CHOSEN),force-setup)

.PHONY: setup demo demo-full test test-fast lint wheelhouse gpu-check clean force-setup

setup: $(STAMP)

# The stamp is written only after a set-up that succeeded, so a failed one is retried.
$(STAMP): setup.py dev/setup_env.py $(FORCE_SETUP)
	$(PYTHON) dev/setup_env.py --venv $(VENV) $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) \
		$(if $(PYTHON_CHOSEN),--python-chosen)
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

# Everything but the tests marked slow (they train, start processes or run a pipeline).
test-fast: setup
	$(VPY) -m pytest tests -q -m "not slow"

# Formatting, import order and flake8 (settings in pyproject.toml and setup.cfg); not part of test.
lint: setup
	$(VPY) -m black --check .
	$(VPY) -m isort --check-only .
	$(VPY) -m flake8 .

# On a connected machine: the wheels a target needs, for `make setup WHEELHOUSE=DIR` there.
wheelhouse:
	@test -n "$(WHEELHOUSE)" || { echo "make wheelhouse: give WHEELHOUSE=DIR" >&2; exit 2; }
	$(PYTHON) dev/make_wheelhouse.py --dest $(WHEELHOUSE) \
		$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(PLATFORM),--platform "$(PLATFORM)") $(if $(WITH_TORCH),--with-torch) \
		$(if $(TARGET_HAS),--target-has $(TARGET_HAS))

# The GPU machine's check, set-up included (dev/gpu_check.sh; summary in output/gpu_check).
gpu-check:
	PYTHON=$(PYTHON) bash dev/gpu_check.sh $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))

clean:
	rm -rf $(VENV) build output
