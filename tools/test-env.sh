#!/usr/bin/env bash
# Run the test suite in a fresh venv against one TransformerLens requirement.
#
#   tools/test-env.sh TL_REQUIREMENT [VENV_DIR]
#   tools/test-env.sh "transformer-lens==3.9.0"
#   tools/test-env.sh "transformer-lens>=4,<5" /tmp/venv-tl4
#
# torch is always constrained by constraints.txt (torch==2.13.0, a local CPU wheel); an
# unconstrained torch would pull several GB of CUDA wheels. Extra pytest arguments can be passed
# through PYTEST_ARGS (e.g. PYTEST_ARGS="-x -k pattern").
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || -z "${1:-}" ]]; then
    echo "usage: $0 TL_REQUIREMENT [VENV_DIR]" >&2
    exit 2
fi

TL_REQ="$1"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

slug="$(printf '%s' "$TL_REQ" | tr -c 'A-Za-z0-9.' '-' | sed -e 's/--*/-/g' -e 's/^-//' -e 's/-$//')"
VENV="${2:-$REPO/.venv-test-$slug}"
PYTHON="${PYTHON:-python3}"

log() { printf '[test-env %s] %s\n' "$TL_REQ" "$*"; }

log "repo: $REPO"
log "venv: $VENV ($("$PYTHON" --version 2>&1))"
t0=$SECONDS
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet -c constraints.txt "torch==2.13.0"
"$PY" -m pip install --quiet -c constraints.txt -e '.[test,dask]' "$TL_REQ"  # dask: study tests
install_s=$((SECONDS - t0))
log "installed in ${install_s}s: $("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("transformer-lens", "transformers", "torch")))')"

t1=$SECONDS
set +e
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" -m pytest ${PYTEST_ARGS:-}
rc=$?
set -e
tests_s=$((SECONDS - t1))
log "pytest exit code $rc; install ${install_s}s, tests ${tests_s}s"

if [[ $rc -eq 5 ]]; then
    log "FAIL: pytest collected no tests (exit 5); an empty run counts as a failure"
    exit 5
fi
exit "$rc"
