//! Every kernel file compiles with NVRTC to CUBINs for sm_80 (A100) and sm_90 (H100/H200),
//! with no register spills or stack frames and shared memory within the static 48 KiB limit
//! (ptxas's figures from NVRTC's log). CI installs NVRTC from PyPI and sets
//! `LOWMEM_REQUIRE_NVRTC=1`; elsewhere a missing NVRTC skips, visibly.

use lowmem_cuda::nvrtc::{self, KernelStats};
use lowmem_cuda::source::{FILES, kernel_names};

fn nvrtc_or_skip() -> bool {
    match nvrtc::ensure_loaded() {
        Ok(()) => true,
        Err(e) if std::env::var_os("LOWMEM_REQUIRE_NVRTC").is_some() => {
            panic!("LOWMEM_REQUIRE_NVRTC is set but NVRTC is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    let (maj, min) = nvrtc::version().unwrap();
    let mut table: Vec<(String, KernelStats)> = Vec::new();
    for arch in ["sm_80", "sm_90"] {
        for (file, src) in FILES {
            let c = nvrtc::compile(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.cubin.is_empty(), "{file} for {arch}: empty CUBIN");
            let names = kernel_names(src);
            assert_eq!(
                c.kernels.len(),
                names.len(),
                "{file} for {arch}: ptxas reported {:?}, the source defines {names:?}\n{}",
                c.kernels.iter().map(|k| &k.name).collect::<Vec<_>>(),
                c.log
            );
            for k in c.kernels {
                assert!(
                    k.spill_stores == 0 && k.spill_loads == 0,
                    "{arch} {}: {} bytes spill stores, {} bytes spill loads",
                    k.name,
                    k.spill_stores,
                    k.spill_loads
                );
                assert!(
                    k.shared_bytes <= 48 * 1024,
                    "{arch} {}: {} bytes of shared memory",
                    k.name,
                    k.shared_bytes
                );
                assert!(
                    k.registers > 0 && k.registers <= 255,
                    "{arch} {}: {} registers",
                    k.name,
                    k.registers
                );
                table.push((arch.to_string(), k));
            }
        }
    }
    eprintln!(
        "NVRTC {maj}.{min}: {} kernels per architecture",
        table.len() / 2
    );
    for (arch, k) in &table {
        eprintln!(
            "{arch} {:<28} {:>3} registers, {:>5} B smem, {} B stack, {} B spills",
            k.name,
            k.registers,
            k.shared_bytes,
            k.stack_bytes,
            k.spill_stores + k.spill_loads
        );
    }
}

#[test]
fn a_compile_error_names_the_file_and_carries_nvrtcs_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let bad = "extern \"C\" __global__ void lm_bad(float* x) { x[0] = undefined_thing; }";
    let e = nvrtc::compile("bad", bad, "sm_90")
        .err()
        .expect("must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("kernels/bad.cu") && msg.contains("undefined_thing"),
        "{msg}"
    );
}
