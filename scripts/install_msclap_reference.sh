#!/usr/bin/env bash
# Test-only: unpack the reference implementation (msclap 1.3.4 + torchlibrosa 0.1.0, both MIT) into a folder
# outside the clapkit package, for the parity tests in tests/test_msclap_parity.py.  Nothing is installed into
# the environment: the wheels are downloaded without dependencies and unzipped; the tests put the folder on
# sys.path themselves.  Idempotent: a complete folder is left alone.
#
#   scripts/install_msclap_reference.sh [TARGET_DIR]      (default: <repo>/.cache/msclap_site, gitignored)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-${MSCLAP_SITE:-$repo_root/.cache/msclap_site}}"
python="${PYTHON:-python}"
marker="$target/.complete-msclap-1.3.4-torchlibrosa-0.1.0"

if [[ -f "$marker" ]]; then
    echo "msclap reference already present in $target"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/msclap_ref.XXXXXX")"
trap 'rm -rf "$work"' EXIT

"$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" \
    "msclap==1.3.4" "torchlibrosa==0.1.0"

# Unpack into a sibling temp folder, then swap it in, so an interrupted run never leaves a half-filled target.
mkdir -p "$work/site"
for whl in "$work"/wheels/*.whl; do
    "$python" - "$whl" "$work/site" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
done
for needed in msclap/models/htsat.py msclap/models/audio.py msclap/models/clap.py torchlibrosa/stft.py; do
    [[ -f "$work/site/$needed" ]] || { echo "error: $needed missing after unpacking the wheels" >&2; exit 1; }
done
touch "$work/site/$(basename "$marker")"

mkdir -p "$(dirname "$target")"
rm -rf "$target.old"
[[ -e "$target" ]] && mv "$target" "$target.old"
mv "$work/site" "$target"
rm -rf "$target.old"
echo "msclap reference unpacked into $target"
