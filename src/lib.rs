//! lowmem: a graph compiler and memory planner for training deep networks in less memory.
//!
//! This facade re-exports the pipeline's crates (one per stage, in data-flow order) and holds
//! what the `lowmem` command line shares between its subcommands.

pub use lowmem_autodiff as autodiff;
pub use lowmem_compile as compile;
pub use lowmem_compile::remat;
pub use lowmem_cuda as cuda;
pub use lowmem_exec as exec;
pub use lowmem_ir as ir;
pub use lowmem_onnx as onnx;
pub use lowmem_plan as plan;
pub use lowmem_remat as rematerialize;
pub use lowmem_schedule as schedule;

pub mod data;
pub mod device;
pub mod inspect;
pub mod model;
pub mod models;
pub mod planning;
pub mod report;
pub mod train;

use thiserror::Error;

/// Compiles `g` as `opts` asks, printing each warning (a rewrite asked for that found no
/// site) to stderr: the one place the CLI's subcommands compile a step.
pub fn compile_step(
    g: &lowmem_ir::Graph,
    opts: &lowmem_compile::CompileOptions,
) -> Result<lowmem_compile::CompiledStep, Error> {
    let step = lowmem_compile::compile(g, opts)?;
    for w in &step.warnings {
        eprintln!("warning: {w}");
    }
    Ok(step)
}

/// The memory rewrites of `--rewrite sliceout=P,dropit=GAMMA`: (SliceOut's drop ratio,
/// DropIT's dropped fraction), each in (0, 1).
pub fn parse_rewrite(spec: &str) -> Result<(Option<f32>, Option<f32>), Error> {
    let (mut sliceout, mut dropit) = (None, None);
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            Error::Usage(format!(
                "--rewrite {part}: expected NAME=VALUE (sliceout=P, dropit=GAMMA)"
            ))
        })?;
        let v: f32 = value
            .trim()
            .parse()
            .map_err(|_| Error::Usage(format!("--rewrite {part}: '{value}' is not a number")))?;
        let slot = match key.trim() {
            "sliceout" => &mut sliceout,
            "dropit" => &mut dropit,
            k => {
                return Err(Error::Usage(format!(
                    "--rewrite {part}: unknown rewrite '{k}' (known: sliceout, dropit)"
                )));
            }
        };
        if !(v > 0.0 && v < 1.0) {
            return Err(Error::Usage(format!(
                "--rewrite {part}: the value must be in (0, 1), got {v}"
            )));
        }
        *slot = Some(v);
    }
    if sliceout.is_none() && dropit.is_none() {
        return Err(Error::Usage(
            "--rewrite: name at least one rewrite (sliceout=P, dropit=GAMMA)".into(),
        ));
    }
    Ok((sliceout, dropit))
}

/// Errors reported by the command line; each names the file, tensor or node at fault.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Import {
        path: String,
        source: Box<lowmem_onnx::ImportError>,
    },
    #[error("{0}")]
    Ir(#[from] lowmem_ir::IrError),
    #[error("{0}")]
    Exec(#[from] lowmem_exec::ExecError),
    #[error("{0}")]
    Autodiff(#[from] lowmem_autodiff::AutodiffError),
    #[error("{0}")]
    Export(#[from] lowmem_onnx::ExportError),
    #[error("{0}")]
    Compile(#[from] lowmem_compile::CompileError),
    #[error("{0}")]
    Cuda(#[from] lowmem_cuda::CudaError),
    /// The command line asks for something it cannot do (a bad flag value or combination).
    #[error("{0}")]
    Usage(String),
    /// The model does not fit the request (no outputs, an input of the wrong shape, a
    /// weight that does not fit).
    #[error("{0}")]
    Model(String),
    /// A data file (data set, CSV) that cannot be read as one.
    #[error("{0}")]
    Data(String),
    /// Training failed (the loss diverged).
    #[error("{0}")]
    Training(String),
    /// A check of lowmem's own output failed: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}
