# Two commands do everything on a fresh Debian machine (README):
#   make repro   set-up + corpus + `dvc repro`  (the main job)
#   make test    set-up + the test suite          (what .ci/run calls)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
ACT := source $(VENV)/bin/activate &&

.PHONY: setup data repro test bench clean-prepared

setup:
	bash scripts/setup.sh

# Builds data/ deterministically (resumable), then checks it against data.dvc; see README "The corpus and data.dvc".
data: setup
	$(ACT) clapkit data build --params params.yaml
	$(ACT) clapkit data check

repro: data
	$(ACT) dvc repro

test: setup
	$(ACT) HF_HUB_OFFLINE=1 python -m pytest -q

# clapkit against msclap 1.3.4 on this machine's CPU, one run, one JSON (benchmarks/README.md); GPU: benchmarks/gpu.sh
bench: setup
	$(ACT) bash scripts/install_msclap_reference.sh && HF_HUB_OFFLINE=1 python benchmarks/run.py --out benchmarks/results-cpu.json
