//! Any bytes given to the ONNX importer or the TensorProto reader give a graph that validates,
//! or an error; never a panic, an abort or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Constant folding is capped well below the fuzzer's memory limits; the cap itself is what is
/// under test, not the default's size.
const MAX_FOLD_BYTES: usize = 64 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = lowmem_onnx::import_model_limited(data, "fuzz", MAX_FOLD_BYTES) {
        g.validate().expect("imported graphs validate");
        let _ = g.with_batch(3);
    }
    let _ = lowmem_onnx::read_tensor(data);
});
