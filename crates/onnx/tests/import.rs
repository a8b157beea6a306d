//! Imports the reference op cases and zoo models (when `data/` exists: produce it with
//! `python3 scripts/fetch_data.py` and `python3 scripts/make_refs.py`) and checks that broken
//! inputs give clear errors instead of panics.

use std::path::Path;

use lowmem_ir::{Graph, Op};
use lowmem_onnx::{
    ImportError, import_model, import_model_limited, load, pb, read_tensor, write_tensor,
};
use lowmem_testkit::try_data_dir;
use prost::Message;

fn shape_of(g: &Graph, id: lowmem_ir::TensorId) -> (lowmem_ir::DType, Vec<usize>) {
    let t = g.tensor(id);
    (t.dtype, t.shape.clone())
}

/// Checks the graph's inputs and outputs against `input_K.pb` / `output_K.pb` in `dir`.
fn check_io(g: &Graph, dir: &Path, what: &str) {
    for (kind, ids) in [("input", &g.inputs), ("output", &g.outputs)] {
        for (k, &id) in ids.iter().enumerate() {
            let p = dir.join(format!("{kind}_{k}.pb"));
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let (name, dtype, shape, data) = read_tensor(&bytes).unwrap();
            assert_eq!(data.len(), shape.iter().product::<usize>());
            assert_eq!(g.tensor(id).name, name, "{what}: {kind} {k} name");
            assert_eq!(
                shape_of(g, id),
                (dtype, shape),
                "{what}: {kind} {k} '{name}'"
            );
        }
    }
}

#[test]
fn op_cases_import_with_reference_shapes() {
    let Some(d) = try_data_dir() else { return };
    let ops = d.join("ref/ops");
    let mut dirs: Vec<_> = std::fs::read_dir(&ops)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    let mut n = 0;
    for dir in dirs.iter().filter(|p| p.join("model.onnx").exists()) {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let res = load(&dir.join("model.onnx"));
        if case == "globalmaxpool" {
            let e = res.unwrap_err();
            assert!(
                matches!(&e, ImportError::UnsupportedOp { op_type, .. } if op_type == "GlobalMaxPool"),
                "{e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("GlobalMaxPool") && msg.contains("opset 13"),
                "{msg}"
            );
            continue;
        }
        let g = res.unwrap_or_else(|e| panic!("{case}: {e}"));
        g.validate().unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(g.name, "model");
        check_io(&g, dir, &case);
        n += 1;
    }
    eprintln!("imported {n} op cases");
    if n == 0 {
        return;
    }
    // Spot checks of folding and opset-dependent attributes.
    let get = |c: &str| load(&ops.join(c).join("model.onnx")).unwrap();
    let g = get("shape_arith_reshape");
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(
        g.nodes[0].op,
        Op::Reshape {
            shape: vec![2, -1],
            allowzero: false
        }
    );
    assert_eq!(g.weights().count(), 0);
    let g = get("constantofshape_add");
    let w: Vec<_> = g.weights().map(|t| g.tensor(t).clone()).collect();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].name.as_str(), w[0].shape.clone()), ("c", vec![3, 4]));
    assert_eq!(w[0].value.as_ref().unwrap().to_f32(), vec![1.5; 12]);
    assert!(
        matches!(get("softmax_op11_default").nodes[0].op, Op::Softmax(ref a) if a.legacy && a.axis == 1)
    );
    assert!(
        matches!(get("softmax_axis_neg1").nodes[0].op, Op::Softmax(ref a) if !a.legacy && a.axis == -1)
    );
    assert!(
        matches!(get("clip_op11_max_only").nodes[0].op, Op::Clip(ref a) if a.min.is_none() && a.max == Some(6.0))
    );
    assert!(
        matches!(get("clip_op6_attrs").nodes[0].op, Op::Clip(ref a) if a.min == Some(0.0) && a.max == Some(6.0))
    );
    assert_eq!(
        get("dropout_op9_mask").nodes[0].outputs.len(),
        1,
        "unused mask output is dropped"
    );
    assert_eq!(
        get("reducesum_all").nodes[0].op,
        Op::ReduceSum(lowmem_ir::ReduceAttrs {
            axes: None,
            keepdims: false
        })
    );
}

