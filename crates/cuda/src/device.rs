//! What a backend must provide to run the compiled step: device memory, kernel launches
//! (cuLaunchKernel's contract: one pointer per argument) and strided batched SGEMM.
//! [`crate::gpu::Gpu`] implements it on the CUDA driver and cuBLAS; the host shim
//! (`lowmem-cuda-shim`, tests only) on the CPU, so the launch code above this trait is the
//! same on both.

use std::ffi::c_void;

use crate::CudaError;

/// A device address.
pub type DevPtr = u64;

/// A launch's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// A launch with no dynamic shared memory.
    pub fn new(grid: [u32; 3], block: [u32; 3]) -> LaunchDims {
        LaunchDims {
            grid,
            block,
            shared_bytes: 0,
        }
    }
}

/// One strided batched SGEMM in row-major terms: for each `b < batch`,
/// `C_b = alpha * op(A_b) * op(B_b) + beta * C_b`, `op(A_b)` being `m x k` and `op(B_b)`
/// `k x n`; `lda`/`ldb`/`ldc` are row strides of the matrices as stored and the `stride_*`
/// the element distance between batches.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: DevPtr,
    pub lda: usize,
    pub stride_a: usize,
    pub b: DevPtr,
    pub ldb: usize,
    pub stride_b: usize,
    pub beta: f32,
    pub c: DevPtr,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    /// Planned scratch the GEMM may use (cuBLAS's workspace): address and bytes.
    pub workspace: (DevPtr, usize),
}

pub trait Device {
    /// What this device is, for messages.
    fn describe(&self) -> String;
    /// `bytes` of zeroed device memory, 256-byte aligned.
    fn alloc(&self, bytes: usize) -> Result<DevPtr, CudaError>;
    /// Frees an allocation of [`Device::alloc`].
    fn free(&self, p: DevPtr);
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), CudaError>;
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), CudaError>;
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), CudaError>;
    fn fill(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<(), CudaError>;
    /// Launches kernel `name` with `params` (one pointer per kernel argument).
    ///
    /// # Safety
    /// `params` must match the kernel's signature, and every address it passes must lie in
    /// live device memory of the sizes the kernel touches.
    unsafe fn launch(
        &self,
        name: &str,
        dims: LaunchDims,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError>;
    /// # Safety
    /// Every matrix the call describes must lie in live device memory.
    unsafe fn gemm(&self, g: &Gemm) -> Result<(), CudaError>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<(), CudaError>;
    /// Free and total device memory, where the device can say.
    fn mem_info(&self) -> Option<(usize, usize)> {
        None
    }
}
