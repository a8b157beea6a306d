//! lowmem's JSON form of a graph (format `lowmem-ir`, version 1), specified in `ir/README.md`.
//!
//! Tensors are referred to by name here; nodes may appear in any order and are sorted
//! topologically on load. Weight data is written as base64 of the little-endian bytes, so a
//! graph round-trips bit for bit; hand-written files may give `values` or `fill` instead.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DType, Graph, IrError, Op, TensorData};

pub const FORMAT: &str = "lowmem-ir";
pub const VERSION: u32 = 1;

/// The most bytes [`from_json`] generates for `fill` and `uniform` weights, all weights
/// together. Those weights cost a few bytes of text however large they are, so they get an
/// explicit cap; `base64` and `values` data is bounded by the text itself.
pub const MAX_GENERATED_BYTES: usize = 1 << 32;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonGraph {
    format: String,
    version: u32,
    #[serde(default)]
    name: String,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    weights: Vec<JsonWeight>,
    nodes: Vec<JsonNode>,
    outputs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonInput {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonWeight {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fill: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uniform: Option<Uniform>,
}

/// Deterministic pseudo-random weights for hand-written graphs: element i is
/// `low + (high - low) * u_i`, u_i the top 24 bits of the i-th splitmix64 output from `seed`,
/// divided by 2^24.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Uniform {
    low: f64,
    high: f64,
    seed: u64,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonNode {
    name: String,
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attrs: Option<Value>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// The data of a weight; `budget` is what `fill` and `uniform` may still generate, in bytes.
fn weight_data(w: &JsonWeight, budget: &mut usize) -> Result<TensorData, IrError> {
    let n = crate::shape::numel(&w.shape, &w.name)?;
    let bad = |m: String| IrError::tensor(&w.name, m);
    if w.fill.is_some() || w.uniform.is_some() {
        let bytes = crate::shape::bytes(&w.shape, w.dtype.size(), &w.name)?;
        if bytes > *budget {
            return Err(bad(format!(
                "`fill`/`uniform` would generate {bytes} bytes of {} {}, over the {} bytes left \
                 of the limit on generated weights",
                w.dtype, n, *budget
            )));
        }
        *budget -= bytes;
    }
    match (&w.base64, &w.values, w.fill, &w.uniform) {
        (None, None, None, Some(u)) => {
            let mut state = u.seed;
            let mut d = TensorData::zeros(w.dtype, n);
            for i in 0..n {
                let r = (splitmix64(&mut state) >> 40) as f64 / (1u64 << 24) as f64;
                set_f64(&mut d, i, u.low + (u.high - u.low) * r);
            }
            Ok(d)
        }
        (Some(b), None, None, None) => {
            let bytes = B64
                .decode(b)
                .map_err(|e| bad(format!("invalid base64: {e}")))?;
            let d = TensorData::from_le_bytes(w.dtype, &bytes).ok_or_else(|| {
                bad(format!(
                    "{} bytes is not a whole number of {} elements",
                    bytes.len(),
                    w.dtype
                ))
            })?;
            Ok(d)
        }
        (None, Some(v), None, None) => {
            let mut d = TensorData::zeros(w.dtype, v.len());
            for (i, &x) in v.iter().enumerate() {
                set_f64(&mut d, i, x);
            }
            Ok(d)
        }
        (None, None, Some(x), None) => Ok(TensorData::filled(w.dtype, n, x)),
        _ => Err(bad(
            "give exactly one of `base64`, `values`, `fill` or `uniform`".into(),
        )),
    }
}

fn set_f64(d: &mut TensorData, i: usize, x: f64) {
    match d {
        TensorData::F32(v) => v[i] = x as f32,
        TensorData::F16(v) => v[i] = half::f16::from_f64(x),
        TensorData::BF16(v) => v[i] = half::bf16::from_f64(x),
        TensorData::F64(v) => v[i] = x,
        TensorData::I64(v) => v[i] = x as i64,
        TensorData::I32(v) => v[i] = x as i32,
        TensorData::I8(v) => v[i] = x as i8,
        TensorData::U8(v) => v[i] = x as u8,
        TensorData::Bool(v) => v[i] = x != 0.0,
    }
}

/// Parses the JSON form and builds a validated graph.
pub fn from_json(text: &str) -> Result<Graph, IrError> {
    from_json_limited(text, MAX_GENERATED_BYTES)
}

/// [`from_json`] with `max_generated_bytes` in place of [`MAX_GENERATED_BYTES`].
pub fn from_json_limited(text: &str, max_generated_bytes: usize) -> Result<Graph, IrError> {
    let jg: JsonGraph = serde_json::from_str(text).map_err(|e| IrError::Json(e.to_string()))?;
    if jg.format != FORMAT {
        return Err(IrError::Json(format!(
            "format is '{}', expected '{FORMAT}'",
            jg.format
        )));
    }
    if jg.version != VERSION {
        return Err(IrError::Json(format!(
            "version {} is not supported (this build reads {VERSION})",
            jg.version
        )));
    }
    let mut g = Graph::new(jg.name);
    for i in &jg.inputs {
        g.add_input(i.name.clone(), i.dtype, i.shape.clone())?;
    }
    let mut budget = max_generated_bytes;
    for w in &jg.weights {
        g.add_weight(
            w.name.clone(),
            w.shape.clone(),
            weight_data(w, &mut budget)?,
        )?;
    }
    let mut ops = Vec::with_capacity(jg.nodes.len());
    for n in &jg.nodes {
        // No `attrs` means every attribute at its default: unit ops take no content, the
        // others an empty map.
        let parsed = match &n.attrs {
            Some(a) => serde_json::from_value(serde_json::json!({"op": n.op, "attrs": a})),
            None => serde_json::from_value(serde_json::json!({"op": n.op}))
                .or_else(|_| serde_json::from_value(serde_json::json!({"op": n.op, "attrs": {}}))),
        };
        let op: Op =
            parsed.map_err(|e| IrError::Json(format!("node '{}' (op {}): {e}", n.name, n.op)))?;
        ops.push(op);
    }
    for i in topo_order(&jg.nodes, &g)? {
        let n = &jg.nodes[i];
        let inputs = n
            .inputs
            .iter()
            .map(|t| {
                g.tensor_id(t).ok_or_else(|| IrError::UnknownTensor {
                    node: n.name.clone(),
                    tensor: t.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outs: Vec<&str> = n.outputs.iter().map(String::as_str).collect();
        g.add_node(n.name.clone(), ops[i].clone(), &inputs, &outs)?;
    }
    let outputs = jg
        .outputs
        .iter()
        .map(|o| {
            g.tensor_id(o)
                .ok_or_else(|| IrError::UnknownOutput(o.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    g.set_outputs(outputs);
    g.validate()?;
    Ok(g)
}

/// Orders nodes so that each comes after the producers of its inputs; errors name a node on a
/// cycle or a node reading an undefined tensor.
fn topo_order(nodes: &[JsonNode], g: &Graph) -> Result<Vec<usize>, IrError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in &n.outputs {
            if producer.insert(o, i).is_some() || g.tensor_id(o).is_some() {
                return Err(IrError::DuplicateTensor(o.clone()));
            }
        }
    }
    // Kahn's algorithm taking the earliest listed ready node first, so a list that is already
    // in topological order keeps its order (round trips preserve node and tensor ids).
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut indeg = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for t in &n.inputs {
            match producer.get(t.as_str()) {
                Some(&p) => {
                    succ[p].push(i);
                    indeg[i] += 1;
                }
                None if g.tensor_id(t).is_some() => {}
                None => {
                    return Err(IrError::UnknownTensor {
                        node: n.name.clone(),
                        tensor: t.clone(),
                    });
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| indeg[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(Reverse(s));
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Some nodes are left unsorted: they lie on or after a cycle.
    let edges = succ
        .iter()
        .enumerate()
        .flat_map(|(p, s)| s.iter().map(move |&i| (p as u32, i as u32)));
    let cycle = crate::graph::find_cycle(nodes.len(), edges)
        .expect("Kahn's algorithm stops short only on a cycle");
    Err(IrError::Cycle(
        cycle.into_iter().map(|i| nodes[i].name.clone()).collect(),
    ))
}

/// Writes the JSON form (pretty-printed; weights as base64).
pub fn to_json(g: &Graph) -> String {
    let name = |t: &crate::TensorId| g.tensor(*t).name.clone();
    let jg = JsonGraph {
        format: FORMAT.into(),
        version: VERSION,
        name: g.name.clone(),
        inputs: g
            .inputs
            .iter()
            .map(|&t| JsonInput {
                name: name(&t),
                dtype: g.tensor(t).dtype,
                shape: g.tensor(t).shape.clone(),
            })
            .collect(),
        weights: g
            .weights()
            .map(|t| {
                let tt = g.tensor(t);
                let data = tt.value.as_ref().expect("weights have values");
                JsonWeight {
                    name: tt.name.clone(),
                    dtype: tt.dtype,
                    shape: tt.shape.clone(),
                    base64: Some(B64.encode(data.to_le_bytes())),
                    values: None,
                    fill: None,
                    uniform: None,
                }
            })
            .collect(),
        nodes: g
            .nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(&n.op).expect("ops serialise");
                let attrs = v.get_mut("attrs").map(Value::take);
                JsonNode {
                    name: n.name.clone(),
                    op: n.op.name_for_json(),
                    attrs,
                    inputs: n.inputs.iter().map(name).collect(),
                    outputs: n.outputs.iter().map(name).collect(),
                }
            })
            .collect(),
        outputs: g.outputs.iter().map(name).collect(),
    };
    serde_json::to_string_pretty(&jg).expect("graphs serialise")
}

impl Op {
    /// The serde tag of the op (differs from [`Op::name`] only for `Lrn`).
    fn name_for_json(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("op").and_then(Value::as_str).map(String::from))
            .expect("op tag")
    }
}

/// Whether two graphs are identical: same tensors (names, dtypes, shapes, weight bits), nodes,
/// inputs and outputs.
pub fn same_graph(a: &Graph, b: &Graph) -> bool {
    a.name == b.name
        && a.inputs == b.inputs
        && a.outputs == b.outputs
        && a.tensors.len() == b.tensors.len()
        && a.tensors.iter().zip(&b.tensors).all(|(x, y)| {
            x.name == y.name
                && x.dtype == y.dtype
                && x.shape == y.shape
                && match (&x.value, &y.value) {
                    (None, None) => true,
                    (Some(p), Some(q)) => p.bit_eq(q),
                    _ => false,
                }
        })
        && a.nodes.len() == b.nodes.len()
        && a.nodes.iter().zip(&b.nodes).all(|(x, y)| {
            x.name == y.name && x.op == y.op && x.inputs == y.inputs && x.outputs == y.outputs
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLP: &str = r#"{
      "format": "lowmem-ir", "version": 1, "name": "tiny",
      "inputs": [{"name": "x", "dtype": "f32", "shape": [2, 3]}],
      "weights": [
        {"name": "w", "dtype": "f32", "shape": [3, 4], "values": [1,2,3,4,5,6,7,8,9,10,11,0.1]},
        {"name": "b", "dtype": "f32", "shape": [4], "fill": 0.5}
      ],
      "nodes": [
        {"name": "act", "op": "Relu", "inputs": ["h"], "outputs": ["y"]},
        {"name": "fc", "op": "Gemm", "attrs": {"alpha": 0.5}, "inputs": ["x", "w", "b"], "outputs": ["h"]}
      ],
      "outputs": ["y"]
    }"#;

    #[test]
    fn parses_out_of_order_nodes_and_round_trips_exactly() {
        let g = from_json(MLP).unwrap();
        assert_eq!(g.nodes[0].name, "fc");
        assert_eq!(g.tensor(g.outputs[0]).shape, vec![2, 4]);
        let text = to_json(&g);
        let g2 = from_json(&text).unwrap();
        assert!(same_graph(&g, &g2));
        assert_eq!(text, to_json(&g2));
    }

    #[test]
    fn nan_weights_round_trip() {
        let mut g = Graph::new("n");
        let w = g
            .add_weight(
                "w",
                vec![3],
                TensorData::F32(vec![f32::NAN, -0.0, f32::INFINITY]),
            )
            .unwrap();
        g.set_outputs(vec![w]);
        let g2 = from_json(&to_json(&g)).unwrap();
        assert!(same_graph(&g, &g2));
    }

    #[test]
    fn errors_name_the_culprit() {
        let cyc = MLP.replace(
            r#""inputs": ["x", "w", "b"]"#,
            r#""inputs": ["y", "w", "b"]"#,
        );
        assert!(
            matches!(from_json(&cyc), Err(IrError::Cycle(n)) if n.contains(&"fc".to_string()) && n.contains(&"act".to_string()))
        );
        let unk = MLP.replace(r#""op": "Relu""#, r#""op": "Frobnicate""#);
        let e = from_json(&unk).unwrap_err().to_string();
        assert!(e.contains("node 'act'") && e.contains("Frobnicate"), "{e}");
        let dangling = MLP.replace(r#"["h"], "outputs": ["y"]"#, r#"["hh"], "outputs": ["y"]"#);
        let e = from_json(&dangling).unwrap_err().to_string();
        assert!(e.contains("'act'") && e.contains("'hh'"), "{e}");
        let shape = MLP.replace(r#""shape": [2, 3]"#, r#""shape": [2, 5]"#);
        let e = from_json(&shape).unwrap_err().to_string();
        assert!(e.contains("node 'fc' (Gemm)"), "{e}");
        let count = MLP.replace("11,0.1]", "11]");
        assert!(
            from_json(&count)
                .unwrap_err()
                .to_string()
                .contains("tensor 'w'")
        );
        assert!(from_json("{").is_err());
        assert!(from_json("[]").is_err());
    }

    /// Fuzzer finding: a `uniform` weight of 3.3e16 elements aborted on allocation.
    #[test]
    fn generated_weights_are_bounded() {
        let huge = r#"{"format":"lowmem-ir","version":1,"inputs":[],"weights":[
            {"name":"w","dtype":"f32","shape":[3277777777777777,10],
             "uniform":{"low":-0.3,"high":0.3,"seed":13}}],"nodes":[],"outputs":["w"]}"#;
        let e = from_json(huge).unwrap_err().to_string();
        assert!(e.contains("tensor 'w'") && e.contains("limit"), "{e}");
        let e = from_json(&huge.replace(
            r#""uniform":{"low":-0.3,"high":0.3,"seed":13}"#,
            r#""fill":1"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("limit"), "{e}");
        // The limit is on all generated weights together.
        let two = r#"{"format":"lowmem-ir","version":1,"inputs":[],"weights":[
            {"name":"a","dtype":"f32","shape":[4],"fill":1},
            {"name":"b","dtype":"f32","shape":[4],"fill":2}],"nodes":[],"outputs":["a","b"]}"#;
        assert!(from_json_limited(two, 32).is_ok());
        let e = from_json_limited(two, 31).unwrap_err().to_string();
        assert!(e.contains("tensor 'b'"), "{e}");
    }
}