/// (model, weight tensors, weight elements, elements excluding BatchNorm running statistics),
/// computed from the ONNX files with the Python onnx package.
const ZOO: [(&str, usize, usize, usize); 9] = [
    ("alexnet", 16, 60_965_224, 60_965_224),
    ("densenet121", 848, 8_146_152, 8_062_504),
    ("inception_v1", 116, 6_998_552, 6_998_552),
    ("inception_v2", 485, 11_234_792, 11_214_888),
    ("resnet50", 267, 25_610_152, 25_557_032),
    ("shufflenet", 248, 1_420_152, 1_393_320),
    ("squeezenet", 52, 1_235_496, 1_235_496),
    ("vgg19", 38, 143_667_240, 143_667_240),
    ("zfnet512", 16, 87_250_536, 87_250_536),
];

fn trainable_params(g: &Graph) -> usize {
    let mut stats = std::collections::HashSet::new();
    for n in g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNormalization(_)))
    {
        stats.extend(n.inputs[3..].iter().copied());
    }
    g.weights()
        .filter(|t| !stats.contains(t))
        .map(|t| g.tensor(t).numel())
        .sum()
}

#[test]
fn zoo_light_models_import() {
    let Some(d) = try_data_dir() else { return };
    for (name, n_weights, n_elems, n_params) in ZOO {
        let p = d.join("models").join(format!("{name}.onnx"));
        if !p.exists() {
            eprintln!("note: {} missing, skipped", p.display());
            continue;
        }
        let g = load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        g.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(g.inputs.len(), 1, "{name}");
        assert_eq!(g.tensor(g.inputs[0]).shape, vec![1, 3, 224, 224], "{name}");
        let out = &g.tensor(g.outputs[0]).shape;
        assert!(
            out == &[1, 1000] || out == &[1, 1000, 1, 1],
            "{name}: output {out:?}"
        );
        assert_eq!(g.weights().count(), n_weights, "{name}: weight tensors");
        assert_eq!(g.totals(g.weights()).0, n_elems, "{name}: weight elements");
        assert_eq!(trainable_params(&g), n_params, "{name}: parameters");
        // Light models store their weights as ConstantOfShape(0.02): all folded to weights.
        assert!(g.nodes.iter().all(|n| !n.op.name().contains("Constant")));
    }
}

