#!/usr/bin/env python3
"""PyTorch eager peers of lowmem's built-in benchmark models, on the same GPU.

Builds the same architectures as `lowmem bench builtin:resnet50` / `builtin:bert-base`
(src/models.rs): a bottleneck ResNet-50 (224x224, 1000 classes) and a pre-LayerNorm
BERT-base-like encoder (12 layers, hidden 768, 12 heads, seq 128, FFN 3072, dropout 0.1 on
attention probabilities and FFN output, exact GELU, mean pooling, 2 classes). Times one
training step (forward, softmax cross-entropy, backward, SGD momentum 0.9) and reports
torch.cuda.max_memory_allocated. Prints one JSON line per model.

Usage: python3 benches/gpu_torch.py [--iters 10] [--resnet-batch 64] [--bert-batch 32]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, project):
        super().__init__()
        cout = 4 * width
        self.c1 = nn.Conv2d(cin, width, 1, bias=False)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.b2 = nn.BatchNorm2d(width)
        self.c3 = nn.Conv2d(width, cout, 1, bias=False)
        self.b3 = nn.BatchNorm2d(cout)
        self.proj = None
        if project:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        y = self.b3(self.c3(y))
        return F.relu(y + (self.proj(x) if self.proj is not None else x))


class ResNet50(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for i, (n, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                layers.append(Bottleneck(cin, width, stride, j == 0))
                cin = 4 * width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


class Layer(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.h = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.f1, self.f2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        b, s, d = x.shape
        n = self.ln1(x)
        q, k, v = (m(n).view(b, s, self.h, d // self.h).transpose(1, 2) for m in (self.q, self.k, self.v))
        p = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, -1), 0.1, True)
        ctx = (p @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(ctx)
        return x + F.dropout(self.f2(F.gelu(self.f1(self.ln2(x)))), 0.1, True)


class Encoder(nn.Module):
    def __init__(self, layers=12, d=768, heads=12, ffn=3072, classes=2):
        super().__init__()
        self.layers = nn.Sequential(*[Layer(d, heads, ffn) for _ in range(layers)])
        self.fc = nn.Linear(d, classes)

    def forward(self, x):
        return self.fc(self.layers(x).mean(1))


def bench(name, model, x, classes, iters):
    dev = torch.device("cuda")
    model = model.to(dev).train()
    x = x.to(dev)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 if classes > 2 else 0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"model": name, "batch": x.shape[0], "median_s": times[len(times) // 2],
                      "min_s": times[0], "max_memory_allocated": torch.cuda.max_memory_allocated(),
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--resnet-batch", type=int, default=64)
    ap.add_argument("--bert-batch", type=int, default=32)
    a = ap.parse_args()
    torch.manual_seed(0)
    bench("resnet50", ResNet50(), torch.randn(a.resnet_batch, 3, 224, 224), 1000, a.iters)
    torch.cuda.empty_cache()
    bench("bert-base", Encoder(), torch.randn(a.bert_batch, 128, 768), 2, a.iters)


if __name__ == "__main__":
    main()
