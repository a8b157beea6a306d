use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use lowmem::autodiff::{Loss, Mode, Optimizer};
use lowmem::train::{TrainConfig, train};
use lowmem::{Error, data, inspect, model};
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
    /// Gradients of a loss over the first output wrt every trainable weight (inference
    /// semantics); writes DIR/<weight>.pb and DIR/index.json.
    Grad {
        model: PathBuf,
        /// A graph input as an ONNX TensorProto file (repeat for each input).
        #[arg(long = "input", value_name = "NAME=FILE.pb", required = true)]
        inputs: Vec<String>,
        /// The loss applied to the graph output `--output` (default: the first).
        #[arg(long, value_enum, default_value_t = LossArg::Sum)]
        loss: LossArg,
        /// The graph output the loss reads (default: the first graph output).
        #[arg(long, value_name = "NAME")]
        output: Option<String>,
        /// Labels for xent (i64 [N] class indices) or mse (f32 of the output's shape).
        #[arg(long, value_name = "FILE.pb")]
        labels: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
    },
    /// Train a model on a built-in data set, then report test accuracy and save it as ONNX.
    Train {
        model: PathBuf,
        #[arg(long, default_value_t = 600)]
        steps: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
        optimizer: OptimizerArg,
        /// Learning rate (default: 0.1 for sgd, 0.001 for adam/adamw).
        #[arg(long)]
        lr: Option<f32>,
        /// SGD momentum.
        #[arg(long, default_value_t = 0.9)]
        momentum: f32,
        /// Weight decay (default: 0, or 0.01 for adamw).
        #[arg(long)]
        weight_decay: Option<f32>,
        #[arg(long, value_enum, default_value_t = LossArg::Xent)]
        loss: LossArg,
        #[arg(long, value_enum)]
        data: DataArg,
        /// Seed of the batch shuffle.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to save the trained model (default: <model stem>.trained.onnx here).
        #[arg(long, value_name = "FILE.onnx")]
        out: Option<PathBuf>,
        /// Also report test accuracy every K steps.
        #[arg(long, value_name = "K", default_value_t = 0)]
        eval_every: usize,
    },
    /// Plan the memory of a forward pass or (--train) a whole training step: schedule,
    /// liveness, in-place reuse and one arena with static offsets, verified independently.
    Plan {
        model: PathBuf,
        /// Plan the training step (forward, loss, backward, optimizer update).
        #[arg(long)]
        train: bool,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// Loss of the training step.
        #[arg(long, value_enum, default_value_t = LossArg::Xent)]
        loss: LossArg,
        /// Optimizer of the training step (its state is persistent memory).
        #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
        optimizer: OptimizerArg,
        /// Write the plan as JSON (docs/plan-format.md).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write a self-contained HTML page with the arena drawn over time.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Re-check the plan with the independent verifier.
        #[arg(long)]
        verify: bool,
        /// Disable in-place reuse.
        #[arg(long)]
        no_in_place: bool,
        /// Milliseconds for the improving search after the heuristics.
        #[arg(long, default_value_t = 200)]
        search_ms: u64,
        /// Checkpointing scheme for the training step (needs --train).
        #[arg(long, value_enum, value_name = "SCHEME")]
        remat: Option<RematArg>,
        /// Memory budget of the whole step (planned peak): bytes, or e.g. 512MiB, 4GiB, 2GB.
        #[arg(long, value_name = "BYTES")]
        budget: Option<String>,
    },
    /// Peak memory against recomputation overhead for every checkpointing scheme on a
    /// training step: a table, the budget where each scheme first fits 50% and 25% of the
    /// peak without rematerialisation, and (--html) the frontier plotted.
    Frontier {
        model: PathBuf,
        /// Sweep the training step (the only mode; accepted for symmetry with `plan`).
        #[arg(long)]
        train: bool,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        #[arg(long, value_enum, default_value_t = LossArg::Xent)]
        loss: LossArg,
        #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
        optimizer: OptimizerArg,
        /// Budgets tried for the optimal scheme.
        #[arg(long, default_value_t = 16)]
        levels: usize,
        /// Write the points as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write an HTML page with the frontier as SVG.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Solve an offset-assignment problem alone (MiniMalloc CSV: id,lower,upper,size).
    Pack {
        file: PathBuf,
        /// Write id,lower,upper,size,offset here.
        #[arg(long, value_name = "FILE.csv")]
        out: Option<PathBuf>,
        /// Seconds for the improving search.
        #[arg(long, default_value_t = 10.0)]
        time_limit: f64,
        /// Byte alignment of offsets.
        #[arg(long, default_value_t = 1)]
        align: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LossArg {
    /// Sum of the output's elements.
    Sum,
    /// Mean of the output's elements.
    Mean,
    /// The output itself (must be a scalar).
    Scalar,
    /// Softmax cross-entropy of logits [N, C] against i64 labels [N].
    #[value(alias = "cross-entropy")]
    Xent,
    /// Mean squared error against f32 targets of the output's shape.
    Mse,
}

impl LossArg {
    fn loss(self) -> Loss {
        match self {
            LossArg::Sum => Loss::Sum,
            LossArg::Mean => Loss::Mean,
            LossArg::Scalar => Loss::Scalar,
            LossArg::Xent => Loss::CrossEntropy,
            LossArg::Mse => Loss::Mse,
        }
    }
    fn needs_labels(self) -> bool {
        matches!(self, LossArg::Xent | LossArg::Mse)
    }
    fn name(self) -> &'static str {
        match self {
            LossArg::Sum => "sum",
            LossArg::Mean => "mean",
            LossArg::Scalar => "scalar",
            LossArg::Xent => "xent",
            LossArg::Mse => "mse",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, ValueEnum)]
enum RematArg {
    /// Keep every activation.
    None,
    /// Chen et al. 2016: sqrt(n) segments.
    Sqrt,
    /// Chen et al. 2016: recursive, O(log n) memory.
    Log,
    /// Griewank's binomial checkpointing.
    Revolve,
    /// Least recomputation under --budget (Rotor dynamic programme).
    Optimal,
}

impl RematArg {
    fn scheme(self) -> lowmem::remat::Scheme {
        use lowmem::remat::Scheme;
        match self {
            RematArg::None => Scheme::None,
            RematArg::Sqrt => Scheme::Sqrt,
            RematArg::Log => Scheme::Log,
            RematArg::Revolve => Scheme::Revolve,
            RematArg::Optimal => Scheme::Optimal,
        }
    }
}

impl OptimizerArg {
    /// The optimizer `plan` and `frontier` assume (its state is what matters there).
    fn for_planning(self) -> Optimizer {
        match self {
            OptimizerArg::Sgd => Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
            },
            OptimizerArg::Adam | OptimizerArg::Adamw => Optimizer::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.0,
            },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DataArg {
    /// The 8x8 handwritten digits (data/digits.csv.gz; 1437 train / 360 test).
    Digits,
}

/// A gradient file name: the weight name with '/' and ':' replaced by '_', made unique.
fn grad_file_name(weight: &str, taken: &mut std::collections::HashSet<String>) -> String {
    let base: String = weight
        .chars()
        .map(|c| if c == '/' || c == ':' { '_' } else { c })
        .collect();
    let mut name = format!("{base}.pb");
    let mut k = 1;
    while !taken.insert(name.clone()) {
        name = format!("{base}_{k}.pb");
        k += 1;
    }
    name
}

fn grad(
    model_path: &std::path::Path,
    inputs: &[String],
    loss: LossArg,
    output: Option<&str>,
    labels: Option<&std::path::Path>,
    output_dir: &std::path::Path,
    batch: Option<usize>,
) -> Result<(), Error> {
    match (loss.needs_labels(), labels) {
        (true, None) => {
            return Err(Error::Usage(format!(
                "--loss {} needs --labels FILE.pb ({})",
                loss.name(),
                if matches!(loss, LossArg::Xent) {
                    "i64 class indices, shape [N]"
                } else {
                    "f32 targets of the output's shape"
                }
            )));
        }
        (false, Some(_)) => {
            return Err(Error::Usage(format!(
                "--labels is only used with --loss xent or mse, not {}",
                loss.name()
            )));
        }
        _ => {}
    }
    let g = model::load(model_path, batch)?;
    let bound = model::inputs_from_specs(&g, inputs)?;
    let output = model::output(&g, output)?;
    // The labels the loss expects: checked before differentiating, for a clear error.
    let labels_file = match labels {
        Some(path) => {
            let t = model::read_tensor(path)?;
            let out = g.tensor(output);
            let (dtype, shape) = if matches!(loss, LossArg::Xent) {
                (DType::I64, out.shape[..1.min(out.shape.len())].to_vec())
            } else {
                (out.dtype, out.shape.clone())
            };
            if t.dtype != dtype || t.shape != shape {
                return Err(Error::Usage(format!(
                    "--labels {}: the file holds {} {:?}, but --loss {} on output '{}' {:?} needs {dtype} {shape:?}",
                    path.display(),
                    t.dtype,
                    t.shape,
                    loss.name(),
                    out.name,
                    out.shape
                )));
            }
            Some(t)
        }
        None => None,
    };
    let wrt = g.trainable_weights();
    if wrt.is_empty() {
        return Err(Error::Usage("the model has no trainable weights".into()));
    }
    let gg = lowmem::autodiff::gradients(&g, output, loss.loss(), &wrt, Mode::Inference)?;
    let labels = match (gg.labels, labels_file) {
        (Some(id), Some(t)) => {
            let want = gg.graph.tensor(id);
            if t.dtype != want.dtype || t.shape != want.shape {
                return Err(Error::Usage(format!(
                    "--labels: the file holds {} {:?}, --loss {} needs {} {:?}",
                    t.dtype,
                    t.shape,
                    loss.name(),
                    want.dtype,
                    want.shape
                )));
            }
            Some(t.data)
        }
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::Usage(format!(
                "--loss {} needs --labels FILE.pb",
                loss.name()
            )));
        }
    };
    let mut labels = labels;
    let mut fed = Vec::with_capacity(gg.graph.inputs.len());
    for &i in &gg.graph.inputs {
        let t = gg.graph.tensor(i);
        if Some(i) == gg.labels {
            fed.push(labels.take().expect("labels fed once"));
        } else if Some(i) == gg.step {
            fed.push(TensorData::I64(vec![1]));
        } else if let Some(k) = g.inputs.iter().position(|&f| g.tensor(f).name == t.name) {
            fed.push(bound[k].clone());
        } else {
            return Err(Error::Usage(format!(
                "the gradient graph has an unexpected input '{}'",
                t.name
            )));
        }
    }
    let outs = lowmem_exec::run(&gg.graph, &fed)?;
    let loss_value = outs[0].to_f64().first().copied().unwrap_or(f64::NAN);
    std::fs::create_dir_all(output_dir).map_err(|source| Error::Io {
        path: output_dir.display().to_string(),
        source,
    })?;
    let mut taken = std::collections::HashSet::new();
    let mut index = serde_json::Map::new();
    for (k, &(w, _)) in gg.grads.iter().enumerate() {
        let wt = gg.graph.tensor(w);
        let file = grad_file_name(&wt.name, &mut taken);
        model::write_tensor(&output_dir.join(&file), &wt.name, &wt.shape, &outs[k + 1])?;
        index.insert(wt.name.clone(), serde_json::Value::String(file));
    }
    let json = serde_json::json!({"loss": loss_value, "gradients": index});
    let path = output_dir.join("index.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).expect("json") + "\n",
    )
    .map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    println!("loss {loss_value}");
    println!(
        "wrote {} gradients to {}",
        gg.grads.len(),
        output_dir.display()
    );
    Ok(())
}

fn train_cmd(
    model_path: &std::path::Path,
    config: TrainConfig,
    out: Option<PathBuf>,
) -> Result<(), Error> {
    let g = model::load(model_path, None)?;
    let split = data::digits()?;
    let report = train(&g, &split.train, &split.test, &config)?;
    println!("final loss: {:.4}", report.final_loss);
    println!(
        "test accuracy: {:.1}% ({}/{})",
        100.0 * report.accuracy(),
        report.correct,
        report.total
    );
    println!(
        "trained {} steps in {:.2} s, {:.0} steps/s",
        report.steps,
        report.seconds,
        report.steps as f64 / report.seconds.max(1e-9)
    );
    let out = out.unwrap_or_else(|| {
        let stem = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        PathBuf::from(format!("{stem}.trained.onnx"))
    });
    let bytes = lowmem_onnx::export_model(&report.model)?;
    std::fs::write(&out, bytes).map_err(|source| Error::Io {
        path: out.display().to_string(),
        source,
    })?;
    println!("saved {}", out.display());
    Ok(())
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
            let bound = model::inputs_from_specs(&g, &inputs)?;
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
        Cmd::Grad {
            model,
            inputs,
            loss,
            output,
            labels,
            output_dir,
            batch,
        } => grad(
            &model,
            &inputs,
            loss,
            output.as_deref(),
            labels.as_deref(),
            &output_dir,
            batch,
        ),
        Cmd::Train {
            model,
            steps,
            batch,
            optimizer,
            lr,
            momentum,
            weight_decay,
            loss,
            data: DataArg::Digits,
            seed,
            out,
            eval_every,
        } => {
            let optimizer = match optimizer {
                OptimizerArg::Sgd => Optimizer::Sgd {
                    lr: lr.unwrap_or(0.1),
                    momentum,
                    weight_decay: weight_decay.unwrap_or(0.0),
                },
                OptimizerArg::Adam => Optimizer::Adam {
                    lr: lr.unwrap_or(1e-3),
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-8,
                    weight_decay: weight_decay.unwrap_or(0.0),
                },
                OptimizerArg::Adamw => Optimizer::AdamW {
                    lr: lr.unwrap_or(1e-3),
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-8,
                    weight_decay: weight_decay.unwrap_or(0.01),
                },
            };
            if steps == 0 {
                return Err(Error::Usage("--steps must be positive".into()));
            }
            let config = TrainConfig {
                steps,
                batch,
                optimizer,
                loss: loss.loss(),
                seed,
                eval_every,
            };
            train_cmd(&model, config, out)
        }
        Cmd::Plan {
            model,
            train,
            batch,
            loss,
            optimizer,
            json,
            html,
            verify,
            no_in_place,
            search_ms,
            remat,
            budget,
        } => {
            let budget = budget
                .as_deref()
                .map(lowmem::remat::parse_budget)
                .transpose()?;
            let opts = lowmem::planning::PlanRequest {
                train,
                batch,
                loss: loss.loss(),
                optimizer: optimizer.for_planning(),
                in_place: !no_in_place,
                search: std::time::Duration::from_millis(search_ms),
                remat: remat.map(RematArg::scheme),
                budget,
            };
            lowmem::planning::plan_cmd(&model, &opts, json.as_deref(), html.as_deref(), verify)
        }
        Cmd::Frontier {
            model,
            train: _,
            batch,
            loss,
            optimizer,
            levels,
            json,
            html,
        } => {
            let req = lowmem::planning::PlanRequest {
                train: true,
                batch,
                loss: loss.loss(),
                optimizer: optimizer.for_planning(),
                in_place: true,
                search: std::time::Duration::ZERO,
                remat: None,
                budget: None,
            };
            lowmem::planning::frontier_cmd(&model, &req, levels, json.as_deref(), html.as_deref())
        }
        Cmd::Pack {
            file,
            out,
            time_limit,
            align,
        } => lowmem::planning::pack_cmd(&file, out.as_deref(), time_limit, align),
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
