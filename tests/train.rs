//! `lowmem train` end to end on the digits data set, the ONNX export round trip, and the
//! command line's errors for bad training/gradient arguments.

use std::path::{Path, PathBuf};

use lowmem_ir::{DType, TensorData};
use lowmem_testkit::{Cli, example_names, example_path, lowmem_cli, workspace_root};

fn cli() -> Cli {
    lowmem_cli!()
}

/// `data/digits.csv.gz`: the README's test command (`scripts/test.sh`) fetches it.
fn digits_file() -> PathBuf {
    let f = workspace_root().join("data").join("digits.csv.gz");
    assert!(
        f.is_file(),
        "{} is missing: run `python3 scripts/fetch_data.py --digits` (scripts/test.sh does)",
        f.display()
    );
    f
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `test accuracy: 97.2% (350/360)` -> (350, 360).
fn parse_accuracy(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test accuracy:"))
        .unwrap_or_else(|| panic!("no accuracy line in:\n{stdout}"));
    let inner = &line[line.find('(').unwrap() + 1..line.find(')').unwrap()];
    let (c, n) = inner.split_once('/').unwrap();
    (c.parse().unwrap(), n.parse().unwrap())
}

#[test]
fn mlp_learns_digits_and_the_saved_model_agrees() {
    digits_file();
    let dir = tmp("mlp");
    let out = dir.join("digits_mlp.onnx");
    let o = cli().run(&[
        "train",
        "ir/examples/digits_mlp.json",
        "--data",
        "digits",
        "--steps",
        "600",
        "--batch",
        "32",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--momentum",
        "0.9",
        "--loss",
        "xent",
        "--seed",
        "1",
        "--eval-every",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (&o.stdout, &o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let (correct, total) = parse_accuracy(stdout);
    assert_eq!(total, lowmem::data::DIGITS_TEST);
    assert!(
        correct as f64 >= 0.95 * total as f64,
        "accuracy {correct}/{total} below 95%:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("steps/s"), "{stdout}");
    // Without a terminal, progress comes as plain lines.
    assert!(stderr.contains("step 600/600 loss"), "{stderr}");
    assert!(stderr.contains("step 300/600: test accuracy"), "{stderr}");

    let g = lowmem_onnx::load(&out).unwrap();
    assert_eq!(g.tensor(g.inputs[0]).shape, vec![1, 64]);
    let split = lowmem::data::digits().unwrap();
    let (c2, n2) = lowmem::train::accuracy(&g, &split.test).unwrap();
    assert_eq!((c2, n2), (correct, total), "the saved model disagrees");
}

#[test]
fn digits_split_is_fixed() {
    digits_file();
    let a = lowmem::data::digits().unwrap();
    let b = lowmem::data::digits().unwrap();
    assert_eq!(a.train.len(), 1437);
    assert_eq!(a.test.len(), 360);
    assert_eq!(a.test.y, b.test.y);
    assert!(a.train.x.iter().all(|&p| (0.0..=1.0).contains(&p)));
    let mut seen = [false; 10];
    for &y in &a.test.y {
        seen[y as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "every class is in the test set");
}

/// Deterministic input for a graph input (examples without a `.x.pb`).
fn input_for(shape: &[usize]) -> TensorData {
    let n: usize = shape.iter().product();
    TensorData::F32(
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect(),
    )
}

#[test]
fn export_round_trips_the_examples() {
    let mut checked = 0;
    for name in example_names() {
        let path = example_path(&name);
        let g = lowmem::model::load(&path, None).unwrap();
        let x_pb = path.with_extension("x.pb");
        let inputs: Vec<TensorData> = if x_pb.is_file() {
            vec![lowmem::model::read_tensor(&x_pb).unwrap().data]
        } else {
            g.inputs
                .iter()
                .map(|&i| {
                    let t = g.tensor(i);
                    assert_eq!(t.dtype, DType::F32);
                    input_for(&t.shape)
                })
                .collect()
        };
        let want = lowmem_exec::run(&g, &inputs).unwrap();
        let bytes =
            lowmem_onnx::export_model(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back = lowmem_onnx::import_model(&bytes, &g.name)
            .unwrap_or_else(|e| panic!("{}: re-import: {e}", path.display()));
        assert_eq!(back.inputs.len(), g.inputs.len());
        assert_eq!(back.outputs.len(), g.outputs.len());
        let got = lowmem_exec::run(&back, &inputs).unwrap();
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            let (a, b) = (a.to_f64(), b.to_f64());
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{} output {k}[{i}]: {x} vs {y}",
                    path.display()
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} examples");
}

#[test]
fn grad_xent_without_labels_is_an_error() {
    let dir = tmp("nolabels");
    let o = cli().run(&[
        "grad",
        "ir/examples/mlp.json",
        "--input",
        "x=ir/examples/mlp.x.pb",
        "--loss",
        "xent",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    let stderr = &o.stderr;
    assert!(!o.status.success());
    assert!(stderr.contains("--labels"), "{stderr}");
}

#[test]
fn grad_labels_of_the_wrong_shape_are_an_error() {
    let dir = tmp("badlabels");
    let labels = dir.join("labels.pb");
    // mlp.json has batch 4: xent needs i64 [4].
    std::fs::write(
        &labels,
        lowmem_onnx::write_tensor("labels", &[3], &TensorData::I64(vec![1, 2, 3])),
    )
    .unwrap();
    let o = cli().run(&[
        "grad",
        "ir/examples/mlp.json",
        "--input",
        "x=ir/examples/mlp.x.pb",
        "--loss",
        "xent",
        "--labels",
        labels.to_str().unwrap(),
        "--output-dir",
        dir.join("out").to_str().unwrap(),
    ]);
    let stderr = &o.stderr;
    assert!(!o.status.success());
    assert!(
        stderr.contains("[3]") && stderr.contains("[4]") && stderr.contains("i64"),
        "{stderr}"
    );
    // f32 labels for xent: wrong dtype.
    std::fs::write(
        &labels,
        lowmem_onnx::write_tensor("labels", &[4], &TensorData::F32(vec![0.0; 4])),
    )
    .unwrap();
    let o = cli().run(&[
        "grad",
        "ir/examples/mlp.json",
        "--input",
        "x=ir/examples/mlp.x.pb",
        "--loss",
        "xent",
        "--labels",
        labels.to_str().unwrap(),
        "--output-dir",
        dir.join("out").to_str().unwrap(),
    ]);
    let stderr = &o.stderr;
    assert!(!o.status.success());
    assert!(stderr.contains("f32") && stderr.contains("i64"), "{stderr}");
}

#[test]
fn unknown_loss_and_data_are_errors() {
    let o = cli().run(&[
        "grad",
        "ir/examples/mlp.json",
        "--input",
        "x=ir/examples/mlp.x.pb",
        "--loss",
        "hinge",
        "--output-dir",
        "unused",
    ]);
    let stderr = &o.stderr;
    assert!(!o.status.success());
    assert!(
        stderr.contains("hinge") && stderr.contains("xent"),
        "{stderr}"
    );

    let o = cli().run(&["train", "ir/examples/digits_mlp.json", "--data", "mnist"]);
    let stderr = &o.stderr;
    assert!(!o.status.success());
    assert!(
        stderr.contains("mnist") && stderr.contains("digits"),
        "{stderr}"
    );
}

#[test]
fn train_rejects_a_model_of_the_wrong_input_shape() {
    digits_file();
    // encoder_block's input x [2, 8, 16] is not [B, 64] or [B, 1, 8, 8].
    let o = cli().run(&[
        "train",
        "ir/examples/encoder_block.json",
        "--data",
        "digits",
        "--steps",
        "1",
    ]);
    let stderr = &o.stderr;
    assert!(!o.status.success());
    assert!(
        stderr.contains("'x'") && stderr.contains("[32, 8, 16]") && stderr.contains("[B, 64]"),
        "{stderr}"
    );
}

#[test]
fn cnn_learns_digits() {
    digits_file();
    let dir = tmp("cnn");
    let out = dir.join("digits_cnn.onnx");
    let o = cli().run(&[
        "train",
        "ir/examples/digits_cnn.json",
        "--data",
        "digits",
        "--steps",
        "600",
        "--lr",
        "0.05",
        "--seed",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (&o.stdout, &o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let (correct, total) = parse_accuracy(stdout);
    assert!(
        correct as f64 >= 0.95 * total as f64,
        "accuracy {correct}/{total} below 95%:\n{stdout}"
    );
    assert!(out.is_file());
}

/// Epilogue fusion changes no bit of training: the same loss after every step and the same
/// trained weights, with and without `--no-fuse`, on models with Conv/Gemm -> ReLU pairs and
/// dropout (whose masks must not depend on how many nodes precede them).
#[test]
fn fused_and_unfused_steps_train_bitwise_alike() {
    let dir = std::env::temp_dir().join(format!("lowmem-fuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in ["digits_dropout", "digits_cnn"] {
        let path = example_path(model);
        let run = |extra: &[&str], out: &Path| -> serde_json::Value {
            let path = path.to_str().unwrap();
            let out = out.to_str().unwrap();
            let mut args = vec![
                "train", path, "--data", "digits", "--steps", "40", "--json", "--out", out,
            ];
            args.extend(extra);
            let s = cli().ok(&args);
            serde_json::from_str(s.lines().last().unwrap()).unwrap()
        };
        let (fo, uo) = (dir.join("fused.onnx"), dir.join("unfused.onnx"));
        let (f, u) = (run(&[], &fo), run(&["--no-fuse"], &uo));
        assert_eq!(f["final_loss"], u["final_loss"], "{model}");
        assert_eq!(f["correct"], u["correct"], "{model}");
        let weights = |p: &Path| {
            let g = lowmem_onnx::import_model(&std::fs::read(p).unwrap(), "m").unwrap();
            let mut w: Vec<(String, TensorData)> = g
                .weights()
                .map(|t| {
                    (
                        g.tensor(t).name.clone(),
                        (*g.tensor(t).value.clone().unwrap()).clone(),
                    )
                })
                .collect();
            w.sort_by(|a, b| a.0.cmp(&b.0));
            w
        };
        assert!(
            weights(&fo) == weights(&uo),
            "{model}: trained weights differ"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
