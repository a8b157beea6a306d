//! [`Device`] on an NVIDIA GPU: the CUDA driver API and cuBLAS through cudarc, loaded at run
//! time (a binary without a GPU still starts, and says what is missing).

use std::collections::HashMap;
use std::ffi::{CString, c_void};

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as drv, sys};

use crate::device::{Device, Gemm, LaunchDims};
use crate::{CudaError, DevPtr, nvrtc};

fn err(call: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver {
        call: call.into(),
        msg: format!("{e:?}"),
    }
}

/// cuBLAS's recommended workspace on Hopper (32 MiB; 4 MiB on earlier GPUs), allocated
/// with the handle: beside the context, the one device memory outside the plan.
pub const CUBLAS_WORKSPACE: usize = 32 << 20;

/// One GPU: its primary context, one stream, every kernel of `kernels/` loaded, and a
/// cuBLAS handle on the stream.
pub struct Gpu {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    modules: Vec<sys::CUmodule>,
    /// cuBLAS's own workspace, for GEMMs whose planned workspace is below
    /// [`CUBLAS_WORKSPACE`] (most: the plan sizes GEMM scratch for the CPU's packing).
    blas_ws: DevPtr,
    stream: sys::CUstream,
    functions: HashMap<String, sys::CUfunction>,
    blas: blas_sys::cublasHandle_t,
    /// cuBLAS handles are not safe to share between threads: a GEMM (workspace, then
    /// call) holds this.
    blas_lock: std::sync::Mutex<()>,
    name: String,
    arch: String,
}

// SAFETY: every method makes the context current on the calling thread first; the driver
// API is thread-safe; the one cuBLAS handle is used under `blas_lock` only.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Whether a CUDA driver library is on this machine (probed without calling it, since a
    /// call into a missing library aborts).
    pub fn driver_present() -> bool {
        // SAFETY: only probes with dlopen.
        unsafe { sys::is_culib_present() }
    }

    /// Opens GPU `ordinal`: probes the driver, creates the context and stream, compiles (or
    /// reads from the cache) and loads every kernel, and creates the cuBLAS handle.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        if !Gpu::driver_present() {
            return Err(CudaError::NoDriver);
        }
        drv::init().map_err(|e| CudaError::NoDevice(format!("cuInit: {e:?}")))?;
        let mut version = 0;
        // SAFETY: the driver is initialised; writes one int.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| err("cuDriverGetVersion", e))?;
        let (nv_major, _) = nvrtc::version()?;
        if version / 1000 < nv_major {
            return Err(CudaError::NoDevice(format!(
                "the CUDA driver supports CUDA {}.{}, but the kernels are compiled by NVRTC {nv_major} (a CUDA {nv_major} driver is needed)",
                version / 1000,
                (version % 1000) / 10
            )));
        }
        let count = drv::device::get_count().map_err(|e| err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} asked for, {count} present"
            )));
        }
        let dev = drv::device::get(ordinal as i32).map_err(|e| err("cuDeviceGet", e))?;
        let name = drv::device::get_name(dev).unwrap_or_else(|_| "GPU".into());
        // SAFETY: `dev` comes from cuDeviceGet.
        let (maj, min) = unsafe {
            (
                drv::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )
                .map_err(|e| err("cuDeviceGetAttribute", e))?,
                drv::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )
                .map_err(|e| err("cuDeviceGetAttribute", e))?,
            )
        };
        let arch = format!("sm_{maj}{min}");
        // SAFETY: `dev` is valid; the primary context is released in Drop.
        let ctx = unsafe { drv::primary_ctx::retain(dev) }
            .map_err(|e| err("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: a retained context.
        unsafe { drv::ctx::set_current(ctx) }.map_err(|e| err("cuCtxSetCurrent", e))?;
        let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking)
            .map_err(|e| err("cuStreamCreate", e))?;
        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for (file, cubin) in nvrtc::cubins(&arch)? {
            // SAFETY: a CUBIN NVRTC made for this architecture; modules live as long as the
            // context.
            let module = unsafe { drv::module::load_data(cubin.as_ptr().cast()) }
                .map_err(|e| err(&format!("cuModuleLoadData({file})"), e))?;
            modules.push(module);
            let src = crate::source::FILES
                .iter()
                .find(|(f, _)| *f == file)
                .map(|(_, s)| *s)
                .unwrap_or("");
            for k in crate::source::kernel_names(src) {
                let cname = CString::new(k).expect("kernel names have no NUL");
                // SAFETY: a loaded module.
                let f = unsafe { drv::module::get_function(module, cname) }
                    .map_err(|e| err(&format!("cuModuleGetFunction({k})"), e))?;
                functions.insert(k.to_string(), f);
            }
        }
        // SAFETY: only probes with dlopen.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(CudaError::MissingLibrary {
                lib: "cuBLAS (libcublas.so)".into(),
                hint: "install the CUDA toolkit or pip install nvidia-cublas, and put it on LD_LIBRARY_PATH".into(),
            });
        }
        let handle = blas::create_handle().map_err(|e| err("cublasCreate", e))?;
        // SAFETY: a created handle and stream.
        unsafe { blas::set_stream(handle, stream as _) }.map_err(|e| err("cublasSetStream", e))?;
        // SAFETY: a plain allocation in the current context, freed in Drop.
        let blas_ws = unsafe { drv::malloc_sync(CUBLAS_WORKSPACE) }
            .map_err(|e| err("cuMemAlloc (cuBLAS workspace)", e))?;
        Ok(Gpu {
            dev,
            ctx,
            modules,
            blas_ws,
            stream,
            functions,
            blas: handle,
            blas_lock: std::sync::Mutex::new(()),
            name,
            arch,
        })
    }

    /// The device's architecture, e.g. "sm_90".
    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn bind(&self) -> Result<(), CudaError> {
        // SAFETY: the context is retained for this Gpu's life.
        unsafe { drv::ctx::set_current(self.ctx) }.map_err(|e| err("cuCtxSetCurrent", e))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once, after the stream drains.
        unsafe {
            let _ = self.bind();
            let _ = drv::stream::synchronize(self.stream);
            let _ = blas::destroy_handle(self.blas);
            let _ = drv::free_sync(self.blas_ws);
            let _ = drv::stream::destroy(self.stream);
            for &m in &self.modules {
                let _ = drv::module::unload(m);
            }
            let _ = drv::primary_ctx::release(self.dev);
        }
    }
}

