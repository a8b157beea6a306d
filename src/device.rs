//! Where the compiled step runs: the CPU executor or the CUDA backend. Both execute the
//! same compiled step inside the same planned arena; this is the one switch between them.

use std::sync::OnceLock;

use lowmem_compile::CompiledStep;
use lowmem_cuda::{CudaExecutor, Gpu};
use lowmem_exec::Executor;
use lowmem_ir::TensorData;

use crate::Error;

/// A backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    #[default]
    Cpu,
    Cuda,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        }
    }
}

/// The process's GPU (device 0), opened once: context, stream, kernels (compiled by NVRTC
/// or read from the cache) and the cuBLAS handle. Without a driver: "no CUDA driver found
/// (libcuda.so)".
pub fn gpu() -> Result<&'static Gpu, Error> {
    static GPU: OnceLock<Result<Gpu, lowmem_cuda::CudaError>> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(0))
        .as_ref()
        .map_err(|e| Error::Cuda(e.clone()))
}

/// A compiled step's executor on either backend.
pub trait StepRun {
    fn set_input(&mut self, k: usize, data: &TensorData) -> Result<(), Error>;
    fn set_step(&mut self, step: u64) -> Result<(), Error>;
    /// Runs (or on a GPU, queues) the step once.
    fn run(&mut self) -> Result<(), Error>;
    /// Waits for queued work.
    fn sync(&self) -> Result<(), Error>;
    fn outputs(&self) -> Result<Vec<TensorData>, Error>;
}

impl StepRun for Executor<'_> {
    fn set_input(&mut self, k: usize, data: &TensorData) -> Result<(), Error> {
        Ok(Executor::set_input(self, k, data)?)
    }
    fn set_step(&mut self, step: u64) -> Result<(), Error> {
        Ok(Executor::set_step(self, step)?)
    }
    fn run(&mut self) -> Result<(), Error> {
        Ok(Executor::run(self)?)
    }
    fn sync(&self) -> Result<(), Error> {
        Ok(())
    }
    fn outputs(&self) -> Result<Vec<TensorData>, Error> {
        Ok(Executor::outputs(self))
    }
}

impl StepRun for CudaExecutor<'_, '_> {
    fn set_input(&mut self, k: usize, data: &TensorData) -> Result<(), Error> {
        Ok(CudaExecutor::set_input(self, k, data)?)
    }
    fn set_step(&mut self, step: u64) -> Result<(), Error> {
        Ok(CudaExecutor::set_step(self, step)?)
    }
    fn run(&mut self) -> Result<(), Error> {
        Ok(CudaExecutor::run(self)?)
    }
    fn sync(&self) -> Result<(), Error> {
        Ok(self.device().synchronize()?)
    }
    fn outputs(&self) -> Result<Vec<TensorData>, Error> {
        Ok(CudaExecutor::outputs(self)?)
    }
}

/// `step`'s executor on `target`: its arena and persistent block allocated there, the
/// weights and state loaded.
pub fn executor<'s>(
    step: &'s CompiledStep,
    target: Target,
) -> Result<Box<dyn StepRun + 's>, Error> {
    Ok(match target {
        Target::Cpu => Box::new(Executor::new(step)?),
        Target::Cuda => Box::new(CudaExecutor::new(step, gpu()?)?),
    })
}

/// How one tensor of a backend compares with the CPU's.
#[derive(Clone, Debug)]
pub struct Deviation {
    pub name: String,
    /// Largest `|got - want|`.
    pub max_abs: f64,
    /// Largest `|got - want| - atol - rtol * |want|` over elements (<= 0: every element is
    /// within tolerance).
    pub worst_excess: f64,
    /// `||got - want|| / ||want||` (L2).
    pub rel_l2: f64,
}

/// Compares `got` with `want` element by element (NaN equals NaN).
pub fn deviation(
    name: &str,
    want: &TensorData,
    got: &TensorData,
    rtol: f64,
    atol: f64,
) -> Deviation {
    let (w, g) = (want.to_f64(), got.to_f64());
    let mut d = Deviation {
        name: name.to_string(),
        max_abs: if w.len() == g.len() {
            0.0
        } else {
            f64::INFINITY
        },
        worst_excess: if w.len() == g.len() {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        },
        rel_l2: 0.0,
    };
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in w.iter().zip(&g) {
        let e = if a.is_nan() && b.is_nan() {
            0.0
        } else {
            (a - b).abs()
        };
        let e = if e.is_nan() { f64::INFINITY } else { e };
        d.max_abs = d.max_abs.max(e);
        d.worst_excess = d.worst_excess.max(e - atol - rtol * a.abs());
        num += e * e;
        den += a * a;
    }
    d.rel_l2 = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    d
}

/// Free device memory on `target` (a GPU's free-memory figure; `None` on the CPU).
pub fn free_bytes(target: Target) -> Option<usize> {
    match target {
        Target::Cpu => None,
        Target::Cuda => gpu()
            .ok()
            .and_then(lowmem_cuda::Device::mem_info)
            .map(|m| m.0),
    }
}