#[test]
fn small_randomized_zoo_models_match_reference_shapes() {
    let Some(d) = try_data_dir() else { return };
    for name in ["squeezenet", "shufflenet", "inception_v1", "densenet121"] {
        let dir = d.join("ref").join(name);
        if !dir.join("model.onnx").exists() {
            continue;
        }
        let g = load(&dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_io(&g, &dir.join("b1"), name);
        let light = ZOO.iter().find(|z| z.0 == name).unwrap();
        assert_eq!(g.totals(g.weights()).0, light.2, "{name}");
    }
}

// ---------------------------------------------------------------- malformed input

fn vi(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                Value::DimParam("N".into())
                            } else {
                                Value::DimValue(d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    inits: Vec<pb::TensorProto>,
) -> Vec<u8> {
    let out = nodes
        .last()
        .map(|n| n.output[0].clone())
        .unwrap_or_default();
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(pb::GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer: inits,
            input: inputs,
            output: vec![pb::ValueInfoProto {
                name: Some(out),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn tensor(
    name: &str,
    dims: &[i64],
    raw: Vec<u8>,
    dtype: pb::tensor_proto::DataType,
) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(dtype as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

#[test]
fn a_built_model_imports() {
    let shape = tensor(
        "s",
        &[2],
        write_i64(&[-1, 6]),
        pb::tensor_proto::DataType::Int64,
    );
    let bytes = model(
        vec![
            node("Relu", &["x"], &["r"]),
            node("Reshape", &["r", "s"], &["y"]),
        ],
        vec![vi("x", &[2, 3, 4])],
        vec![shape],
    );
    let g = import_model(&bytes, "built").unwrap();
    assert_eq!(g.name, "built");
    assert_eq!(g.tensor(g.outputs[0]).shape, vec![4, 6]);
    assert_eq!(g.weights().count(), 0, "the shape became an attribute");
    assert_eq!(
        g.nodes[0].name, "Relu_0",
        "unnamed nodes get generated names"
    );
}

fn write_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn garbage_and_truncated_bytes_are_decode_errors() {
    let e = import_model(b"\xff\xff\xff\xff garbage", "x").unwrap_err();
    assert!(e.to_string().starts_with("not a valid ONNX model"), "{e}");
    let bytes = match try_data_dir().map(|d| d.join("models/squeezenet.onnx")) {
        Some(p) if p.exists() => std::fs::read(p).unwrap(),
        _ => model(
            vec![node("Relu", &["x"], &["y"])],
            vec![vi("x", &[2])],
            vec![],
        ),
    };
    for cut in [bytes.len() / 2, bytes.len() - 1, 1] {
        // A cut can land on a field boundary and still decode; it must then fail cleanly.
        if let Err(e) = import_model(&bytes[..cut], "x") {
            assert!(!e.to_string().is_empty());
        }
    }
    assert!(matches!(
        import_model(&bytes[..bytes.len() / 2], "x"),
        Err(ImportError::Decode(_))
    ));
}

#[test]
fn unknown_op_names_op_node_domain_and_opset() {
    let mut n = node("FancyOp", &["x"], &["y"]);
    n.name = Some("fancy1".into());
    let e = import_model(&model(vec![n], vec![vi("x", &[2])], vec![]), "x").unwrap_err();
    let msg = e.to_string();
    for part in ["FancyOp", "'fancy1'", "ai.onnx", "opset 13"] {
        assert!(msg.contains(part), "{msg}");
    }
    // Unnamed: the index and first output identify it; custom domains are named.
    let mut n = node("Gelu", &["x"], &["y"]);
    n.domain = Some("com.microsoft".into());
    let msg = import_model(&model(vec![n], vec![vi("x", &[2])], vec![]), "x")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("#0") && msg.contains("'y'") && msg.contains("com.microsoft"),
        "{msg}"
    );
}

#[test]
fn reshape_shape_computed_from_data_is_not_constant() {
    let bytes = model(
        vec![node("Reshape", &["x", "s"], &["y"])],
        vec![vi("x", &[2, 3]), vi("s", &[2])],
        vec![],
    );
    let e = import_model(&bytes, "x").unwrap_err();
    assert!(
        matches!(e, ImportError::NotConstant { ref input, .. } if input == "s"),
        "{e}"
    );
}

#[test]
fn bad_tensors_are_errors_naming_the_tensor() {
    use pb::tensor_proto::DataType;
    let relu = || vec![node("Add", &["x", "w"], &["y"])];
    let short = tensor("w", &[2], vec![0; 7], DataType::Float);
    let e = import_model(&model(relu(), vec![vi("x", &[2])], vec![short]), "x").unwrap_err();
    assert!(
        e.to_string().contains("'w'") && e.to_string().contains("raw_data holds 7"),
        "{e}"
    );
    let huge = tensor("w", &[1 << 40, 1 << 40], vec![0; 4], DataType::Float);
    let e = import_model(&model(relu(), vec![vi("x", &[2])], vec![huge]), "x").unwrap_err();
    assert!(e.to_string().contains("'w'"), "{e}");
    let huge = tensor("w", &[1 << 40], vec![0; 4], DataType::Float);
    let e = import_model(&model(relu(), vec![vi("x", &[2])], vec![huge]), "x").unwrap_err();
    assert!(e.to_string().contains("'w'"), "{e}");
    let s = tensor("w", &[1], vec![0; 4], DataType::String);
    let e = import_model(&model(relu(), vec![vi("x", &[2])], vec![s]), "x").unwrap_err();
    assert!(matches!(e, ImportError::UnsupportedDtype { .. }), "{e}");
    // A standalone .pb as well.
    let bytes = tensor("t", &[3], vec![0; 5], DataType::Float).encode_to_vec();
    assert!(read_tensor(&bytes).unwrap_err().to_string().contains("'t'"));
    let _ = write_tensor("t", &[0], &lowmem_ir::TensorData::F32(vec![]));
}

#[test]
fn huge_constant_of_shape_is_refused_without_allocating() {
    use pb::tensor_proto::DataType;
    let shape = tensor("s", &[2], write_i64(&[1 << 40, 1 << 20]), DataType::Int64);
    let bytes = model(
        vec![
            node("ConstantOfShape", &["s"], &["c"]),
            node("Add", &["x", "c"], &["y"]),
        ],
        vec![vi("x", &[2])],
        vec![shape],
    );
    let e = import_model(&bytes, "x").unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
}

/// Fuzzer finding: a mutated "light" zoo model (weights stored as ConstantOfShape, as in
/// squeezenet) whose shapes each stayed under the per-tensor cap used gigabytes in total.
/// The fold limit now bounds all folded constants of an import together.
#[test]
fn folded_constants_share_one_memory_limit() {
    use pb::tensor_proto::DataType;
    let inits = vec![
        tensor("s1", &[2], write_i64(&[64, 1024]), DataType::Int64),
        tensor("s2", &[2], write_i64(&[64, 1024]), DataType::Int64),
    ];
    let nodes = vec![
        node("ConstantOfShape", &["s1"], &["c1"]),
        node("ConstantOfShape", &["s2"], &["c2"]),
        node("Add", &["x", "c1"], &["a"]),
        node("Add", &["a", "c2"], &["y"]),
    ];
    let bytes = model(nodes, vec![vi("x", &[64, 1024])], inits);
    // Each constant is 256 KiB of f32.
    let g = import_model_limited(&bytes, "x", 512 << 10).unwrap();
    g.validate().unwrap();
    assert_eq!(g.weights().count(), 2);
    let e = import_model_limited(&bytes, "x", (512 << 10) - 1).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("ConstantOfShape") && msg.contains("limit"),
        "{msg}"
    );
    // Folds that amplify through index vectors (Gather, Add of broadcast constants) count
    // their working memory too.
    let inits = vec![
        tensor("a", &[1], write_i64(&[1]), DataType::Int64),
        tensor("b", &[4096], write_i64(&[2; 4096]), DataType::Int64),
    ];
    let bytes = model(vec![node("Add", &["a", "b"], &["y"])], vec![], inits);
    assert!(import_model_limited(&bytes, "x", 4096 * 48).is_ok());
    assert!(import_model_limited(&bytes, "x", 4096 * 48 - 1).is_err());
}

#[test]
fn dynamic_dims_and_opsets_are_reported() {
    let bytes = model(
        vec![node("Relu", &["x"], &["y"])],
        vec![vi("x", &[-1, 3])],
        vec![],
    );
    let e = import_model(&bytes, "x").unwrap_err();
    assert!(matches!(e, ImportError::DynamicDim { dim: 0, .. }), "{e}");
    assert!(
        e.to_string().contains("'x'") && e.to_string().contains("'N'"),
        "{e}"
    );
    let mut m = pb::ModelProto::decode(
        &model(
            vec![node("Relu", &["x"], &["y"])],
            vec![vi("x", &[2])],
            vec![],
        )[..],
    )
    .unwrap();
    m.opset_import[0].version = Some(5);
    let e = import_model(&m.encode_to_vec(), "x").unwrap_err();
    assert!(
        matches!(e, ImportError::UnsupportedOpset { version: 5, .. }),
        "{e}"
    );
}

#[test]
fn bad_attributes_and_external_data() {
    use pb::attribute_proto::AttributeType;
    let mut n = node("Softmax", &["x"], &["y"]);
    n.attribute.push(pb::AttributeProto {
        name: Some("axis".into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(1.0),
        ..Default::default()
    });
    let e = import_model(&model(vec![n], vec![vi("x", &[2, 3])], vec![]), "x").unwrap_err();
    assert!(
        matches!(e, ImportError::BadAttribute { ref attr, .. } if attr == "axis"),
        "{e}"
    );
    let mut w = tensor("w", &[2], vec![], pb::tensor_proto::DataType::Float);
    w.raw_data = None;
    w.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    let e = import_model(
        &model(
            vec![node("Add", &["x", "w"], &["y"])],
            vec![vi("x", &[2])],
            vec![w],
        ),
        "x",
    )
    .unwrap_err();
    assert!(
        matches!(e, ImportError::ExternalData { ref name } if name == "w"),
        "{e}"
    );
}
