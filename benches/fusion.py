#!/usr/bin/env python3
"""Epilogue fusion on every zoo training step: planned peak and tensor count with and without
(`lowmem plan --train --batch B [--no-fuse] --json`), side by side. Usage:
benches/fusion.py [--batch 32] [--models resnet50,...]. Needs data/ (scripts/test.sh makes it)."""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = "alexnet,densenet121,inception_v1,inception_v2,resnet50,shufflenet,squeezenet,vgg19,zfnet512"


def plan(exe, model, batch, fuse):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        args = [exe, "plan", model, "--train", "--batch", str(batch), "--search-ms", "0", "--json", f.name]
        if not fuse:
            args.append("--no-fuse")
        subprocess.run(args, check=True, capture_output=True)
        p = json.load(open(f.name))
    tensors = sum(1 for b in p["buffers"] if b["kind"] != "workspace")
    return p["peak_bytes"], tensors, len(p["schedule"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", default=ZOO)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "lowmem"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "lowmem")
    print(f"training steps at batch {args.batch}: planned peak and tensors, unfused -> fused")
    print("| model | nodes | tensors | peak (MiB) | peak change |")
    print("|---|---|---|---|---|")
    for m in args.models.split(","):
        model = os.path.join(ROOT, "data", "models", f"{m}.onnx")
        p0, t0, n0 = plan(exe, model, args.batch, False)
        p1, t1, n1 = plan(exe, model, args.batch, True)
        print(f"| {m} | {n0} -> {n1} | {t0} -> {t1} | {p0 / 2**20:.1f} -> {p1 / 2**20:.1f} | "
              f"{100 * (p1 - p0) / p0:+.2f}% |")


if __name__ == "__main__":
    main()
