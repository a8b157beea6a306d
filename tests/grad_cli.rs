//! `lowmem grad` writes one TensorProto per trainable weight and an index.

use std::path::Path;
use std::process::Command;

#[test]
fn grad_writes_index_and_one_file_per_weight() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grad-mlp");
    let _ = std::fs::remove_dir_all(&dir);
    let o = Command::new(env!("CARGO_BIN_EXE_lowmem"))
        .current_dir(root)
        .args([
            "grad",
            "ir/examples/mlp.json",
            "--input",
            "x=ir/examples/mlp.x.pb",
            "--loss",
            "sum",
            "--output-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("loss"), "{stdout}");

    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    assert!(index["loss"].as_f64().unwrap().is_finite());
    let grads = index["gradients"].as_object().unwrap();

    let g = lowmem::model::load(&root.join("ir/examples/mlp.json"), None).unwrap();
    let weights = g.trainable_weights();
    assert_eq!(grads.len(), weights.len());
    for w in weights {
        let t = g.tensor(w);
        let file = grads[&t.name].as_str().unwrap();
        assert_eq!(file, format!("{}.pb", t.name.replace(['/', ':'], "_")));
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let (name, dtype, shape, data) = lowmem_onnx::read_tensor(&bytes).unwrap();
        assert_eq!(
            (name.as_str(), dtype, &shape),
            (t.name.as_str(), t.dtype, &t.shape)
        );
        assert!(data.to_f64().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn a_loss_on_an_output_that_does_not_exist_is_named() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("lowmem-grad-output-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lowmem"))
        .arg("grad")
        .arg(root.join("ir/examples/mlp.json"))
        .arg("--input")
        .arg(format!("x={}", root.join("ir/examples/mlp.x.pb").display()))
        .args(["--output", "nope", "--output-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no output 'nope'") && err.contains("logp"),
        "{err}"
    );
}
