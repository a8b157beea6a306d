//! The CUDA C sources in `kernels/`, embedded in the binary. Each file is compiled on its
//! own, with `common.cuh` prepended (NVRTC on the GPU, g++ through the host shim in tests).

/// The shared header, prepended to every file.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// Every kernel file: (family name, source).
pub const FILES: &[(&str, &str)] = &[
    (
        "elementwise",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    ("movement", include_str!("../../../kernels/movement.cu")),
    ("reduce", include_str!("../../../kernels/reduce.cu")),
    ("softmax", include_str!("../../../kernels/softmax.cu")),
    ("layernorm", include_str!("../../../kernels/layernorm.cu")),
    ("losses", include_str!("../../../kernels/losses.cu")),
    ("optim", include_str!("../../../kernels/optim.cu")),
    ("im2col", include_str!("../../../kernels/im2col.cu")),
    (
        "conv_direct",
        include_str!("../../../kernels/conv_direct.cu"),
    ),
    ("batchnorm", include_str!("../../../kernels/batchnorm.cu")),
    ("lrn", include_str!("../../../kernels/lrn.cu")),
    ("pool", include_str!("../../../kernels/pool.cu")),
    ("sparse", include_str!("../../../kernels/sparse.cu")),
];

/// A file's whole compilation unit: the shared header, then the file.
pub fn unit(src: &str) -> String {
    format!("{COMMON}\n#line 1\n{src}")
}

/// The kernels a source defines: every `extern "C" __global__ void NAME(`.
pub fn kernel_names(src: &str) -> Vec<&str> {
    const MARK: &str = "extern \"C\" __global__ void ";
    src.match_indices(MARK)
        .filter_map(|(i, _)| {
            let rest = &src[i + MARK.len()..];
            let end = rest.find('(')?;
            Some(rest[..end].trim())
        })
        .collect()
}

/// FNV-1a of every source, the key of the on-disk kernel cache (with the architecture and
/// the NVRTC version).
pub fn sources_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in COMMON
        .bytes()
        .chain(FILES.iter().flat_map(|(n, s)| n.bytes().chain(s.bytes())))
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_unique() {
        let mut all: Vec<&str> = FILES.iter().flat_map(|(_, s)| kernel_names(s)).collect();
        assert!(all.contains(&"lm_unary"), "{all:?}");
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a kernel name is defined twice");
    }

    #[test]
    fn every_kernel_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cu") {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                assert!(
                    FILES.iter().any(|(f, _)| *f == stem),
                    "kernels/{stem}.cu is not in source::FILES"
                );
            }
        }
    }
}
