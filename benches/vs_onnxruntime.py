#!/usr/bin/env python3
"""Forward-pass time of lowmem's CPU executor against onnxruntime, side by side in one run.

Both time only the forward pass (model loading excluded), the median of --iters runs after a
warm-up, with the same number of threads (all cores). Uses the randomized zoo models made by
scripts/make_refs.py. Usage: benches/vs_onnxruntime.py [--models resnet50,...] [--batch 1]
"""
import argparse
import json
import os
import subprocess
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ort_time(model, batch, iters):
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch] + list(inp.shape[1:])
    if batch != 1:
        raise SystemExit("onnxruntime runs these batch-1 models at batch 1 only; use --batch 1")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess.run(None, {inp.name: x})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "lowmem"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "lowmem")
    print(f"{'model':<14} {'batch':>5} {'lowmem ms':>10} {'ort ms':>10} {'lowmem/ort':>10}")
    for m in args.models.split(","):
        model = os.path.join(ROOT, "data", "ref", m, "model.onnx")
        out = subprocess.run([exe, "bench", model, "--batch", str(args.batch), "--iters", str(args.iters), "--json"],
                             check=True, capture_output=True, text=True).stdout
        ours = json.loads(out.strip().splitlines()[-1])["median_s"]
        theirs = ort_time(model, args.batch, args.iters)
        print(f"{m:<14} {args.batch:>5} {ours * 1e3:>10.1f} {theirs * 1e3:>10.1f} {ours / theirs:>10.2f}")


if __name__ == "__main__":
    main()
