"""Independent reader of lowmem's JSON IR (ir/README.md) that builds the same graph as ONNX.

Used as a test oracle: onnxruntime runs the converted model, and lowmem's own loader and
executor must agree with it. Everything here follows the spec, not lowmem's Rust code.
"""
import base64
import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64,
          "i32": np.int32, "i8": np.int8, "u8": np.uint8, "bool": np.bool_}
MASK64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def weight_array(w):
    dt, shape = DTYPES[w["dtype"]], w["shape"]
    n = int(np.prod(shape, dtype=np.int64))
    if "base64" in w:
        return np.frombuffer(base64.b64decode(w["base64"]), dtype=dt).reshape(shape)
    if "values" in w:
        return np.array(w["values"], dtype=np.float64).astype(dt).reshape(shape)
    if "fill" in w:
        return np.full(shape, w["fill"], dtype=np.float64).astype(dt)
    u = w["uniform"]
    state, out = u["seed"], np.empty(n, dtype=np.float64)
    for i in range(n):
        state, z = splitmix64(state)
        out[i] = u["low"] + (u["high"] - u["low"]) * ((z >> 40) / float(1 << 24))
    return out.astype(dt).reshape(shape)


def _window(a):
    out = {}
    for k in ("kernel_shape", "strides", "dilations", "pads"):
        if a.get(k):
            out[k] = a[k]
    if a.get("auto_pad", "not_set") != "not_set":
        out["auto_pad"] = a["auto_pad"].upper()
    return out


def to_onnx(g):
    """lowmem JSON (dict) -> onnx.ModelProto at opset 20."""
    inits = [numpy_helper.from_array(weight_array(w), w["name"]) for w in g.get("weights", [])]
    consts, nodes = [], []
    for n in g["nodes"]:
        op, a, ins = n["op"], n.get("attrs") or {}, list(n["inputs"])
        attrs = {}

        def const(suffix, arr):
            name = f"{n['name']}.{suffix}"
            consts.append(numpy_helper.from_array(np.array(arr), name))
            return name

        if op == "Conv":
            attrs = _window(a)
            if a.get("group", 1) != 1:
                attrs["group"] = a["group"]
        elif op in ("MaxPool", "AveragePool"):
            attrs = _window(a)
            attrs["ceil_mode"] = int(a.get("ceil_mode", False))
            if op == "AveragePool":
                attrs["count_include_pad"] = int(a.get("count_include_pad", False))
        elif op == "BatchNormalization":
            attrs = {"epsilon": a.get("epsilon", 1e-5), "momentum": a.get("momentum", 0.9)}
        elif op == "Gemm":
            attrs = {"alpha": a.get("alpha", 1.0), "beta": a.get("beta", 1.0),
                     "transA": int(a.get("trans_a", False)), "transB": int(a.get("trans_b", False))}
        elif op == "Lrn":
            op, attrs = "LRN", {k: a[k] for k in ("size", "alpha", "beta", "bias") if k in a}
        elif op in ("Softmax", "LogSoftmax"):
            if a.get("legacy"):
                raise ValueError("legacy softmax has no opset-20 form")
            attrs = {"axis": a.get("axis", -1)}
        elif op in ("Concat", "Flatten"):
            attrs = {"axis": a["axis"]}
        elif op == "LeakyRelu":
            attrs = {"alpha": a["alpha"]}
        elif op == "Gelu":
            attrs = {"approximate": a.get("approximate", "none")}
        elif op == "LayerNormalization":
            attrs = {"axis": a.get("axis", -1), "epsilon": a.get("epsilon", 1e-5)}
        elif op == "Transpose" and a.get("perm") is not None:
            attrs = {"perm": a["perm"]}
        elif op == "Reshape":
            ins.append(const("shape", np.array(a["shape"], dtype=np.int64)))
            attrs = {"allowzero": int(a.get("allowzero", False))}
        elif op in ("Squeeze", "Unsqueeze"):
            if a.get("axes") is not None:
                ins.append(const("axes", np.array(a["axes"], dtype=np.int64)))
        elif op in ("ReduceMean", "ReduceSum"):
            if a.get("axes") is not None:
                ins.append(const("axes", np.array(a["axes"], dtype=np.int64)))
            attrs = {"keepdims": int(a.get("keepdims", True))}
        elif op == "Clip":
            ins.append(const("min", np.float32(a["min"])) if a.get("min") is not None else "")
            ins.append(const("max", np.float32(a["max"])) if a.get("max") is not None else "")
        elif op == "Dropout":
            ins.append(const("ratio", np.float32(a.get("ratio", 0.5))))
        nodes.append(helper.make_node(op, ins, n["outputs"], name=n["name"], **attrs))
    inputs = [helper.make_tensor_value_info(i["name"], helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[i["dtype"]])), i["shape"])
              for i in g["inputs"]]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in g["outputs"]]
    graph = helper.make_graph(nodes, g.get("name", "graph"), inputs, outputs, initializer=inits + consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def load(path):
    with open(path) as f:
        return to_onnx(json.load(f))
