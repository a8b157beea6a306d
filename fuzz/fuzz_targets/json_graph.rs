//! Any text given to the JSON loader gives a valid graph that round-trips exactly, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowmem_ir::json;

/// Generated (`fill`/`uniform`) weights are capped well below the fuzzer's memory limits; the
/// cap itself is what is under test, not the default's size.
const MAX_GENERATED_BYTES: usize = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = json::from_json_limited(text, MAX_GENERATED_BYTES) {
        let again = json::from_json(&json::to_json(&g)).expect("written graphs load");
        assert!(json::same_graph(&g, &again));
        let _ = g.with_batch(2);
    }
});
