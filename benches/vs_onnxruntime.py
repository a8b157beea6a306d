#!/usr/bin/env python3
"""Forward-pass time of lowmem's CPU executor against onnxruntime, side by side in one run.

Both time only the forward pass (model loading excluded), the median of --iters runs after a
warm-up, with the same number of threads (all cores), on the same ONNX file: the zoo models
made by scripts/make_refs.py at batch 1, and at other batch sizes (and for builtin models such
as the small BERT-style `encoder`) the file `lowmem export --batch N` writes. lowmem's rate is
also given as a fraction of the machine's measured peak f32 rate (`lowmem bench`).
Usage: benches/vs_onnxruntime.py [--models resnet50,squeezenet,encoder] [--batch 1,8]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ort_time(model, batch, iters):
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    assert shape[0] == batch, f"{model}: input batch {shape[0]}, expected {batch}"
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
    ap.add_argument("--models", default="resnet50,squeezenet,encoder")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "lowmem"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "lowmem")
    tmp = tempfile.mkdtemp()
    print(f"{'model':<14} {'batch':>5} {'lowmem ms':>10} {'ort ms':>10} {'lowmem/ort':>10} {'lowmem % of peak':>17}")
    for m in args.models.split(","):
        for batch in map(int, args.batch.split(",")):
            model = os.path.join(ROOT, "data", "ref", m, "model.onnx")
            if batch != 1 or not os.path.exists(model):
                src = model if os.path.exists(model) else f"builtin:{m}"
                model = os.path.join(tmp, f"{m}_b{batch}.onnx")
                subprocess.run([exe, "export", src, "--batch", str(batch), "-o", model],
                               check=True, capture_output=True)
            out = subprocess.run([exe, "bench", model, "--iters", str(args.iters), "--json"],
                                 check=True, capture_output=True, text=True).stdout
            j = json.loads(out.strip().splitlines()[-1])
            ours = j["median_s"]
            theirs = ort_time(model, batch, args.iters)
            print(f"{m:<14} {batch:>5} {ours * 1e3:>10.1f} {theirs * 1e3:>10.1f} {ours / theirs:>10.2f} "
                  f"{100 * j['fraction_of_peak']:>16.1f}%")


if __name__ == "__main__":
    main()
