//! Any bytes given to the ONNX importer or the TensorProto reader give a graph that validates,
//! or an error; never a panic, an abort or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = lowmem_onnx::import_model(data, "fuzz") {
        g.validate().expect("imported graphs validate");
        let _ = g.with_batch(3);
    }
    let _ = lowmem_onnx::read_tensor(data);
});
