# Two commands do everything on a fresh Debian machine (README):
#   make repro   set-up + corpus + `dvc repro`  (the main job)
#   make test    set-up + the test suite          (what .ci/run calls)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
ACT := source $(VENV)/bin/activate &&

.PHONY: setup data repro test docs bench grid clean-prepared

setup:
	bash scripts/setup.sh

# Builds data/ deterministically (resumable), then checks it against data.dvc (docs/data.md).
data: setup
	$(ACT) clapkit data build --params params.yaml
	$(ACT) clapkit data check

repro: data
	$(ACT) dvc repro

test: setup
	$(ACT) HF_HUB_OFFLINE=1 python -m pytest -q

# The tables and figures of README.md and docs/ from the committed metrics (scripts/docs_results.py; after dvc repro).
docs: setup
	$(ACT) python scripts/docs_results.py

# clapkit against msclap 1.3.4 on this machine's CPU, one run, one JSON (benchmarks/README.md); GPU check: benchmarks/gpu.sh
bench: setup
	$(ACT) bash scripts/install_msclap_reference.sh && HF_HUB_OFFLINE=1 python benchmarks/run.py --out benchmarks/results-cpu.json

# The Table 1 ablation grid with the pretrained towers (clapkit/grid.py, rows in clapkit/grid_rows.py; docs/results.md):
# 15 rows, 34 experiments; the one with params.yaml's params is the workspace run (dvc repro), the others run as DVC
# experiments, 2 at a time (1 thread each).  The seeds vary contrastive training only, and every row states its
# towers, so each pretraining runs once (the workspace's, then those `clapkit grid queue` puts first; DVC's run-cache
# hands them on); then reports/ablations.json (transfer score first, in-domain second) and reports/05_ablations.html
# are written from `dvc exp show`.  About two hours on 2 cores (docs/results.md, Budget).  List without running:
# `clapkit grid plan`.  A few steps per stage, to check every row runs (a frozen tower's feature cache still covers
# the whole train split, built the first time it is needed):
# `clapkit grid queue --tiny && dvc queue start -j 2 && clapkit grid wait && clapkit grid collect --tiny`.
grid: repro
	$(ACT) clapkit grid queue
	$(ACT) dvc queue start -j 2
	$(ACT) clapkit grid wait
	$(ACT) clapkit grid collect
	$(ACT) clapkit notebook notebooks/05_ablations.ipynb reports/05_ablations.ipynb -p summary_path reports/ablations.json
