# Two entry points (see README): `make quickstart` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ovseg_d2_setup_stamp
SETUP_INPUTS := requirements.txt constraints.txt setup.py tools/setup_env.sh tools/install_detectron2.py

export HF_HUB_OFFLINE ?= 1

.PHONY: setup quickstart quicktour test clean-venv

setup: $(STAMP)

# Re-runs only when an input changes, so a warm `make setup` takes well under a second.
$(STAMP): $(SETUP_INPUTS)
	bash tools/setup_env.sh $(VENV)
	touch $@

# Each run writes to a fresh, time-stamped OUTPUT_DIR: an earlier run's checkpoints are never touched.
QUICKSTART_CONFIG ?= configs/quickstart/baseline_maskclip_tiny.yaml
QUICKSTART_OUT ?= output/quickstart/$(basename $(notdir $(QUICKSTART_CONFIG)))/$(shell date +%Y%m%d-%H%M%S)

quickstart: setup
	$(PY) tools/train_net.py --config-file $(QUICKSTART_CONFIG) OUTPUT_DIR $(QUICKSTART_OUT)

# The quickstart model (the newest earlier run, else a fresh one) segments a built-in image with a
# vocabulary via tools/demo.py; the picture goes to a new output/quicktour/<time>/ folder.
quicktour: setup
	$(PY) tools/quicktour.py

test: setup
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
