//! Compiles every kernel file of `kernels/` as C++ against the host shim
//! (`kernels/shim/`), with a lookup from kernel name to an entry that unpacks
//! cuLaunchKernel-style parameters. The file list and kernel names come from
//! lowmem-cuda's own `source.rs`, the one list of them.

use std::fmt::Write as _;
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../cuda/src/source.rs"]
mod source;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=../cuda/src/source.rs");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(false)
        .include(&root)
        .include(root.join("shim"))
        .file(root.join("shim/runtime.cpp"));
    let mut registry = String::from("#include \"cuda_shim.h\"\n");
    let mut lookups = String::new();
    for (file, src) in source::FILES {
        let mut unit = format!(
            "#include \"cuda_shim.h\"\n#include \"common.cuh\"\n#include \"{file}.cu\"\n\
             extern \"C\" lm_shim::Thunk lm_shim_lookup_{file}(const char* name) {{\n"
        );
        for k in source::kernel_names(src) {
            writeln!(
                unit,
                "    if (std::strcmp(name, \"{k}\") == 0) return LM_SHIM_THUNK({k});"
            )
            .unwrap();
        }
        unit.push_str("    return nullptr;\n}\n");
        let path = out.join(format!("unit_{file}.cpp"));
        std::fs::write(&path, unit).unwrap();
        build.file(&path);
        writeln!(
            registry,
            "extern \"C\" lm_shim::Thunk lm_shim_lookup_{file}(const char*);"
        )
        .unwrap();
        writeln!(
            lookups,
            "    if (auto t = lm_shim_lookup_{file}(name)) return t;"
        )
        .unwrap();
    }
    registry.push_str("extern \"C\" lm_shim::Thunk lm_shim_lookup(const char* name) {\n");
    registry.push_str(&lookups);
    registry.push_str("    return nullptr;\n}\n");
    let reg = out.join("registry.cpp");
    std::fs::write(&reg, registry).unwrap();
    build.file(&reg);
    build.compile("lowmem_cuda_shim");
}
