# Entry points (see README): `make quickstart`, `make quicktour`, `make test` and `make clipself-quickstart`. All set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ovseg_d2_setup_stamp
SETUP_INPUTS := requirements.txt constraints.txt setup.py tools/setup_env.sh tools/install_detectron2.py

export HF_HUB_OFFLINE ?= 1

.PHONY: setup quickstart quicktour clipself-quickstart catseg-quickstart test clean-venv

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

# CLIPSelf from a trained tiny CLIP (README, CLIPSelf): train the baseline quickstart, export its
# CLIP, distil it with CLIPSelf (region classification before/after), export the distilled CLIP,
# evaluate that exported (weight-ensembled) file. All under one fresh time-stamped folder.
# CLIPSELF_CATSEG=1 also trains configs/quickstart/catseg_tiny_clipself.yaml on the export.
ifndef CLIPSELF_QUICKSTART_OUT
CLIPSELF_QUICKSTART_OUT := output/quickstart/clipself_from_baseline/$(shell date +%Y%m%d-%H%M%S)
endif
CLIPSELF_CATSEG ?= 0
CQ := $(CLIPSELF_QUICKSTART_OUT)

clipself-quickstart: setup
	@if [ -e $(CQ) ]; then echo "$(CQ) exists: choose another CLIPSELF_QUICKSTART_OUT" >&2; exit 1; fi
	$(PY) tools/train_net.py --config-file configs/quickstart/baseline_maskclip_tiny.yaml OUTPUT_DIR $(CQ)/baseline
	$(PY) tools/export_clip.py --config-file $(CQ)/baseline/config.yaml --weights $(CQ)/baseline/model_final.pth --output $(CQ)/baseline_clip.pt
	$(PY) tools/train_net.py --config-file configs/quickstart/clipself_tiny_from_baseline.yaml MODEL.CLIP.PRETRAINED $(CQ)/baseline_clip.pt OUTPUT_DIR $(CQ)/clipself
	$(PY) tools/export_clip.py --config-file $(CQ)/clipself/config.yaml --weights $(CQ)/clipself/model_final.pth --output $(CQ)/clipself_clip.pt
	$(PY) tools/train_net.py --config-file configs/quickstart/clipself_tiny_from_baseline.yaml --eval-only MODEL.CLIP.PRETRAINED $(CQ)/clipself_clip.pt OUTPUT_DIR $(CQ)/clipself_export_eval
	@if [ "$(CLIPSELF_CATSEG)" = 1 ]; then set -x; $(PY) tools/train_net.py --config-file configs/quickstart/catseg_tiny_clipself.yaml MODEL.CLIP.PRETRAINED $(CQ)/clipself_clip.pt OUTPUT_DIR $(CQ)/catseg; fi
	@echo "CLIPSelf quickstart done: distilled open_clip checkpoint $(CQ)/clipself_clip.pt"

# CAT-Seg quickstart (README, CAT-Seg): train the baseline quickstart, export its tiny CLIP, then
# from that same file train CAT-Seg (configs/quickstart/catseg_tiny_from_baseline.yaml, 900 it)
# and, for the comparison on the same data and budget, the baseline for as many more iterations
# (CATSEG_QUICKSTART_ITERS, default 900).
# Everything under one fresh time-stamped folder.
ifndef CATSEG_QUICKSTART_OUT
CATSEG_QUICKSTART_OUT := output/quickstart/catseg_from_baseline/$(shell date +%Y%m%d-%H%M%S)
endif
KQ := $(CATSEG_QUICKSTART_OUT)
CATSEG_QUICKSTART_ITERS ?= 900

catseg-quickstart: setup
	@if [ -e $(KQ) ]; then echo "$(KQ) exists: choose another CATSEG_QUICKSTART_OUT" >&2; exit 1; fi
	$(PY) tools/train_net.py --config-file configs/quickstart/baseline_maskclip_tiny.yaml OUTPUT_DIR $(KQ)/baseline
	$(PY) tools/export_clip.py --config-file $(KQ)/baseline/config.yaml --weights $(KQ)/baseline/model_final.pth --output $(KQ)/baseline_clip.pt
	$(PY) tools/train_net.py --config-file configs/quickstart/catseg_tiny_from_baseline.yaml MODEL.CLIP.PRETRAINED $(KQ)/baseline_clip.pt SOLVER.MAX_ITER $(CATSEG_QUICKSTART_ITERS) OUTPUT_DIR $(KQ)/catseg
	$(PY) tools/train_net.py --config-file configs/quickstart/baseline_maskclip_tiny.yaml MODEL.CLIP.PRETRAINED $(KQ)/baseline_clip.pt SOLVER.MAX_ITER $(CATSEG_QUICKSTART_ITERS) OUTPUT_DIR $(KQ)/baseline_continued
	@echo "CAT-Seg quickstart done: compare the mIoU tables of $(KQ)/catseg and $(KQ)/baseline_continued (logs: log.txt)"

test: setup
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
