//! Compiling `kernels/` with NVRTC to CUBINs for one architecture, with ptxas's resource
//! figures (registers, spills, shared memory) read from NVRTC's log, and an on-disk cache
//! keyed by the sources' hash, the architecture and the NVRTC version.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::nvrtc::sys;

use crate::CudaError;
use crate::source::{self, FILES};

/// Where NVRTC comes from when the dynamic loader cannot find it by name: `LOWMEM_NVRTC`
/// names the library file (the PyPI wheel `nvidia-cuda-nvrtc` puts it at
/// `site-packages/nvidia/cu13/lib/libnvrtc.so.13`).
pub const NVRTC_ENV: &str = "LOWMEM_NVRTC";

/// Loads NVRTC, or says how to get it. The library found first by absolute path stays
/// loaded, so cudarc's later lookup by name finds it.
pub fn ensure_loaded() -> Result<(), CudaError> {
    static LOADED: OnceLock<Result<(), CudaError>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            if let Ok(path) = std::env::var(NVRTC_ENV) {
                // SAFETY: loading a shared library runs its initialisers; NVRTC's are sound.
                match unsafe { libloading::Library::new(&path) } {
                    Ok(lib) => {
                        std::mem::forget(lib);
                        load_builtins_beside(std::path::Path::new(&path));
                    }
                    Err(e) => {
                        return Err(CudaError::MissingLibrary {
                            lib: "NVRTC".into(),
                            hint: format!("{NVRTC_ENV}={path}: {e}"),
                        });
                    }
                }
            }
            // SAFETY: only probes with dlopen.
            if unsafe { sys::is_culib_present() } {
                Ok(())
            } else {
                Err(CudaError::MissingLibrary {
                    lib: "NVRTC (libnvrtc.so)".into(),
                    hint: format!(
                        "pip install nvidia-cuda-nvrtc==13.0.88 and set {NVRTC_ENV} to its libnvrtc.so.13, or put it on LD_LIBRARY_PATH"
                    ),
                })
            }
        })
        .clone()
}

/// NVRTC opens `libnvrtc-builtins.so.*` by name at compile time; where NVRTC was found by
/// path, the builtins beside it are loaded by path first, so that lookup succeeds.
fn load_builtins_beside(nvrtc: &std::path::Path) {
    let Some(dir) = nvrtc.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libnvrtc-builtins.so") {
            // SAFETY: NVRTC's own companion library.
            if let Ok(lib) = unsafe { libloading::Library::new(e.path()) } {
                std::mem::forget(lib);
            }
        }
    }
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), CudaError> {
    ensure_loaded()?;
    let (mut a, mut b) = (0, 0);
    // SAFETY: NVRTC is loaded; writes two ints.
    unsafe { sys::nvrtcVersion(&mut a, &mut b) }
        .result()
        .map_err(|e| drv("nvrtcVersion", e))?;
    Ok((a, b))
}

fn drv(call: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver {
        call: call.into(),
        msg: format!("{e:?}"),
    }
}

/// Names the compile options in the cache key (change it with the options).
const OPTIONS_TAG: &str = "std17-nofma";

/// One kernel's resources, as ptxas reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
    pub shared_bytes: u32,
}

/// One kernel file compiled for one architecture.
pub struct Compiled {
    pub file: String,
    pub arch: String,
    pub cubin: Vec<u8>,
    pub log: String,
    pub kernels: Vec<KernelStats>,
}

