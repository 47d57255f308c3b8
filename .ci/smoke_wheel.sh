#!/usr/bin/env bash
# Build the wheel and smoke-test it outside the checkout: a non-editable install must carry everything the library
# reads at run time. Offline (no index): the build uses .venv's setuptools, and a throwaway venv reuses .venv's
# installed packages (torch, diffusers, ...) through a .pth line, without .venv's editable cxr_diffusers finder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cxr-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS

# 1. The wheel, from a clean copy of what it is built from (a build/ left in the checkout could add stale files).
mkdir "$TMP/src"
cp -r setup.cfg pyproject.toml README.md cxr_diffusers "$TMP/src/"
find "$TMP/src" -name __pycache__ -type d -prune -exec rm -rf {} +
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --no-index --wheel-dir "$TMP/dist" "$TMP/src"
WHEEL=$(ls "$TMP"/dist/cxr_diffusers-*.whl)
"$PY" -m zipfile -l "$WHEEL" > "$TMP/wheel-files.txt"
grep -q "cxr_diffusers/model_cards/pipeline.md" "$TMP/wheel-files.txt" \
    || { echo "smoke_wheel: $(basename "$WHEEL") has no model card templates" >&2; exit 1; }

# 2. A throwaway venv: the wheel installed into it, the other packages seen through .venv's site-packages.
"$PY" -m venv --without-pip "$TMP/venv"
VPY=$TMP/venv/bin/python
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    > "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/reuse-dot-venv.pth"
"$VPY" -m pip install --quiet --no-deps --no-index --ignore-installed --disable-pip-version-check "$WHEEL"

# 3. From a folder outside the checkout: the console script, then the Python smoke test.
mkdir "$TMP/cwd"
cp .ci/smoke_wheel.py "$TMP/cwd/"
cd "$TMP/cwd"
export HF_HUB_OFFLINE=1 HF_HOME="$TMP/hf-home"
"$TMP/venv/bin/cxr-diffusers" --help > help.txt
grep -q "generate" help.txt || { echo "smoke_wheel: cxr-diffusers --help lists no commands" >&2; exit 1; }
# the templates the checkout has are the ones the wheel must carry
CXR_EXPECTED_TEMPLATES=$(cd "$ROOT/cxr_diffusers/model_cards" && ls ./*.md | sed 's|^\./||; s|\.md$||' | paste -sd, -) \
    "$VPY" smoke_wheel.py
# the bundled classifier lives in the checkout's pretrained/: outside it, classify asks for --model in one sentence
status=0; "$TMP/venv/bin/cxr-diffusers" classify smoke-output/smoke.png 2> classify.txt || status=$?
[ "$status" -eq 2 ] && grep -q "pass --model" classify.txt \
    || { echo "smoke_wheel: classify without the bundled model: exit $status, $(cat classify.txt)" >&2; exit 1; }
echo "smoke_wheel: $(basename "$WHEEL") built, installed and tested outside the checkout in $((SECONDS - START)) s"
