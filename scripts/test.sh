#!/usr/bin/env bash
# The whole test suite: fetch the real models (from the onnx wheel on PyPI), make the
# onnxruntime reference data, then run every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
python3 scripts/fetch_data.py
python3 scripts/make_refs.py
# NVRTC from the PyPI wheel: every CUDA kernel is compiled for sm_80 and sm_90 in the tests
# (crates/cuda/tests/nvrtc.rs), which fail rather than skip here.
LOWMEM_NVRTC="$(python3 -c 'import nvidia, pathlib; print(next(p for d in nvidia.__path__ for p in pathlib.Path(d).glob("cu13/lib/libnvrtc.so.13")))')"
export LOWMEM_NVRTC LOWMEM_REQUIRE_NVRTC=1
cargo test --workspace "$@"
# Say visibly whether the GPU tests ran (they skip without a CUDA device).
cargo test -q -p lowmem-cuda --test gpu -- --nocapture 2>&1 | grep -E "skipped|test result"