/// The number before `unit` in `text` ("12 registers" -> 12).
fn number_before(text: &str, unit: &str) -> Option<u32> {
    let i = text.find(unit)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

/// Reads ptxas's `-v` report: per entry function its registers, spills, stack and shared
/// memory.
pub fn parse_ptxas(log: &str) -> Vec<KernelStats> {
    let mut out: Vec<KernelStats> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelStats {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// Compiles kernel file `file` (source `src`) for `arch` (e.g. "sm_90") to a CUBIN.
pub fn compile(file: &str, src: &str, arch: &str) -> Result<Compiled, CudaError> {
    ensure_loaded()?;
    let unit = CString::new(source::unit(src)).map_err(|_| CudaError::Compile {
        file: file.into(),
        arch: arch.into(),
        log: "the source holds a NUL byte".into(),
    })?;
    let name = CString::new(format!("{file}.cu")).expect("file names have no NUL");
    let opts: Vec<CString> = [
        format!("--gpu-architecture={arch}"),
        "--ptxas-options=-v".into(),
        "--std=c++17".into(),
        "-default-device".into(),
        // No multiply-add contraction: results round as the CPU executor's do.
        "--fmad=false".into(),
    ]
    .into_iter()
    .map(|o| CString::new(o).expect("options have no NUL"))
    .collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no headers.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            unit.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    }
    .result()
    .map_err(|e| drv("nvrtcCreateProgram", e))?;
    // SAFETY: `prog` was created above; options outlive the call.
    let status =
        unsafe { sys::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = program_log(prog);
    let result = if status != sys::nvrtcResult::NVRTC_SUCCESS {
        Err(CudaError::Compile {
            file: file.into(),
            arch: arch.into(),
            log: log.clone(),
        })
    } else {
        let mut size = 0usize;
        // SAFETY: compiled program; the buffer has the size NVRTC reports.
        unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map_err(|e| drv("nvrtcGetCUBINSize", e))
            .and_then(|_| {
                let mut cubin = vec![0u8; size];
                unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }
                    .result()
                    .map_err(|e| drv("nvrtcGetCUBIN", e))?;
                Ok(Compiled {
                    file: file.into(),
                    arch: arch.into(),
                    cubin,
                    kernels: parse_ptxas(&log),
                    log,
                })
            })
    };
    // SAFETY: destroys the program created above, once.
    unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    result
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: a created program; the buffer has the size NVRTC reports.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS
            || size == 0
        {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr().cast()) != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return String::new();
        }
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The kernel cache's directory: `LOWMEM_CACHE`, else `$XDG_CACHE_HOME/lowmem`, else
/// `~/.cache/lowmem`, else none.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LOWMEM_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("lowmem"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("lowmem"))
}

/// Every kernel file's CUBIN for `arch`: from the cache where present, else compiled now
/// and cached (a cache that cannot be written is skipped).
pub fn cubins(arch: &str) -> Result<Vec<(String, Vec<u8>)>, CudaError> {
    let (maj, min) = version()?;
    let dir = cache_dir().map(|d| {
        d.join("kernels").join(format!(
            "{:016x}-{arch}-nvrtc{maj}.{min}-{OPTIONS_TAG}",
            source::sources_hash()
        ))
    });
    let mut out = Vec::with_capacity(FILES.len());
    for (file, src) in FILES {
        let path = dir.as_ref().map(|d| d.join(format!("{file}.cubin")));
        if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok())
            && !bytes.is_empty()
        {
            out.push((file.to_string(), bytes));
            continue;
        }
        let c = compile(file, src, arch)?;
        if let (Some(d), Some(p)) = (&dir, &path) {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::create_dir_all(d)
                .and_then(|_| std::fs::write(&tmp, &c.cubin))
                .and_then(|_| std::fs::rename(&tmp, p));
        }
        out.push((file.to_string(), c.cubin));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ptxas_figures() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'lm_unary' for 'sm_90'\n\
ptxas info    : Function properties for lm_unary\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'lm_copy_4' for 'sm_90'\n\
ptxas info    : Function properties for lm_copy_4\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 24 registers, 688 bytes cmem[0]\n";
        let k = parse_ptxas(log);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k[0],
            KernelStats {
                name: "lm_unary".into(),
                registers: 18,
                spill_stores: 4,
                spill_loads: 12,
                stack_bytes: 8,
                shared_bytes: 128,
            }
        );
        assert_eq!(
            (k[1].registers, k[1].spill_stores, k[1].shared_bytes),
            (24, 0, 0)
        );
    }
}
