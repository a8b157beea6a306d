//! lowmem's CUDA backend: runs a [`lowmem_compile::CompiledStep`] on an NVIDIA GPU inside
//! its planned arena. The same checked instruction table as the CPU executor
//! ([`lowmem_exec::Program`]) drives it: same graph, same order, same offsets, one device
//! allocation for the arena and one for the persistent block. Kernels are the CUDA C files
//! of `kernels/` ([`source`]), compiled by NVRTC for the device at first use and cached on
//! disk; GEMMs go through cuBLAS with its workspace in the node's planned workspace.
//!
//! Everything above the [`Device`] trait (the launch code of every op, the executor) also
//! runs on the CPU through the host shim (`lowmem-cuda-shim`), which is how CI tests it.

pub mod args;
pub mod device;
pub mod executor;
pub mod gpu;
pub mod nvrtc;
pub mod ops;
pub mod source;
pub mod train;

pub use device::{DevPtr, Device, Gemm, LaunchDims};
pub use executor::CudaExecutor;
pub use gpu::Gpu;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum CudaError {
    /// No driver library on this machine.
    #[error("no CUDA driver found (libcuda.so)")]
    NoDriver,
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("{lib} not found ({hint})")]
    MissingLibrary { lib: String, hint: String },
    #[error("out of device memory: {what} asked for {bytes} bytes ({free} free of {total})")]
    OutOfMemory {
        what: String,
        bytes: usize,
        free: usize,
        total: usize,
    },
    #[error("compiling kernels/{file}.cu for {arch}: {log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("kernel {0} is not in any kernel file")]
    UnknownKernel(String),
    #[error("{call}: {msg}")]
    Driver { call: String, msg: String },
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error(transparent)]
    Exec(#[from] lowmem_exec::ExecError),
}
