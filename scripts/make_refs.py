#!/usr/bin/env python3
"""Produce onnxruntime reference data for the lowmem Rust tests.

Zoo part (needs data/models/*.onnx from scripts/fetch_data.py):
  data/ref/<name>/model.onnx        the light model with every float ConstantOfShape
                                    replaced by a random float32 initializer
  data/ref/<name>/b1/input_0.pb     batch-1 input  (TensorProto, name = graph input)
  data/ref/<name>/b1/output_0.pb    batch-1 output (TensorProto, name = graph output)
  data/ref/<name>/b4/input_0.pb     4 independent samples concatenated on axis 0
  data/ref/<name>/b4/output_0.pb    the 4 per-sample ORT outputs concatenated on axis 0
Op part:
  data/ref/ops/<case>/model.onnx, input_K.pb, output_K.pb
  data/ref/ops/index.json           [{"name", "description", "opset"}...]

Usage: python3 scripts/make_refs.py [--models a,b,...] [--ops-only] [--zoo-only] [--force]
"""
import argparse
import json
import shutil
import os
import sys
import time
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(ROOT, "data", "models")
REF_DIR = os.path.join(ROOT, "data", "ref")
ZOO = ["alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
       "shufflenet", "squeezenet", "vgg19", "zfnet512"]


# ----------------------------------------------------------------------------- utils

def session(model_bytes):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def write_tensor(path, arr, name):
    t = numpy_helper.from_array(np.asarray(arr, order="C"), name)  # (ascontiguousarray makes 0-d 1-d)
    with open(path, "wb") as f:
        f.write(t.SerializeToString())


def seed_of(s):
    return zlib.crc32(s.encode())


# ----------------------------------------------------------------------------- zoo

def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def materialize_weights(model, seed):
    """Replace each float ConstantOfShape (shape from an int64 initializer) by a random
    float32 initializer. Returns the number of replaced nodes."""
    g = model.graph
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in g.initializer}
    consumers = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, k))

    def role(name, shape):
        """(kind, params) describing how to draw the tensor named `name`."""
        uses = consumers.get(name, [])
        for n, k in uses:
            op = n.op_type
            if op == "Conv" and k == 1:
                return ("he", int(np.prod(shape[1:])))
            if op == "Gemm" and k == 1:
                trans_b = _attr(n, "transB", 0)
                return ("he", int(shape[1] if trans_b else shape[0]))
            if op in ("Conv", "Gemm") and k == 2:
                return ("normal", 0.01)
            if op == "BatchNormalization":
                return {1: ("uniform", (0.8, 1.2)), 2: ("normal", 0.05),
                        3: ("normal", 0.05), 4: ("uniform", (0.8, 1.2))}[k]
            if op == "Mul":
                return ("uniform", (0.8, 1.2))
            if op in ("Add", "Sum"):
                return ("normal", 0.05)
            if op in ("Unsqueeze", "Reshape", "Identity") and k == 0:
                # follow the value; for Reshape use the reshaped shape if static
                out_shape = shape
                if op == "Reshape" and n.input[1] in inits:
                    tgt = numpy_helper.to_array(inits[n.input[1]]).tolist()
                    if all(d > 0 for d in tgt) and int(np.prod(tgt)) == int(np.prod(shape)):
                        out_shape = tgt
                return role(n.output[0], out_shape)
        raise RuntimeError(f"don't know how to initialise {name} used by "
                           f"{[(n.op_type, k) for n, k in uses]}")

    new_nodes, new_inits, replaced, dead_shapes = [], [], 0, set()
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            val = _attr(n, "value")
            if val is not None and val.data_type == TensorProto.FLOAT:
                shape = [int(d) for d in numpy_helper.to_array(inits[n.input[0]]).ravel()]
                kind, p = role(n.output[0], shape)
                if kind == "he":
                    arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / p))
                elif kind == "normal":
                    arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(p)
                else:
                    arr = rng.uniform(p[0], p[1], size=shape).astype(np.float32)
                new_inits.append(numpy_helper.from_array(arr, n.output[0]))
                dead_shapes.add(n.input[0])
                replaced += 1
                continue
        new_nodes.append(n)

    still_used = {x for n in new_nodes for x in n.input}
    dead_shapes -= still_used
    keep_inits = [i for i in g.initializer if i.name not in dead_shapes]
    # IR version < 4: every initializer must also be a graph input; keep that convention
    ir3 = model.ir_version < 4
    keep_inputs = [i for i in g.input if i.name not in dead_shapes]
    if ir3:
        keep_inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
                        for t in new_inits]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    del g.input[:]
    g.input.extend(keep_inputs)
    return replaced


BN_CHAIN_OPS = ("Relu", "GlobalAveragePool", "AveragePool", "Reshape", "Flatten", "Dropout",
                "Identity")


