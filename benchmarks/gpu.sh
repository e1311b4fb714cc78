#!/usr/bin/env bash
# The benchmark on one GPU (an H100: about 5-6 minutes, within the 8 the issue allows), into one JSON:
#   bash benchmarks/gpu.sh [OUT.json] [extra run.py arguments]
# Defaults for --device cuda (benchmarks/run.py): batch sizes as /work/shared/bench (audio 256, text 1024,
# training 128), precisions fp32, bf16 autocast and bf16 weights, torch.compile (inductor) of both systems'
# towers in bf16 weights, the frontend on the GPU, files decoded by 8 DataLoader workers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results-gpu.json}"
shift || true
if [[ -f .venv/bin/activate ]]; then source .venv/bin/activate; fi
export HF_HUB_OFFLINE=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh: no CUDA device visible to torch')"
bash scripts/install_msclap_reference.sh >/dev/null  # no-op when .cache/msclap_site is complete
exec timeout 480 python benchmarks/run.py --device cuda --out "$OUT" "$@"
