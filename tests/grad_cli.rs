//! `lowmem grad` writes one TensorProto per trainable weight and an index.

use std::path::Path;

use lowmem_testkit::{example_path, lowmem_cli};

#[test]
fn grad_writes_index_and_one_file_per_weight() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grad-mlp");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = lowmem_cli!().ok(&[
        "grad",
        "ir/examples/mlp.json",
        "--input",
        "x=ir/examples/mlp.x.pb",
        "--loss",
        "sum",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(stdout.contains("loss"), "{stdout}");

    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    assert!(index["loss"].as_f64().unwrap().is_finite());
    let grads = index["gradients"].as_object().unwrap();

    let g = lowmem::model::load(&example_path("mlp"), None).unwrap();
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
    let dir = std::env::temp_dir().join(format!("lowmem-grad-output-{}", std::process::id()));
    let out = lowmem_cli!()
        .cmd()
        .arg("grad")
        .arg(example_path("mlp"))
        .arg("--input")
        .arg("x=ir/examples/mlp.x.pb")
        .args(["--output", "nope", "--output-dir"])
        .arg(&dir)
        .run();
    assert_eq!(out.status.code(), Some(1));
    let err = &out.stderr;
    assert!(
        err.contains("no output 'nope'") && err.contains("logp"),
        "{err}"
    );
}
