//! [`Device`] on the CPU: lowmem's CUDA kernels compiled as C++ against the host shim
//! (`kernels/shim/`), device memory as host memory, and SGEMM by the `gemm` crate. The
//! launch code and executor of lowmem-cuda run unchanged on it, so CI exercises them (grid
//! and block sizes, offsets, barriers, warp shuffles) without a GPU. What it cannot catch
//! is stated in `kernels/shim/cuda_shim.h` and the README.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::Mutex;

use lowmem_cuda::{CudaError, DevPtr, Device, Gemm, LaunchDims};

unsafe extern "C" {
    fn lm_shim_launch(
        name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shared_bytes: u32,
        params: *mut *mut c_void,
    ) -> c_int;
}

const ALIGN: usize = 256;

/// The CPU standing in for a GPU.
#[derive(Default)]
pub struct HostShim {
    allocs: Mutex<HashMap<DevPtr, Layout>>,
    /// Kernel launches so far (tests check that work went through kernels).
    launches: Mutex<usize>,
    /// With `LOWMEM_SHIM_PROFILE` set: seconds and launches per kernel, printed on drop.
    profile: Mutex<HashMap<String, (f64, usize)>>,
}

impl HostShim {
    pub fn new() -> HostShim {
        HostShim::default()
    }

    pub fn launches(&self) -> usize {
        *self.launches.lock().unwrap()
    }
}

impl Drop for HostShim {
    fn drop(&mut self) {
        let prof = self.profile.get_mut().unwrap();
        if !prof.is_empty() {
            let mut rows: Vec<_> = prof.drain().collect();
            rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
            for (k, (t, n)) in rows.iter().take(12) {
                eprintln!("shim profile: {k:<24} {t:>8.3} s over {n} launches");
            }
        }
        for (p, l) in self.allocs.get_mut().unwrap().drain() {
            // SAFETY: allocated in `alloc` with this layout.
            unsafe { dealloc(p as *mut u8, l) };
        }
    }
}

impl Device for HostShim {
    fn describe(&self) -> String {
        "host shim (CUDA kernels on the CPU)".into()
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr, CudaError> {
        let layout =
            Layout::from_size_align(bytes.max(1), ALIGN).map_err(|_| CudaError::OutOfMemory {
                what: "an allocation".into(),
                bytes,
                free: 0,
                total: 0,
            })?;
        // SAFETY: a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        if p.is_null() {
            return Err(CudaError::OutOfMemory {
                what: "an allocation".into(),
                bytes,
                free: 0,
                total: 0,
            });
        }
        self.allocs.lock().unwrap().insert(p as DevPtr, layout);
        Ok(p as DevPtr)
    }

    fn free(&self, p: DevPtr) {
        if let Some(l) = self.allocs.lock().unwrap().remove(&p) {
            // SAFETY: allocated in `alloc` with this layout.
            unsafe { dealloc(p as *mut u8, l) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), CudaError> {
        // SAFETY: `dst` lies in a live allocation of at least src.len() bytes (the caller's
        // planned view).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), CudaError> {
        // SAFETY: as upload.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: as upload; cudaMemcpy forbids overlap too.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn fill(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: as upload.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }

    unsafe fn launch(
        &self,
        name: &str,
        dims: LaunchDims,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        *self.launches.lock().unwrap() += 1;
        let cname = CString::new(name).map_err(|_| CudaError::UnknownKernel(name.into()))?;
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        let started = std::env::var_os("LOWMEM_SHIM_PROFILE").map(|_| std::time::Instant::now());
        // SAFETY: the caller's contract (parameters match the kernel's signature).
        let rc = unsafe {
            lm_shim_launch(
                cname.as_ptr(),
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                dims.shared_bytes,
                params.as_mut_ptr(),
            )
        };
        if let Some(t) = started {
            let mut p = self.profile.lock().unwrap();
            let e = p.entry(name.to_string()).or_default();
            e.0 += t.elapsed().as_secs_f64();
            e.1 += 1;
        }
        match rc {
            0 => Ok(()),
            1 => Err(CudaError::UnknownKernel(name.into())),
            _ => Err(CudaError::Driver {
                call: format!("launch({name})"),
                msg: format!("invalid launch geometry {dims:?}"),
            }),
        }
    }

    unsafe fn gemm(&self, g: &Gemm) -> Result<(), CudaError> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        // Row-major strides (row, column) of op(A) and op(B) as stored.
        let (ars, acs) = if g.trans_a {
            (1, g.lda as isize)
        } else {
            (g.lda as isize, 1)
        };
        let (brs, bcs) = if g.trans_b {
            (1, g.ldb as isize)
        } else {
            (g.ldb as isize, 1)
        };
        for b in 0..g.batch {
            let a = (g.a as *const f32).wrapping_add(b * g.stride_a);
            let bb = (g.b as *const f32).wrapping_add(b * g.stride_b);
            let c = (g.c as *mut f32).wrapping_add(b * g.stride_c);
            // gemm::gemm computes dst = alpha * dst + beta * lhs * rhs.
            // SAFETY: the caller's contract: every matrix lies in live memory.
            unsafe {
                gemm::gemm(
                    g.m,
                    g.n,
                    g.k,
                    c,
                    1,
                    g.ldc as isize,
                    g.beta != 0.0,
                    a,
                    acs,
                    ars,
                    bb,
                    bcs,
                    brs,
                    g.beta,
                    g.alpha,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        Ok(())
    }
}