def calibrate(model, name, seed, logit_std=2.0):
    """Keep activations O(1): the random weights make the (random or partly real) BN
    statistics meaningless and residual nets blow up (resnet50 logits ~1e4, shufflenet
    ~1e6). So set every BatchNormalization's mean/var to the statistics its input really
    has on a calibration sample (times a U(0.8,1.2) / plus N(0,0.05)*std jitter), level
    by level, then rescale the last Conv/Gemm before a final Softmax so the logits
    have std ~logit_std (an exact linear rescale: everything in between is positively
    homogeneous)."""
    g = model.graph
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in g.initializer}
    (inp,) = data_inputs(model)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = rng.standard_normal(shape, dtype=np.float32)
    bns = [n for n in g.node if n.op_type == "BatchNormalization"]
    out_name = g.output[0].name

    def run_with(extra, feeds=None):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        for e in extra:
            if e not in have:
                m.graph.output.append(helper.make_tensor_value_info(e, TensorProto.FLOAT, None))
                have.add(e)
        names = [o.name for o in m.graph.output]
        if feeds is not None:
            # turn the fed initializers into plain graph inputs (they are in g.input already)
            keep = [t for t in m.graph.initializer if t.name not in feeds]
            del m.graph.initializer[:]
            m.graph.initializer.extend(keep)
        sess = session(m.SerializeToString())
        if feeds is None:
            return dict(zip(names, sess.run(None, {inp.name: x})))
        return names, sess

    # BN "level": number of BatchNormalization nodes on the longest path before it.
    # Calibrate level by level (each level's input statistics are exact given the
    # already-calibrated levels above); updating all at once diverges.
    level_of_value, levels = {}, {}
    for n in g.node:
        lv = max([level_of_value.get(i, 0) for i in n.input] + [0])
        if n.op_type == "BatchNormalization":
            levels.setdefault(lv, []).append(n)
            lv += 1
        for o in n.output:
            level_of_value[o] = lv
    passes = len(levels)
    if bns:
        # IR<4: initializers are graph inputs too; dropping the BN-stat initializers in the
        # calibration copy lets them be fed at run time, so one session serves every level
        assert model.ir_version < 4
        stat = {}
        for n in bns:
            for i in n.input[3:5]:
                stat[i] = numpy_helper.to_array(inits[i]).astype(np.float32)
        names, sess = run_with([n.input[0] for n in bns], feeds=set(stat))
        for lv in sorted(levels):
            res = dict(zip(names, sess.run(None, {inp.name: x, **stat})))
            for n in levels[lv]:
                a = res[n.input[0]].astype(np.float64)
                axes = (0,) + tuple(range(2, a.ndim))
                mean = a.mean(axis=axes)
                var = a.var(axis=axes) + 1e-3
                jm = rng.standard_normal(mean.shape) * 0.05
                jv = rng.uniform(0.8, 1.2, size=var.shape)
                stat[n.input[3]] = (mean + jm * np.sqrt(var)).astype(np.float32)
                stat[n.input[4]] = (var * jv).astype(np.float32)
        for k, v in stat.items():
            inits[k].CopyFrom(numpy_helper.from_array(v, k))

    # final classifier rescale
    producer = {o: n for n in g.node for o in n.output}
    sm = producer.get(out_name)
    scale = 1.0
    if sm is not None and sm.op_type == "Softmax":
        logits = sm.input[0]
        n = producer.get(logits)
        while n is not None and n.op_type in BN_CHAIN_OPS:
            n = producer.get(n.input[0])
        def weight_init(v):  # follow Reshape/Unsqueeze/Identity back to an initializer
            while v not in inits and v in producer and producer[v].op_type in ("Reshape", "Unsqueeze", "Identity"):
                v = producer[v].input[0]
            return v if v in inits else None

        if n is not None and n.op_type in ("Conv", "Gemm") and all(weight_init(i) for i in n.input[1:]):
            l = run_with([logits])[logits]
            scale = logit_std / float(l.std())
            for i in {weight_init(i) for i in n.input[1:]}:
                a = numpy_helper.to_array(inits[i]) * np.float32(scale)
                inits[i].CopyFrom(numpy_helper.from_array(a.astype(np.float32), i))
    return passes, len(bns), scale


def data_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def stats(a):
    return f"min {a.min():+.4g} max {a.max():+.4g} std {a.std():.4g} max|.| {np.abs(a).max():.4g}"


