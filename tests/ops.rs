//! Every op case made by `scripts/make_refs.py` (single ops and small op groups built with
//! onnx.helper, including broadcasting, padding, ceil-mode, axis and opset edge cases),
//! imported and run by lowmem, against onnxruntime's outputs.

mod common;

use common::{check_close, read_pb};
use lowmem_testkit::data_dir;

/// Tolerance for every case: float32 kernels against onnxruntime's.
const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// Ops outside the IR, whose import must fail with an error naming them.
const UNSUPPORTED: &[(&str, &str)] = &[("globalmaxpool", "GlobalMaxPool")];

#[test]
fn every_op_case_matches_onnxruntime() {
    let dir = data_dir().join("ref").join("ops");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().expect("index.json lists cases");
    let mut failures = Vec::new();
    let mut passed = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cdir = dir.join(name);
        let imported = lowmem_onnx::load(&cdir.join("model.onnx"));
        if let Some((_, op)) = UNSUPPORTED.iter().find(|(c, _)| *c == name) {
            match imported {
                Err(e) if e.to_string().contains(op) => passed += 1,
                other => failures.push(format!(
                    "{name}: expected an unsupported-op error naming {op}, got {:?}",
                    other.map(|_| ())
                )),
            }
            continue;
        }
        let g = match imported {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: import: {e}"));
                continue;
            }
        };
        let inputs: Vec<_> = (0..g.inputs.len())
            .map(|k| read_pb(&cdir.join(format!("input_{k}.pb"))))
            .collect();
        for (k, t) in inputs.iter().enumerate() {
            assert_eq!(
                g.tensor(g.inputs[k]).name,
                t.name,
                "{name}: input {k} order"
            );
        }
        let out =
            match lowmem_exec::run(&g, &inputs.into_iter().map(|t| t.data).collect::<Vec<_>>()) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("{name}: run: {e}"));
                    continue;
                }
            };
        let mut ok = true;
        for (k, data) in out.iter().enumerate() {
            let expected = read_pb(&cdir.join(format!("output_{k}.pb")));
            let shape = &g.tensor(g.outputs[k]).shape;
            if *shape != expected.shape {
                failures.push(format!(
                    "{name}: output {k} shape {shape:?} != expected {:?}",
                    expected.shape
                ));
                ok = false;
            } else if let Err(e) =
                check_close(&format!("{name} output {k}"), data, &expected, RTOL, ATOL)
            {
                failures.push(e);
                ok = false;
            }
        }
        passed += ok as usize;
    }
    println!("{passed} of {} op cases match onnxruntime", cases.len());
    assert!(
        cases.len() >= 100,
        "expected the full op suite, found {} cases",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} op cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
