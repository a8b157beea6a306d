#!/usr/bin/env python3
"""Fetch test data for lowmem from PyPI wheels (no other network access needed).

* models: the nine "light" ONNX model-zoo graphs shipped inside the onnx wheel
  (onnx/backend/test/data/light/light_*.onnx) -> data/models/<name>.onnx
* digits: sklearn/datasets/data/digits.csv.gz from the scikit-learn wheel
  -> data/digits.csv.gz

Usage: python3 scripts/fetch_data.py [--models] [--digits]   (default: both)
Idempotent: does nothing for a part whose files are all present.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
MODELS_DIR = os.path.join(DATA, "models")

ONNX_REQ = "onnx==1.23.2"
SKLEARN_REQ = "scikit-learn==1.9.1"

LIGHT_PREFIX = "onnx/backend/test/data/light/light_"
# wheel name (without light_ prefix) -> our name
MODEL_NAMES = {
    "bvlc_alexnet": "alexnet",
    "densenet121": "densenet121",
    "inception_v1": "inception_v1",
    "inception_v2": "inception_v2",
    "resnet50": "resnet50",
    "shufflenet": "shufflenet",
    "squeezenet": "squeezenet",
    "vgg19": "vgg19",
    "zfnet512": "zfnet512",
}
DIGITS_MEMBER = "sklearn/datasets/data/digits.csv.gz"


def download_wheel(req, tmpdir):
    """Download the wheel of `req` for the current platform/interpreter into tmpdir."""
    cmd = [sys.executable, "-m", "pip", "download", req, "--no-deps",
           "--only-binary=:all:", "-d", tmpdir, "--quiet"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    wheels = glob.glob(os.path.join(tmpdir, "*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {tmpdir}, got {wheels}")
    return wheels[0]


def _write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def fetch_models():
    targets = {k: os.path.join(MODELS_DIR, v + ".onnx") for k, v in MODEL_NAMES.items()}
    if all(os.path.exists(p) for p in targets.values()):
        print(f"models: all {len(targets)} present in {MODELS_DIR}, skipping")
        return
    with tempfile.TemporaryDirectory() as tmp:
        whl = download_wheel(ONNX_REQ, tmp)
        with zipfile.ZipFile(whl) as z:
            names = set(z.namelist())
            for key, path in targets.items():
                member = f"{LIGHT_PREFIX}{key}.onnx"
                if member not in names:
                    raise RuntimeError(f"{member} not found in {whl}")
                _write_atomic(path, z.read(member))
                print(f"models: wrote {os.path.relpath(path, ROOT)}")


def fetch_digits():
    path = os.path.join(DATA, "digits.csv.gz")
    if os.path.exists(path):
        print(f"digits: {os.path.relpath(path, ROOT)} present, skipping")
        return
    with tempfile.TemporaryDirectory() as tmp:
        whl = download_wheel(SKLEARN_REQ, tmp)
        with zipfile.ZipFile(whl) as z:
            _write_atomic(path, z.read(DIGITS_MEMBER))
    print(f"digits: wrote {os.path.relpath(path, ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", action="store_true", help="fetch the light zoo models")
    ap.add_argument("--digits", action="store_true", help="fetch the sklearn digits data set")
    args = ap.parse_args()
    if not args.models and not args.digits:
        args.models = args.digits = True
    if args.models:
        fetch_models()
    if args.digits:
        fetch_digits()


if __name__ == "__main__":
    main()
