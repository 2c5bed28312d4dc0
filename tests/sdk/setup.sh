#!/usr/bin/env bash
# Creates target/sdk-venv with the official `orgo` Python SDK (from PyPI), used by
# tests/api_sdk.rs. The SDK's source needs Python >= 3.12 (it uses PEP 701 f-strings); Debian 12
# has 3.11, so this looks for a newer interpreter (PATH, then pyenv). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/sdk-venv
if "$venv/bin/python" -c 'import orgo' 2>/dev/null; then
    exit 0
fi
python=""
for candidate in python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3 \
        "$HOME"/.pyenv/versions/3.12*/bin/python3 python3; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "tests/sdk/setup.sh: no Python >= 3.12 found; the orgo SDK test will be skipped" >&2
    exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "orgo==0.0.47"
"$venv/bin/python" -c 'import orgo, importlib.metadata as m; print("orgo", m.version("orgo"), "ready in target/sdk-venv")'
