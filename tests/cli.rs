//! The `lowmem` command line: inspect, run, batch rewriting, and a clear error with a non-zero
//! exit (never a panic) for each kind of bad input.

mod common;

use std::path::PathBuf;

use common::{check_close, read_pb};
use lowmem_testkit::{Cli, data_dir, lowmem_cli, workspace_root};

fn cli() -> Cli {
    lowmem_cli!()
}

fn example(name: &str) -> String {
    workspace_root()
        .join("ir/examples")
        .join(name)
        .display()
        .to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowmem-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn inspect_reports_histogram_parameters_flops_and_shapes() {
    let text = cli().ok(&["inspect", &example("tiny_cnn.json"), "--verbose"]);
    // conv1 4*1*9+4, bn scale and bias 2*4, conv2 8*4*9, fc 10*8+10; bn mean and var are not
    // parameters.
    assert!(text.contains("parameters: 426 "), "{text}");
    assert!(
        text.contains("BatchNorm statistics, shape data): 8 "),
        "{text}"
    );
    assert!(
        text.contains("Relu") && text.contains("Conv") && text.contains("forward FLOPs"),
        "{text}"
    );
    assert!(text.contains("probs") && text.contains("[1, 10]"), "{text}");
    let b = cli().ok(&["inspect", &example("tiny_cnn.json"), "--batch", "3"]);
    assert!(
        b.contains("x f32 [3, 1, 8, 8]") && b.contains("probs f32 [3, 10]"),
        "{b}"
    );
}

#[test]
fn inspect_resnet50_counts_its_parameters() {
    let model = data_dir().join("models/resnet50.onnx");
    let text = cli().ok(&["inspect", model.to_str().unwrap()]);
    assert!(text.contains("parameters: 25,557,032"), "{text}");
    assert!(text.contains("Conv                 53"), "{text}");
}

#[test]
fn run_writes_outputs_that_match_onnxruntime() {
    let dir = tmp("run");
    let out = cli().run(&[
        "run",
        &example("encoder_block.json"),
        "--input",
        &format!("x={}", example("encoder_block.x.pb")),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_ok();
    let got = read_pb(&dir.join("output_0.pb"));
    let expected = read_pb(&data_dir().join("ref/examples/encoder_block/output_0.pb"));
    assert_eq!((got.name.as_str(), &got.shape), ("y", &expected.shape));
    check_close("encoder_block via CLI", &got.data, &expected, 1e-4, 1e-5).unwrap();
}

#[test]
fn run_zoo_model_at_batch_4() {
    let r = data_dir().join("ref/squeezenet");
    let dir = tmp("b4");
    cli().ok(&[
        "run",
        r.join("model.onnx").to_str().unwrap(),
        "--batch",
        "4",
        "--input",
        &format!("data_0={}", r.join("b4/input_0.pb").display()),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    let got = read_pb(&dir.join("output_0.pb"));
    check_close(
        "squeezenet b4 via CLI",
        &got.data,
        &read_pb(&r.join("b4/output_0.pb")),
        1e-3,
        1e-4,
    )
    .unwrap();
}

#[test]
fn garbage_and_truncated_protobuf_are_clean_errors() {
    let dir = tmp("garbage");
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not a model").unwrap();
    cli().fails(
        &["inspect", garbage.to_str().unwrap()],
        &["garbage.onnx", "ONNX"],
    );
    let bytes = std::fs::read(data_dir().join("models/resnet50.onnx")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    cli().fails(&["inspect", cut.to_str().unwrap()], &["cut.onnx"]);
    let empty = dir.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    cli().fails(&["inspect", empty.to_str().unwrap()], &["empty.onnx"]);
}

#[test]
fn unknown_op_names_op_node_and_opset() {
    let model = data_dir().join("ref/ops/globalmaxpool/model.onnx");
    cli().fails(
        &["inspect", model.to_str().unwrap()],
        &["GlobalMaxPool", "opset"],
    );
    let dir = tmp("unknown");
    let j = dir.join("unknown.json");
    let text = std::fs::read_to_string(example("mlp.json"))
        .unwrap()
        .replace("\"Gelu\"", "\"Frobnicate\"");
    std::fs::write(&j, text).unwrap();
    cli().fails(
        &["inspect", j.to_str().unwrap()],
        &["node 'act'", "Frobnicate"],
    );
}

#[test]
fn shape_mismatch_and_cycle_name_the_node() {
    let dir = tmp("shape");
    let base = std::fs::read_to_string(example("mlp.json")).unwrap();
    let j = dir.join("shape.json");
    std::fs::write(&j, base.replacen("[64, 32]", "[63, 32]", 1)).unwrap();
    cli().fails(
        &["inspect", j.to_str().unwrap()],
        &["node 'fc1' (Gemm)", "inner dimensions"],
    );
    let c = dir.join("cycle.json");
    std::fs::write(
        &c,
        base.replacen("[\"x\", \"fc1.w\"", "[\"logp\", \"fc1.w\"", 1),
    )
    .unwrap();
    cli().fails(&["inspect", c.to_str().unwrap()], &["cycle"]);
}

#[test]
fn missing_inputs_files_and_wrong_dtypes_are_named() {
    let two_inputs = data_dir().join("ref/ops/add_same");
    let m = two_inputs.join("model.onnx");
    let dir = tmp("inputs");
    let a = read_pb(&two_inputs.join("input_0.pb"));
    let out = cli().run(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &format!("{}={}", a.name, two_inputs.join("input_0.pb").display()),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_fails_with(&["missing input"]);
    let out = cli().run(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &format!("{}=/no/such/file.pb", a.name),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_fails_with(&["/no/such/file.pb"]);
    let ints = dir.join("ints.pb");
    let n: usize = a.shape.iter().product();
    std::fs::write(
        &ints,
        lowmem_onnx::write_tensor(&a.name, &a.shape, &lowmem_ir::TensorData::I64(vec![1; n])),
    )
    .unwrap();
    let out = cli().run(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &format!("{}={}", a.name, ints.display()),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_fails_with(&[&format!("input '{}'", a.name), "i64", "f32"]);
    let out = cli().run(&[
        "run",
        &example("mlp.json"),
        "--input",
        &format!("nope={}", example("mlp.x.pb")),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_fails_with(&["no input 'nope'"]);
    let out = cli().run(&[
        "run",
        &example("mlp.json"),
        "--batch",
        "2",
        "--input",
        &format!("x={}", example("mlp.x.pb")),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_fails_with(&["input 'x'", "--batch"]);
    cli().fails(
        &["inspect", "/no/such/model.onnx"],
        &["/no/such/model.onnx"],
    );
}

#[test]
fn batch_that_the_graph_pins_is_refused_by_node() {
    let dir = tmp("pinned");
    let g = r#"{"format": "lowmem-ir", "version": 1, "name": "pinned",
      "inputs": [{"name": "x", "dtype": "f32", "shape": [2, 3]}],
      "nodes": [{"name": "fold", "op": "Reshape", "attrs": {"shape": [6]}, "inputs": ["x"], "outputs": ["y"]}],
      "outputs": ["y"]}"#;
    let j = dir.join("pinned.json");
    std::fs::write(&j, g).unwrap();
    cli().ok(&["inspect", j.to_str().unwrap()]);
    cli().fails(
        &["inspect", j.to_str().unwrap(), "--batch", "4"],
        &["node 'fold' (Reshape)", "batch"],
    );
}