def make_zoo(name, force):
    out_dir = os.path.join(REF_DIR, name)
    done = os.path.join(out_dir, "b4", "output_0.pb")
    if os.path.exists(done) and not force:
        print(f"[zoo] {name}: present, skipping")
        return
    t0 = time.time()
    src = os.path.join(MODELS_DIR, name + ".onnx")
    if not os.path.exists(src):
        sys.exit(f"{src} missing: run scripts/fetch_data.py first")
    model = onnx.load(src)
    n_rep = materialize_weights(model, seed_of("weights/" + name))
    passes, n_bn, scale = calibrate(model, name, seed_of("calib/" + name))
    onnx.checker.check_model(model)
    os.makedirs(os.path.join(out_dir, "b1"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "b4"), exist_ok=True)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))

    (inp,) = data_inputs(model)
    out_name = model.graph.output[0].name
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert shape[0] == 1 and all(d > 0 for d in shape), shape

    # diagnostic copy: also expose the input of a final Softmax (the logits)
    diag = onnx.ModelProto()
    diag.CopyFrom(model)
    logits = None
    for n in diag.graph.node:
        if n.op_type == "Softmax" and n.output[0] == out_name:
            logits = n.input[0]
            diag.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    sess = session(diag.SerializeToString())
    del diag

    rng = np.random.default_rng(seed_of("input/" + name))
    xs, ys, ls = [], [], []
    for _ in range(5):  # sample 0 -> b1, samples 1..4 -> b4
        x = rng.standard_normal(shape, dtype=np.float32)
        res = sess.run(None, {inp.name: x})
        y = res[0]
        if not np.all(np.isfinite(y)):
            raise RuntimeError(f"{name}: non-finite output")
        xs.append(x)
        ys.append(y)
        if logits is not None:
            ls.append(res[1])
    write_tensor(os.path.join(out_dir, "b1", "input_0.pb"), xs[0], inp.name)
    write_tensor(os.path.join(out_dir, "b1", "output_0.pb"), ys[0], out_name)
    write_tensor(os.path.join(out_dir, "b4", "input_0.pb"), np.concatenate(xs[1:], 0), inp.name)
    write_tensor(os.path.join(out_dir, "b4", "output_0.pb"), np.concatenate(ys[1:], 0), out_name)
    print(f"[zoo] {name}: {n_rep} ConstantOfShape -> initializers; "
          f"{n_bn} BN calibrated in {passes} passes; logit scale {scale:.3g}; in {inp.name}{shape} "
          f"out {out_name}{list(ys[0].shape)}; {time.time() - t0:.1f}s")
    print(f"      output: {stats(np.stack(ys))}")
    if ls:
        print(f"      logits: {stats(np.stack(ls))}")

# ----------------------------------------------------------------------------- per-op cases

F = TensorProto.FLOAT


class Case:
    def __init__(self, name, desc, nodes, inputs, inits=None, outputs=None, opset=13):
        self.name, self.desc, self.nodes, self.opset = name, desc, nodes, opset
        self.inputs = inputs            # list of (name, np.ndarray) fed at run time
        self.inits = inits or {}        # name -> np.ndarray (weights, shapes, axes...)
        self.outputs = outputs or [nodes[-1].output[0]]


