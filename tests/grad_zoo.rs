//! `lowmem grad` on real zoo graphs (random weights, batch 2, cross-entropy) against central
//! finite differences of the forward pass, at the largest-gradient coordinate of a sample of
//! weights spread through each network.

mod common;

use std::sync::Arc;

use common::read_pb;
use lowmem_ir::{Graph, TensorData};
use lowmem_testkit::{data_dir, load, lowmem_cli};

const LABELS: [i64; 2] = [3, 417];

/// Cross-entropy of the model's probabilities (its output is a Softmax), in f64.
fn xent(g: &Graph, x: &TensorData) -> f64 {
    let p = lowmem_exec::run(g, std::slice::from_ref(x))
        .unwrap()
        .remove(0)
        .to_f64();
    let c = p.len() / LABELS.len();
    -LABELS
        .iter()
        .enumerate()
        .map(|(i, &l)| p[i * c + l as usize].ln())
        .sum::<f64>()
        / LABELS.len() as f64
}

fn check_model(name: &str) {
    let dir = data_dir().join("ref").join(name);
    let model = dir.join("model.onnx");
    let g = load(&model, Some(2));
    let input = read_pb(&dir.join("b4/input_0.pb"));
    let per: usize = input.shape[1..].iter().product();
    let x = TensorData::F32(input.data.to_f32()[..2 * per].to_vec());
    let mut shape = input.shape.clone();
    shape[0] = 2;

    let tmp = std::env::temp_dir().join(format!("lowmem-grad-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("x.pb"),
        lowmem_onnx::write_tensor(&input.name, &shape, &x),
    )
    .unwrap();
    std::fs::write(
        tmp.join("labels.pb"),
        lowmem_onnx::write_tensor("labels", &[2], &TensorData::I64(LABELS.to_vec())),
    )
    .unwrap();
    let out = lowmem_cli!()
        .cmd()
        .args([
            "grad",
            model.to_str().unwrap(),
            "--batch",
            "2",
            "--loss",
            "xent",
        ])
        .arg("--input")
        .arg(format!("{}={}", input.name, tmp.join("x.pb").display()))
        .arg("--labels")
        .arg(tmp.join("labels.pb"))
        .arg("--output-dir")
        .arg(tmp.join("grads"))
        .run();
    assert!(out.status.success(), "{name}: {}", out.stderr);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("grads/index.json")).unwrap())
            .unwrap();
    let loss = index["loss"].as_f64().unwrap();
    let base = xent(&g, &x);
    assert!(
        (loss - base).abs() < 1e-4 * base.abs().max(1.0),
        "{name}: loss {loss} vs forward {base}"
    );

    let trainable = g.trainable_weights();
    assert_eq!(
        index["gradients"].as_object().unwrap().len(),
        trainable.len(),
        "{name}: one file per weight"
    );
    // Weights spread through the network: first, quartiles, last.
    let picks: Vec<usize> = [
        0,
        trainable.len() / 4,
        trainable.len() / 2,
        3 * trainable.len() / 4,
        trainable.len() - 1,
    ]
    .to_vec();
    let mut checked = 0;
    for &k in &picks {
        let w = trainable[k];
        let wname = &g.tensor(w).name;
        let file = index["gradients"][wname].as_str().unwrap();
        let grad = read_pb(&tmp.join("grads").join(file));
        assert_eq!(
            grad.shape,
            g.tensor(w).shape,
            "{name}: gradient shape of {wname}"
        );
        let gv = grad.data.to_f64();
        assert!(
            gv.iter().all(|v| v.is_finite()),
            "{name}: {wname} gradient not finite"
        );
        let (i, &gi) = gv
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        if gi.abs() < 1e-4 {
            continue; // Too small to resolve by finite differences in f32.
        }
        let orig = g.tensor(w).value.clone().unwrap().to_f32();
        // A step that moves the loss by about 1e-3: far above f32 noise (~1e-6), small enough
        // that few ReLU kinks or max-pool choices change inside it.
        let eps = (1e-3 / gi.abs()).min(1e-2) as f32;
        let probe = |d: f32| {
            let mut gp = g.clone();
            let mut v = orig.clone();
            v[i] += d;
            gp.tensors[w.index()].value = Some(Arc::new(TensorData::F32(v)));
            xent(&gp, &x)
        };
        let fd = (probe(eps) - probe(-eps)) / (2.0 * eps as f64);
        let rel = (gi - fd).abs() / fd.abs().max(gi.abs());
        assert!(
            rel < 5e-2,
            "{name}: d loss / d {wname}[{i}]: lowmem grad {gi} vs finite difference {fd} (rel {rel:.3})"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "{name}: only {checked} coordinates were large enough to check"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn resnet50() {
    check_model("resnet50");
}

#[test]
fn squeezenet() {
    check_model("squeezenet");
}

#[test]
fn inception_v1() {
    check_model("inception_v1");
}
