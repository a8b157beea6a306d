//! The JSON examples in `ir/examples/`: they load, round-trip exactly through the JSON form,
//! and run to onnxruntime's outputs for the same graph converted by an independent reader of
//! the JSON spec (`scripts/lowmem_json.py`).

mod common;

use common::{check_close, read_pb};
use lowmem_ir::json;
use lowmem_testkit::{data_dir, example_path, load_example};

const EXAMPLES: &[&str] = &["tiny_cnn", "mlp", "encoder_block"];

#[test]
fn examples_round_trip_through_json_bit_for_bit() {
    for name in EXAMPLES {
        let g = load_example(name);
        let text = json::to_json(&g);
        let g2 = json::from_json(&text).unwrap();
        assert!(json::same_graph(&g, &g2), "{name}");
        assert_eq!(text, json::to_json(&g2), "{name}");
    }
}

#[test]
fn examples_match_onnxruntime() {
    for name in EXAMPLES {
        let g = load_example(name);
        let x = read_pb(&example_path(name).with_extension("x.pb"));
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