def N(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def build_model(case, out_infos):
    g = helper.make_graph(
        case.nodes, case.name,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
         for n, a in case.inputs],
        out_infos,
        [numpy_helper.from_array(np.asarray(v), k) for k, v in case.inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", case.opset)],
                          producer_name="lowmem-make_refs")
    m.ir_version = min(m.ir_version, 10)
    return m


def op_cases():
    rng = np.random.default_rng(1234)

    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def pos(*shape):
        return rng.uniform(0.5, 2.0, size=shape).astype(np.float32)

    def i64(*v):
        return np.array(v, dtype=np.int64)

    cs = []

    def add(*a, **k):
        cs.append(Case(*a, **k))

    # ---- Conv: X [2,4,9,9] (odd size so stride/SAME asymmetry shows)
    def conv(name, desc, x_shape, w_shape, bias=True, **attrs):
        inits = {"W": r(*w_shape) * np.float32(0.3)}
        ins = ["X", "W"]
        if bias:
            inits["B"] = r(w_shape[0])
            ins.append("B")
        add(name, desc, [N("Conv", ins, ["Y"], **attrs)], [("X", r(*x_shape))], inits)

    conv("conv_plain", "3x3 conv, no pads, no bias", [2, 4, 9, 9], [6, 4, 3, 3], bias=False)
    conv("conv_bias", "3x3 conv with bias", [2, 4, 9, 9], [6, 4, 3, 3])
    conv("conv_pads", "3x3 conv pads 1", [2, 4, 9, 9], [6, 4, 3, 3], pads=[1, 1, 1, 1])
    conv("conv_pads_asym", "3x3 conv asymmetric pads [0,1,2,1]", [1, 4, 9, 9], [6, 4, 3, 3], pads=[0, 1, 2, 1])
    conv("conv_strides2", "3x3 conv strides 2 pads 1", [2, 4, 9, 9], [6, 4, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    conv("conv_dilations2", "3x3 conv dilations 2 pads 2", [2, 4, 9, 9], [6, 4, 3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])
    conv("conv_groups2", "3x3 conv group=2 (4->6 channels)", [2, 4, 9, 9], [6, 2, 3, 3], group=2, pads=[1, 1, 1, 1])
    conv("conv_depthwise", "3x3 depthwise conv group=C=4, channel multiplier 2", [2, 4, 9, 9], [8, 1, 3, 3], group=4, pads=[1, 1, 1, 1])
    conv("conv_same_upper", "3x3 conv stride 2 auto_pad SAME_UPPER on 9x9 (asym pad)", [2, 4, 10, 9], [6, 4, 3, 3], auto_pad="SAME_UPPER", strides=[2, 2])
    conv("conv_same_lower", "3x3 conv stride 2 auto_pad SAME_LOWER on 10x9 (asym pad)", [2, 4, 10, 9], [6, 4, 3, 3], auto_pad="SAME_LOWER", strides=[2, 2])
    conv("conv_same_upper_k4", "4x4 conv stride 1 SAME_UPPER (even kernel)", [1, 4, 9, 9], [6, 4, 4, 4], auto_pad="SAME_UPPER")
    conv("conv_valid", "3x3 conv stride 2 auto_pad VALID", [2, 4, 10, 9], [6, 4, 3, 3], auto_pad="VALID", strides=[2, 2])
    conv("conv_1x1", "1x1 conv with bias", [2, 8, 7, 7], [5, 8, 1, 1])
    conv("conv_rect_kernel", "1x3 kernel, strides [1,2], pads [0,1,0,1]", [1, 4, 9, 9], [6, 4, 1, 3], strides=[1, 2], pads=[0, 1, 0, 1])
    conv("conv_7x7_s2", "7x7 stride 2 pads 3 (resnet stem) on 3x32x32", [1, 3, 32, 32], [8, 3, 7, 7], strides=[2, 2], pads=[3, 3, 3, 3])

    # ---- normalisation / activations
    add("batchnorm", "BatchNormalization inference, eps 1e-5",
        [N("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y"], epsilon=1e-5)],
        [("X", r(2, 4, 5, 5))], {"s": r(4), "b": r(4), "m": r(4), "v": pos(4)})
    x = r(2, 3, 4, 5) * np.float32(2)
    for op, kw in [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Erf", {}), ("Identity", {})]:
        add(op.lower(), f"{op} on [2,3,4,5]", [N(op, ["X"], ["Y"], **kw)], [("X", x)])
    add("leakyrelu", "LeakyRelu alpha 0.1", [N("LeakyRelu", ["X"], ["Y"], alpha=0.1)], [("X", x)])
    add("gelu_none", "Gelu opset 20 approximate=none", [N("Gelu", ["X"], ["Y"])], [("X", x)], opset=20)
    add("gelu_tanh", "Gelu opset 20 approximate=tanh", [N("Gelu", ["X"], ["Y"], approximate="tanh")], [("X", x)], opset=20)

    # ---- elementwise binary with broadcasting
    add("add_bcast_vec", "Add [2,3,4,5] + [5]", [N("Add", ["A", "B"], ["Y"])], [("A", r(2, 3, 4, 5)), ("B", r(5))])
    add("add_same", "Add same shapes [3,4]", [N("Add", ["A", "B"], ["Y"])], [("A", r(3, 4)), ("B", r(3, 4))])
    add("add_init_chan", "Add [1,3,4,5] + initializer [3,1,1]", [N("Add", ["A", "B"], ["Y"])], [("A", r(1, 3, 4, 5))], {"B": r(3, 1, 1)})
    add("mul_bcast", "Mul [2,1,4,1] * [3,1,5] -> [2,3,4,5]", [N("Mul", ["A", "B"], ["Y"])], [("A", r(2, 1, 4, 1)), ("B", r(3, 1, 5))])
    add("sub_scalar", "Sub [2,3] - scalar []", [N("Sub", ["A", "B"], ["Y"])], [("A", r(2, 3)), ("B", r())])
    add("sub_scalar_lhs", "Sub scalar [] - [2,3]", [N("Sub", ["A", "B"], ["Y"])], [("A", r()), ("B", r(2, 3))])
    add("div_bcast", "Div [2,3,4] / [3,1] (|den| in [0.5,2])", [N("Div", ["A", "B"], ["Y"])],
        [("A", r(2, 3, 4)), ("B", pos(3, 1) * np.sign(r(3, 1)))])
    add("pow", "Pow positive base [2,3,4] ^ [4]", [N("Pow", ["A", "B"], ["Y"])], [("A", pos(2, 3, 4)), ("B", r(4))])
    add("pow_scalar_exp", "Pow [2,3,4] ^ 2.0 (scalar initializer), base any sign", [N("Pow", ["A", "B"], ["Y"])],
        [("A", r(2, 3, 4))], {"B": np.array(2.0, dtype=np.float32)})
    add("sqrt", "Sqrt of positive input", [N("Sqrt", ["X"], ["Y"])], [("X", pos(2, 3, 4))])
    add("sum3", "Sum of [2,3,4] + [3,1] + [4]", [N("Sum", ["A", "B", "C"], ["Y"])], [("A", r(2, 3, 4)), ("B", r(3, 1)), ("C", r(4))])
    add("sum1", "Sum of a single input", [N("Sum", ["A"], ["Y"])], [("A", r(2, 3))])

    # ---- MatMul / Gemm
    mm = lambda n, d, a, b: add(n, d, [N("MatMul", ["A", "B"], ["Y"])], [("A", r(*a)), ("B", r(*b))])
    mm("matmul_2d", "MatMul [3,4]x[4,5]", [3, 4], [4, 5])
    mm("matmul_batched", "MatMul [2,3,4,5]x[2,3,5,6]", [2, 3, 4, 5], [2, 3, 5, 6])
    mm("matmul_bcast", "MatMul [2,1,4,5]x[3,5,6] -> [2,3,4,6]", [2, 1, 4, 5], [3, 5, 6])
    mm("matmul_1d_2d", "MatMul [4]x[4,5] -> [5]", [4], [4, 5])
    mm("matmul_2d_1d", "MatMul [3,4]x[4] -> [3]", [3, 4], [4])
    mm("matmul_3d_2d", "MatMul [2,3,4]x[4,5]", [2, 3, 4], [4, 5])
    add("matmul_weight", "MatMul [2,3,4] x initializer [4,5]", [N("MatMul", ["A", "W"], ["Y"])], [("A", r(2, 3, 4))], {"W": r(4, 5)})

    def gemm(name, desc, a, b, c=None, **attrs):
        inits = {"B": r(*b)}
        ins = ["A", "B"]
        if c is not None:
            inits["C"] = r(*c)
            ins.append("C")
        add(name, desc, [N("Gemm", ins, ["Y"], **attrs)], [("A", r(*a))], inits)

    gemm("gemm_plain", "Gemm [3,4]x[4,5] + C[5]", [3, 4], [4, 5], [5])
    gemm("gemm_transA", "Gemm transA: A [4,3]", [4, 3], [4, 5], [5], transA=1)
    gemm("gemm_transB", "Gemm transB: B [5,4] (FC layout)", [3, 4], [5, 4], [5], transB=1)
    gemm("gemm_transAB", "Gemm transA and transB", [4, 3], [5, 4], [5], transA=1, transB=1)
    gemm("gemm_alpha_beta", "Gemm alpha 0.5 beta 2, C [3,5]", [3, 4], [4, 5], [3, 5], alpha=0.5, beta=2.0)
    gemm("gemm_c_1n", "Gemm C [1,N]", [3, 4], [4, 5], [1, 5])
    gemm("gemm_c_m1", "Gemm C [M,1]", [3, 4], [4, 5], [3, 1])
    gemm("gemm_c_scalar", "Gemm C scalar []", [3, 4], [4, 5], [])
    gemm("gemm_no_c", "Gemm without C", [3, 4], [4, 5], None)

    # ---- pooling
    px = r(2, 3, 9, 9)
    pool = lambda n, d, op, **k: add(n, d, [N(op, ["X"], ["Y"], **k)], [("X", px)])
    pool("maxpool_plain", "MaxPool 2x2 stride 2 on 9x9 (floor)", "MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    pool("maxpool_pads", "MaxPool 3x3 pads 1 stride 1", "MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    pool("maxpool_strides", "MaxPool 3x3 stride 2 pads [1,0,0,1]", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1])
    pool("maxpool_ceil", "MaxPool 2x2 stride 2 ceil_mode 1 on 9x9", "MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    pool("maxpool_ceil_pads", "MaxPool 3x3 stride 2 pads 1 ceil_mode 1", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    pool("maxpool_dilations", "MaxPool 2x2 dilations 2", "MaxPool", kernel_shape=[2, 2], dilations=[2, 2])
    pool("maxpool_same_upper", "MaxPool 3x3 stride 2 auto_pad SAME_UPPER", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    pool("avgpool_plain", "AveragePool 3x3 stride 2", "AveragePool", kernel_shape=[3, 3], strides=[2, 2])
    pool("avgpool_pads_excl", "AveragePool 3x3 pads 1 count_include_pad 0", "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    pool("avgpool_pads_incl", "AveragePool 3x3 pads 1 count_include_pad 1", "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    pool("avgpool_ceil", "AveragePool 2x2 stride 2 ceil_mode 1 on 9x9 (last window partial)", "AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    pool("avgpool_ceil_pads_incl", "AveragePool 3x3 s2 pads 1 ceil_mode 1 count_include_pad 1", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)
    pool("globalavgpool", "GlobalAveragePool [2,3,9,9]", "GlobalAveragePool")
    pool("globalmaxpool", "GlobalMaxPool [2,3,9,9]", "GlobalMaxPool")
    lx = r(2, 7, 5, 5)
    add("lrn_size5", "LRN size 5 alpha 1e-4 beta 0.75 bias 1", [N("LRN", ["X"], ["Y"], size=5, alpha=1e-4, beta=0.75, bias=1.0)], [("X", lx)])
    add("lrn_size3", "LRN size 3 alpha 0.5 beta 0.6 bias 2 (strong effect)", [N("LRN", ["X"], ["Y"], size=3, alpha=0.5, beta=0.6, bias=2.0)], [("X", lx)])
    # (an even LRN size is legal ONNX but ORT's CPU kernel refuses it: size % 2 == 1)

    # ---- shape ops
    add("concat_axis1", "Concat axis 1 of [2,3,4],[2,1,4],[2,2,4]", [N("Concat", ["A", "B", "C"], ["Y"], axis=1)],
        [("A", r(2, 3, 4)), ("B", r(2, 1, 4)), ("C", r(2, 2, 4))])
    add("concat_axis_neg1", "Concat axis -1 of [2,3,4],[2,3,2]", [N("Concat", ["A", "B"], ["Y"], axis=-1)], [("A", r(2, 3, 4)), ("B", r(2, 3, 2))])
    add("reshape_zero_neg1", "Reshape [2,3,4,5] with shape [0,-1,5] -> [2,12,5]", [N("Reshape", ["X", "s"], ["Y"])], [("X", r(2, 3, 4, 5))], {"s": i64(0, -1, 5)})
    add("reshape_neg1_first", "Reshape [2,3,4] with shape [-1,3] -> [8,3]", [N("Reshape", ["X", "s"], ["Y"])], [("X", r(2, 3, 4))], {"s": i64(-1, 3)})
    for ax in (0, 1, 2, -1):
        add(f"flatten_axis{ax if ax >= 0 else 'm1'}", f"Flatten axis {ax} of [2,3,4,5]", [N("Flatten", ["X"], ["Y"], axis=ax)], [("X", r(2, 3, 4, 5))])
    add("transpose_perm", "Transpose perm [0,2,3,1] (NCHW->NHWC)", [N("Transpose", ["X"], ["Y"], perm=[0, 2, 3, 1])], [("X", r(2, 3, 4, 5))])
    add("transpose_default", "Transpose default (reverse dims)", [N("Transpose", ["X"], ["Y"])], [("X", r(2, 3, 4))])
    add("squeeze_op11_attr", "Squeeze opset 11 axes attr [1,3]", [N("Squeeze", ["X"], ["Y"], axes=[1, 3])], [("X", r(2, 1, 4, 1))], opset=11)
    add("squeeze_op13_input", "Squeeze opset 13 axes input [-1]", [N("Squeeze", ["X", "a"], ["Y"])], [("X", r(2, 1, 4, 1))], {"a": i64(-1)})
    add("squeeze_no_axes", "Squeeze with no axes (all 1-dims)", [N("Squeeze", ["X"], ["Y"])], [("X", r(2, 1, 4, 1))])
    add("unsqueeze_op11_attr", "Unsqueeze opset 11 axes attr [0,3]", [N("Unsqueeze", ["X"], ["Y"], axes=[0, 3])], [("X", r(2, 3, 4))], opset=11)
    add("unsqueeze_op13_input", "Unsqueeze opset 13 axes input [1,2]", [N("Unsqueeze", ["X", "a"], ["Y"])], [("X", r(3, 4))], {"a": i64(1, 2)})
    add("unsqueeze_neg_axes", "Unsqueeze opset 13 axes [-1,-3]", [N("Unsqueeze", ["X", "a"], ["Y"])], [("X", r(3, 4))], {"a": i64(-1, -3)})

    # ---- softmax family
    sx = r(2, 3, 4, 5) * np.float32(2)
    for op in ("Softmax", "LogSoftmax"):
        lo = op.lower()
        add(f"{lo}_op11_axis1", f"{op} opset 11 axis 1 on rank 4 (flatten to [2,60] semantics)", [N(op, ["X"], ["Y"], axis=1)], [("X", sx)], opset=11)
        add(f"{lo}_op11_default", f"{op} opset 11 default axis (1) on rank 4", [N(op, ["X"], ["Y"])], [("X", sx)], opset=11)
        add(f"{lo}_op13_axis1", f"{op} opset 13 axis 1 on rank 4 (per-axis semantics)", [N(op, ["X"], ["Y"], axis=1)], [("X", sx)])
        add(f"{lo}_axis_neg1", f"{op} opset 13 axis -1", [N(op, ["X"], ["Y"], axis=-1)], [("X", sx)])
        add(f"{lo}_rank2", f"{op} opset 13 on [3,1000] (classifier head)", [N(op, ["X"], ["Y"])], [("X", r(3, 1000) * np.float32(3))])

    # ---- LayerNormalization (opset 17)
    lnx = r(2, 3, 8) * np.float32(2) + np.float32(0.5)
    add("layernorm_axis_neg1", "LayerNormalization axis -1 on [2,3,8] with bias", [N("LayerNormalization", ["X", "s", "b"], ["Y"], axis=-1, epsilon=1e-5)],
        [("X", lnx)], {"s": r(8), "b": r(8)}, opset=17)
    add("layernorm_axis1", "LayerNormalization axis 1 on [2,3,8] with bias (scale [3,8])", [N("LayerNormalization", ["X", "s", "b"], ["Y"], axis=1)],
        [("X", lnx)], {"s": r(3, 8), "b": r(3, 8)}, opset=17)
    add("layernorm_no_bias", "LayerNormalization axis -1 without bias", [N("LayerNormalization", ["X", "s"], ["Y"], axis=-1)],
        [("X", lnx)], {"s": r(8)}, opset=17)

    # ---- reductions
    rx = r(2, 3, 4, 5)
    add("reducemean_keep1", "ReduceMean axes attr [2,3] keepdims 1", [N("ReduceMean", ["X"], ["Y"], axes=[2, 3], keepdims=1)], [("X", rx)])
    add("reducemean_keep0_neg", "ReduceMean axes [-1,1] keepdims 0", [N("ReduceMean", ["X"], ["Y"], axes=[-1, 1], keepdims=0)], [("X", rx)])
    add("reducemean_all", "ReduceMean no axes (all) keepdims 1", [N("ReduceMean", ["X"], ["Y"])], [("X", rx)])
    add("reducesum_keep1", "ReduceSum opset 13 axes input [1] keepdims 1", [N("ReduceSum", ["X", "a"], ["Y"], keepdims=1)], [("X", rx)], {"a": i64(1)})
    add("reducesum_keep0_neg", "ReduceSum axes input [-2,0] keepdims 0", [N("ReduceSum", ["X", "a"], ["Y"], keepdims=0)], [("X", rx)], {"a": i64(-2, 0)})
    add("reducesum_all", "ReduceSum no axes input (all) keepdims 0", [N("ReduceSum", ["X"], ["Y"], keepdims=0)], [("X", rx)])

    # ---- dropout / clip
    add("dropout_op13", "Dropout opset 13 inference (identity)", [N("Dropout", ["X"], ["Y"])], [("X", rx)])
    add("dropout_ratio", "Dropout opset 13 with ratio input 0.3 (still identity)", [N("Dropout", ["X", "r"], ["Y"])], [("X", rx)], {"r": np.array(0.3, dtype=np.float32)})
    add("dropout_op9_mask", "Dropout opset 9 ratio attr 0.5, mask output unused by graph outputs", [N("Dropout", ["X"], ["Y", "mask"], ratio=0.5)], [("X", rx)], opset=9)
    add("clip_op11_minmax", "Clip opset 11 min -0.5 max 0.7 as inputs", [N("Clip", ["X", "lo", "hi"], ["Y"])], [("X", rx)],
        {"lo": np.array(-0.5, dtype=np.float32), "hi": np.array(0.7, dtype=np.float32)}, opset=11)
    add("clip_op11_min_only", "Clip opset 11 min 0 only (max input omitted)", [N("Clip", ["X", "lo"], ["Y"])], [("X", rx)],
        {"lo": np.array(0.0, dtype=np.float32)}, opset=11)
    add("clip_op11_max_only", "Clip opset 11 max 6 only (min input empty name)", [N("Clip", ["X", "", "hi"], ["Y"])], [("X", rx * np.float32(5))],
        {"hi": np.array(6.0, dtype=np.float32)}, opset=11)
    add("clip_op6_attrs", "Clip opset 6 min/max attributes (relu6)", [N("Clip", ["X"], ["Y"], min=0.0, max=6.0)], [("X", rx * np.float32(5))], opset=6)

    # ---- constant folding / shape arithmetic
    add("shape_arith_reshape", "Shape->Gather(0)->Unsqueeze, Concat with Constant [-1] -> Reshape [2,3,4,5] to [2,60]",
        [N("Shape", ["X"], ["s"]),
         N("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, dtype=np.int64))),
         N("Gather", ["s", "i0"], ["b"], axis=0),
         N("Constant", [], ["ax0"], value=numpy_helper.from_array(i64(0))),
         N("Unsqueeze", ["b", "ax0"], ["b1"]),
         N("Constant", [], ["m1"], value=numpy_helper.from_array(i64(-1))),
         N("Concat", ["b1", "m1"], ["shp"], axis=0),
         N("Reshape", ["X", "shp"], ["Y"])],
        [("X", r(2, 3, 4, 5))])
    add("shape_arith_flatten_tail", "Shape->Gather([2,3])->ReduceProd-free: Concat(Gather([0,1]), [-1]) -> Reshape to [2,3,20]",
        [N("Shape", ["X"], ["s"]),
         N("Constant", [], ["i01"], value=numpy_helper.from_array(i64(0, 1))),
         N("Gather", ["s", "i01"], ["head"], axis=0),
         N("Constant", [], ["m1"], value=numpy_helper.from_array(i64(-1))),
         N("Concat", ["head", "m1"], ["shp"], axis=0),
         N("Reshape", ["X", "shp"], ["Y"])],
        [("X", r(2, 3, 4, 5))])
    add("constantofshape_add", "ConstantOfShape(Constant [3,4], value 1.5) + X[3,4]",
        [N("Constant", [], ["shp"], value=numpy_helper.from_array(i64(3, 4))),
         N("ConstantOfShape", ["shp"], ["c"], value=numpy_helper.from_array(np.array([1.5], dtype=np.float32))),
         N("Add", ["X", "c"], ["Y"])],
        [("X", r(3, 4))])
    add("constantofshape_from_shape", "ConstantOfShape(Shape(X)) default value 0 (float) + X, and Mul by Constant",
        [N("Shape", ["X"], ["s"]),
         N("ConstantOfShape", ["s"], ["z"]),
         N("Constant", [], ["k"], value=numpy_helper.from_array(np.array(3.0, dtype=np.float32))),
         N("Add", ["X", "z"], ["t"]),
         N("Mul", ["t", "k"], ["Y"])],
        [("X", r(2, 3))])

    # ---- small multi-op blocks
    add("conv_bn_relu", "Conv -> BatchNormalization -> Relu",
        [N("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         N("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
         N("Relu", ["n"], ["Y"])],
        [("X", r(2, 3, 8, 8))], {"W": r(4, 3, 3, 3) * np.float32(0.3), "B": r(4), "s": r(4), "b": r(4), "m": r(4), "v": pos(4)})
    add("two_outputs", "one input, two outputs: Relu and Sigmoid of a shared Add",
        [N("Add", ["A", "B"], ["t"]), N("Relu", ["t"], ["Y0"]), N("Sigmoid", ["t"], ["Y1"])],
        [("A", r(2, 3)), ("B", r(2, 3))], outputs=["Y0", "Y1"])
    return cs


def make_ops():
    out_root = os.path.join(REF_DIR, "ops")
    os.makedirs(out_root, exist_ok=True)
    index, skipped = [], []
    for c in op_cases():
        probe = build_model(c, [helper.make_tensor_value_info(o, F, None) for o in c.outputs])
        try:
            sess = session(probe.SerializeToString())
            res = sess.run(c.outputs, {n: a for n, a in c.inputs})
        except Exception as e:  # ORT refuses the op / opset
            msg = str(e).splitlines()[0][:200]
            print(f"[ops] SKIP {c.name}: {msg}")
            skipped.append({"name": c.name, "reason": msg})
            continue
        # trust ONNX shape inference for the output shape where ORT disagrees only in
        # layout (ORT returns [1] for a full reduction with keepdims=0; ONNX says rank 0)
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
        ishape = {}
        for vi in inferred.graph.output:
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                ishape[vi.name] = [d.dim_value for d in dims]
        for k, o in enumerate(c.outputs):
            if o in ishape and list(res[k].shape) != ishape[o]:
                if int(np.prod(ishape[o])) != res[k].size:
                    raise RuntimeError(f"{c.name}: ORT shape {res[k].shape} vs ONNX {ishape[o]}")
                print(f"[ops] note {c.name}: ORT output {o} shape {list(res[k].shape)}, "
                      f"ONNX shape inference {ishape[o]}; writing the ONNX shape")
                res[k] = res[k].reshape(ishape[o])
        model = build_model(c, [helper.make_tensor_value_info(
            o, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for o, a in zip(c.outputs, res)])
        onnx.checker.check_model(model, full_check=True)
        d = os.path.join(out_root, c.name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        onnx.save(model, os.path.join(d, "model.onnx"))
        for k, (n, a) in enumerate(c.inputs):
            write_tensor(os.path.join(d, f"input_{k}.pb"), a, n)
        for k, (n, a) in enumerate(zip(c.outputs, res)):
            if not np.all(np.isfinite(a)):
                raise RuntimeError(f"{c.name}: non-finite output")
            write_tensor(os.path.join(d, f"output_{k}.pb"), a, n)
        index.append({"name": c.name, "description": c.desc, "opset": c.opset,
                      "ops": sorted({n.op_type for n in c.nodes})})
    known = {c["name"] for c in index}
    for stale in sorted(os.listdir(out_root)):
        if os.path.isdir(os.path.join(out_root, stale)) and stale not in known:
            shutil.rmtree(os.path.join(out_root, stale))
    with open(os.path.join(out_root, "index.json"), "w") as f:
        json.dump({"cases": index, "skipped": skipped}, f, indent=1)
    print(f"[ops] wrote {len(index)} cases to {os.path.relpath(out_root, ROOT)}, skipped {len(skipped)}")


def make_examples():
    """ir/examples/*.json converted to ONNX by scripts/lowmem_json.py (an independent reader of
    the JSON spec), run by onnxruntime on the example's input -> data/ref/examples/<name>/."""
    import glob
    import lowmem_json
    out_root = os.path.join(ROOT, "data", "ref", "examples")
    for path in sorted(glob.glob(os.path.join(ROOT, "ir", "examples", "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        x_path = os.path.join(ROOT, "ir", "examples", f"{name}.x.pb")
        if not os.path.exists(x_path):
            continue  # Examples without an input file (the digits models) are trained, not run.
        model = lowmem_json.load(path)
        x = onnx.load_tensor(x_path)
        sess = session(model.SerializeToString())
        (y,) = sess.run(None, {x.name: numpy_helper.to_array(x)})
        d = os.path.join(out_root, name)
        os.makedirs(d, exist_ok=True)
        onnx.save(model, os.path.join(d, "model.onnx"))
        write_tensor(os.path.join(d, "output_0.pb"), y, model.graph.output[0].name)
        print(f"[examples] {name}: output {list(y.shape)} {stats(y)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--ops-only", action="store_true")
    ap.add_argument("--zoo-only", action="store_true")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    if not args.ops_only:
        for m in [m for m in args.models.split(",") if m]:
            if m not in ZOO:
                sys.exit(f"unknown model {m}; known: {ZOO}")
            make_zoo(m, args.force)
        print(f"zoo part: {time.time() - t0:.1f}s")
    if not args.zoo_only:
        t1 = time.time()
        make_ops()
        make_examples()
        print(f"ops and examples part: {time.time() - t1:.1f}s")


if __name__ == "__main__":
    main()
