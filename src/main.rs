use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use lowmem::{Error, inspect, model};
use lowmem_ir::{DType, Graph, TensorData};

/// lowmem: a graph compiler and memory planner for low-memory training.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inputs, outputs, op histogram, parameters and FLOPs of a model.
    Inspect {
        /// A `.onnx` file or a lowmem JSON graph.
        model: PathBuf,
        /// Rewrite the batch dimension to N.
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// Also list every tensor with its shape.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run the forward pass on the CPU reference executor.
    Run {
        model: PathBuf,
        /// A graph input as an ONNX TensorProto file (repeat for each input).
        #[arg(long = "input", value_name = "NAME=FILE.pb", required = true)]
        inputs: Vec<String>,
        /// Where to write output_K.pb, K in graph output order.
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
    },
    /// Time the forward pass on random inputs (median of several runs, model load excluded).
    Bench {
        model: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// Timed runs after one warm-up run.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.cmd {
        Cmd::Inspect {
            model,
            batch,
            verbose,
        } => {
            let g = model::load(&model, batch)?;
            print!("{}", inspect::report(&g, verbose));
            Ok(())
        }
        Cmd::Run {
            model,
            inputs,
            output_dir,
            batch,
        } => {
            let g = model::load(&model, batch)?;
            let mut given = Vec::new();
            for spec in &inputs {
                let (name, file) = spec.split_once('=').ok_or_else(|| {
                    Error::Usage(format!("--input '{spec}' should be NAME=FILE.pb"))
                })?;
                given.push((name.to_string(), model::read_tensor(file.as_ref())?));
            }
            let bound = model::bind_inputs(&g, given)?;
            let outputs = lowmem_exec::run(&g, &bound)?;
            std::fs::create_dir_all(&output_dir).map_err(|source| Error::Io {
                path: output_dir.display().to_string(),
                source,
            })?;
            for (k, (&t, data)) in g.outputs.iter().zip(&outputs).enumerate() {
                let tt = g.tensor(t);
                let path = output_dir.join(format!("output_{k}.pb"));
                model::write_tensor(&path, &tt.name, &tt.shape, data)?;
                println!(
                    "{} {} {:?} -> {}",
                    tt.name,
                    tt.dtype,
                    tt.shape,
                    path.display()
                );
            }
            Ok(())
        }
        Cmd::Bench {
            model,
            batch,
            iters,
            json,
        } => {
            let g = model::load(&model, batch)?;
            let inputs = random_inputs(&g, 1)?;
            lowmem_exec::run(&g, &inputs)?;
            let mut times = Vec::with_capacity(iters.max(1));
            for _ in 0..iters.max(1) {
                let t = Instant::now();
                lowmem_exec::run(&g, &inputs)?;
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let gflops = g.flops() as f64 / median / 1e9;
            if json {
                println!(
                    "{{\"model\":{:?},\"batch\":{},\"iters\":{},\"median_s\":{median},\"min_s\":{},\"gflops\":{gflops}}}",
                    g.name,
                    g.tensor(g.inputs[0]).shape.first().copied().unwrap_or(1),
                    times.len(),
                    times[0]
                );
            } else {
                println!(
                    "{}: median {:.2} ms, min {:.2} ms over {} runs ({gflops:.1} GFLOP/s)",
                    g.name,
                    median * 1e3,
                    times[0] * 1e3,
                    times.len()
                );
            }
            Ok(())
        }
    }
}

/// Deterministic pseudo-random inputs (normal-ish f32 in [-1, 1), zeros for other dtypes).
fn random_inputs(g: &Graph, seed: u64) -> Result<Vec<TensorData>, Error> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    Ok(g.inputs
        .iter()
        .map(|&i| {
            let t = g.tensor(i);
            match t.dtype {
                DType::F32 => TensorData::F32((0..t.numel()).map(|_| next()).collect()),
                d => TensorData::zeros(d, t.numel()),
            }
        })
        .collect())
}
