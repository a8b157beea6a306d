//! The JSON examples in `ir/examples/`: they load, round-trip exactly through the JSON form,
//! and run to onnxruntime's outputs for the same graph converted by an independent reader of
//! the JSON spec (`scripts/lowmem_json.py`).

mod common;

use std::path::Path;

use common::{check_close, data_dir, read_pb};
use lowmem_ir::json;

const EXAMPLES: &[&str] = &["tiny_cnn", "mlp", "encoder_block"];

fn example(name: &str) -> lowmem_ir::Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ir/examples")
        .join(format!("{name}.json"));
    json::from_json(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn examples_round_trip_through_json_bit_for_bit() {
    for name in EXAMPLES {
        let g = example(name);
        let text = json::to_json(&g);
        let g2 = json::from_json(&text).unwrap();
        assert!(json::same_graph(&g, &g2), "{name}");
        assert_eq!(text, json::to_json(&g2), "{name}");
    }
}

#[test]
fn examples_match_onnxruntime() {
    for name in EXAMPLES {
        let g = example(name);
        let x = read_pb(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("ir/examples")
                .join(format!("{name}.x.pb")),
        );
        let expected = read_pb(
            &data_dir()
                .join("ref/examples")
                .join(name)
                .join("output_0.pb"),
        );
        let out = lowmem_exec::run(&g, &[x.data]).unwrap();
        check_close(name, &out[0], &expected, 1e-4, 1e-5).unwrap();
    }
}
