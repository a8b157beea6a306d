#!/usr/bin/env bash
# The whole test suite: fetch the real models (from the onnx wheel on PyPI), make the
# onnxruntime reference data, then run every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
python3 scripts/fetch_data.py
python3 scripts/make_refs.py
cargo test --workspace "$@"
