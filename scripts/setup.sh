#!/usr/bin/env bash
# Creates .venv and installs lakeinfer with every backend and the test tools.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lakeinfer needs Python >= 3.11")'
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.lakeinfer-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing lakeinfer[all,dev] into .venv (the first time takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip wheel
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all,dev]"
  echo "$want" > "$stamp"
fi