impl Device for Gpu {
    fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr, CudaError> {
        self.bind()?;
        // SAFETY: a plain allocation in the current context.
        match unsafe { drv::malloc_sync(bytes) } {
            Ok(p) => {
                // Zeroed on the work stream (the legacy default stream does not order with a
                // non-blocking one), and waited for.
                // SAFETY: `p` holds `bytes` bytes.
                unsafe {
                    drv::memset_d8_async(p, 0, bytes, self.stream)
                        .map_err(|e| err("cuMemsetD8Async", e))?;
                    drv::stream::synchronize(self.stream)
                        .map_err(|e| err("cuStreamSynchronize", e))?;
                }
                Ok(p)
            }
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.mem_info().unwrap_or((0, 0));
                Err(CudaError::OutOfMemory {
                    what: "an allocation".into(),
                    bytes,
                    free,
                    total,
                })
            }
            Err(e) => Err(err("cuMemAlloc", e)),
        }
    }

    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: `p` came from `alloc`; the stream is drained first.
            unsafe {
                let _ = drv::stream::synchronize(self.stream);
                let _ = drv::free_sync(p);
            }
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller passes an address inside a live allocation of src.len() bytes;
        // the copy completes before returning (the stream is synchronised).
        unsafe {
            drv::memcpy_htod_async(dst, src, self.stream).map_err(|e| err("cuMemcpyHtoD", e))?;
            drv::stream::synchronize(self.stream).map_err(|e| err("cuStreamSynchronize", e))
        }
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: as upload.
        unsafe {
            drv::memcpy_dtoh_async(dst, src, self.stream).map_err(|e| err("cuMemcpyDtoH", e))?;
            drv::stream::synchronize(self.stream).map_err(|e| err("cuStreamSynchronize", e))
        }
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges lie in live allocations (the planned blocks).
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, self.stream) }
            .map_err(|e| err("cuMemcpyDtoD", e))
    }

    fn fill(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the range lies in a live allocation.
        unsafe { drv::memset_d8_async(dst, byte, bytes, self.stream) }
            .map_err(|e| err("cuMemsetD8", e))
    }

    unsafe fn launch(
        &self,
        name: &str,
        dims: LaunchDims,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.bind()?;
        let f = *self
            .functions
            .get(name)
            .ok_or_else(|| CudaError::UnknownKernel(name.into()))?;
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        // SAFETY: the caller's contract (parameters match the kernel).
        unsafe {
            drv::launch_kernel(
                f,
                (gx, gy, gz),
                (bx, by, bz),
                dims.shared_bytes,
                self.stream,
                params,
            )
        }
        .map_err(|e| err(&format!("cuLaunchKernel({name})"), e))
    }

    unsafe fn gemm(&self, g: &Gemm) -> Result<(), CudaError> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| CudaError::Driver {
                call: "cublasSgemmStridedBatched".into(),
                msg: format!("{what} = {v} does not fit cuBLAS's 32-bit int"),
            })
        };
        self.bind()?;
        let _held = self.blas_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
        // cuBLAS wants its workspace 256-byte aligned: the aligned part of the planned one.
        let (ws, ws_len) = {
            let (p, n) = g.workspace;
            let a = p.next_multiple_of(256);
            let skip = (a - p) as usize;
            if p == 0 || n <= skip {
                (0, 0)
            } else {
                (a, n - skip)
            }
        };
        // SAFETY: the caller's contract; the workspace is the node's planned scratch.
        unsafe {
            blas_sys::cublasSetWorkspace_v2(self.blas, ws as *mut c_void, ws_len)
                .result()
                .map_err(|e| err("cublasSetWorkspace", e))?;
            blas::sgemm_strided_batched(
                self.blas,
                op(g.trans_b),
                op(g.trans_a),
                int(g.n, "n")?,
                int(g.m, "m")?,
                int(g.k, "k")?,
                &g.alpha,
                g.b as *const f32,
                int(g.ldb.max(1), "ldb")?,
                g.stride_b as i64,
                g.a as *const f32,
                int(g.lda.max(1), "lda")?,
                g.stride_a as i64,
                &g.beta,
                g.c as *mut f32,
                int(g.ldc.max(1), "ldc")?,
                g.stride_c as i64,
                int(g.batch, "batch")?,
            )
        }
        .map_err(|e| err("cublasSgemmStridedBatched", e))
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: a live stream.
        unsafe { drv::stream::synchronize(self.stream) }.map_err(|e| err("cuStreamSynchronize", e))
    }

    fn mem_info(&self) -> Option<(usize, usize)> {
        self.bind().ok()?;
        drv::mem_get_info().ok()
    }
}
