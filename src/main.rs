use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use lowmem::autodiff::{Loss, Optimizer};
use lowmem::compile::{CompileOptions, InputRole, Task, compile, human_bytes};
use lowmem::device::Target;
use lowmem::exec::heap::CountingAlloc;
use lowmem::exec::train::StepProbe;
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

impl DeviceArg {
    fn target(self) -> Target {
        match self {
            DeviceArg::Cpu => Target::Cpu,
            DeviceArg::Cuda => Target::Cuda,
        }
    }
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
    /// Run the forward pass inside its planned arena (CPU executor, or --device cuda).
    Run {
        model: PathBuf,
        /// Where the step runs: the CPU executor or the CUDA backend (GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// A graph input as an ONNX TensorProto file (repeat for each input).
        #[arg(long = "input", value_name = "NAME=FILE.pb", required = true)]
        inputs: Vec<String>,
        /// Where to write output_K.pb, K in graph output order.
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
    },
    /// Time the compiled step (forward pass, or --train the whole training step) inside
    /// its arena, on random inputs (median of several runs, compiling excluded).
    Bench {
        model: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// Time the training step (forward, loss, backward, update) instead.
        #[arg(long)]
        train: bool,
        #[command(flatten)]
        remat: RematOpts,
        /// Timed runs after one warm-up run.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Where the step runs: the CPU executor or the CUDA backend (GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
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
        #[command(flatten)]
        remat: RematOpts,
        /// Where the step runs: the CPU executor or the CUDA backend (GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
    },
    /// Compile a model into one step (graph, order, arena plan, weights and optimizer state)
    /// and write it as a .lmc file that `train` runs.
    Compile {
        model: PathBuf,
        /// Compile the training step (default: the forward pass).
        #[arg(long)]
        train: bool,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        #[command(flatten)]
        opt: OptimizerOpts,
        #[command(flatten)]
        remat: RematOpts,
        /// Where to write the compiled step.
        #[arg(short, long, value_name = "STEP.lmc")]
        out: PathBuf,
    },
    /// Train a model (or a compiled .lmc step) on a built-in data set inside the planned
    /// arena, then report test accuracy and save the trained model as ONNX.
    Train {
        /// A `.onnx` or JSON model, or a `.lmc` compiled step.
        model: PathBuf,
        #[arg(long, default_value_t = 600)]
        steps: usize,
        /// Batch size (default 32; fixed by a .lmc file).
        #[arg(long)]
        batch: Option<usize>,
        #[command(flatten)]
        opt: OptimizerOpts,
        #[command(flatten)]
        remat: RematOpts,
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
        /// Print one JSON object with the figures at the end (no progress lines).
        #[arg(long)]
        json: bool,
        /// Where the step runs: the CPU executor or the CUDA backend (GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
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
        /// Keep the activations saved for the backward pass in 16 bits.
        #[arg(long, value_enum, value_name = "DTYPE")]
        store: Option<StoreArg>,
        /// Memory rewrites: sliceout=P, dropit=GAMMA (comma-separated).
        #[arg(long, value_name = "SPEC")]
        rewrite: Option<String>,
        /// Run each batch as K micro-batches of batch/K (gradients summed, one update).
        #[arg(long, value_name = "K")]
        microbatch: Option<usize>,
        /// Keep each Conv/Gemm -> ReLU pair as two ops (no epilogue fusion).
        #[arg(long)]
        no_fuse: bool,
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
        /// Keep the activations saved for the backward pass in 16 bits.
        #[arg(long, value_enum, value_name = "DTYPE")]
        store: Option<StoreArg>,
        /// Memory rewrites: sliceout=P, dropit=GAMMA (comma-separated).
        #[arg(long, value_name = "SPEC")]
        rewrite: Option<String>,
        /// Run each batch as K micro-batches of batch/K (gradients summed, one update).
        #[arg(long, value_name = "K")]
        microbatch: Option<usize>,
        /// Keep each Conv/Gemm -> ReLU pair as two ops (no epilogue fusion).
        #[arg(long)]
        no_fuse: bool,
    },
    /// Run a step on --device and on the CPU executor with the same random inputs, and
    /// compare: outputs element by element (--rtol, --atol); with --grad the gradient step
    /// (sum of the first output), gradients in relative L2 error (--grad-rtol). Exits
    /// non-zero on a mismatch.
    Parity {
        model: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// Compare the gradient step instead of the forward pass.
        #[arg(long)]
        grad: bool,
        #[arg(long, default_value_t = 1e-3)]
        rtol: f64,
        #[arg(long, default_value_t = 1e-4)]
        atol: f64,
        #[arg(long, default_value_t = 1e-3)]
        grad_rtol: f64,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Where the step runs, compared with the CPU.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cuda)]
        device: DeviceArg,
    },
    /// Write a model (a file or builtin:NAME) as ONNX, optionally at another batch size, as
    /// lowmem runs it (Conv/Gemm -> ReLU pairs as two ONNX nodes): for onnxruntime beside
    /// lowmem (benches/vs_onnxruntime.py).
    Export {
        model: PathBuf,
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        #[arg(short, long, value_name = "FILE.onnx")]
        out: PathBuf,
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

/// Checkpointing of a training step.
#[derive(clap::Args, Clone, Default)]
struct RematOpts {
    /// Checkpointing scheme of the training step.
    #[arg(long, value_enum, value_name = "SCHEME")]
    remat: Option<RematArg>,
    /// Memory budget of the whole step (planned peak): bytes, or e.g. 512MiB, 4GiB, 2GB.
    #[arg(long, value_name = "BYTES")]
    budget: Option<String>,
    /// Keep the activations saved for the backward pass in 16 bits (compute stays f32).
    #[arg(long, value_enum, value_name = "DTYPE")]
    store: Option<StoreArg>,
    /// Memory rewrites: sliceout=P (slice dropout between weight layers), dropit=GAMMA
    /// (weight gradients from the top (1-GAMMA) of each layer input), comma-separated.
    #[arg(long, value_name = "SPEC")]
    rewrite: Option<String>,
    /// Run each batch as K micro-batches of batch/K (gradients summed, one update).
    #[arg(long, value_name = "K")]
    microbatch: Option<usize>,
    /// Keep each Conv/Gemm -> ReLU pair as two ops (no epilogue fusion).
    #[arg(long)]
    no_fuse: bool,
}

/// A 16-bit storage type.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreArg {
    F16,
    Bf16,
}

impl StoreArg {
    fn dtype(self) -> DType {
        match self {
            StoreArg::F16 => DType::F16,
            StoreArg::Bf16 => DType::BF16,
        }
    }
}

impl RematOpts {
    fn given(&self) -> bool {
        self.remat.is_some()
            || self.budget.is_some()
            || self.store.is_some()
            || self.rewrite.is_some()
            || self.microbatch.is_some()
    }
    /// Sets every memory option of `opts` from the flags.
    fn apply(&self, opts: &mut CompileOptions) -> Result<(), Error> {
        opts.remat = self.scheme();
        opts.budget = self.budget()?;
        opts.store = self.store();
        if let Some(spec) = &self.rewrite {
            (opts.sliceout, opts.dropit) = lowmem::parse_rewrite(spec)?;
        }
        opts.microbatch = self.microbatch;
        opts.fuse = !self.no_fuse;
        Ok(())
    }
    fn store(&self) -> Option<DType> {
        self.store.map(StoreArg::dtype)
    }
    fn scheme(&self) -> Option<lowmem::remat::Scheme> {
        self.remat.map(RematArg::scheme)
    }
    fn budget(&self) -> Result<Option<u64>, Error> {
        Ok(self
            .budget
            .as_deref()
            .map(lowmem::remat::parse_budget)
            .transpose()?)
    }
}

/// The loss and optimizer of a training step.
#[derive(clap::Args, Clone)]
struct OptimizerOpts {
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Learning rate (default: 0.1 for sgd, 0.001 for adam/adamw).
    #[arg(long)]
    lr: Option<f32>,
    /// SGD momentum (default 0.9).
    #[arg(long)]
    momentum: Option<f32>,
    /// Weight decay (default: 0, or 0.01 for adamw).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Loss of the training step (default xent).
    #[arg(long, value_enum)]
    loss: Option<LossArg>,
}

impl OptimizerOpts {
    fn given(&self) -> bool {
        self.optimizer.is_some()
            || self.lr.is_some()
            || self.momentum.is_some()
            || self.weight_decay.is_some()
            || self.loss.is_some()
    }

    fn task(&self) -> Task {
        let lr = self.lr;
        let wd = self.weight_decay;
        let optimizer = match self.optimizer.unwrap_or(OptimizerArg::Sgd) {
            OptimizerArg::Sgd => Optimizer::Sgd {
                lr: lr.unwrap_or(0.1),
                momentum: self.momentum.unwrap_or(0.9),
                weight_decay: wd.unwrap_or(0.0),
            },
            OptimizerArg::Adam => Optimizer::Adam {
                lr: lr.unwrap_or(1e-3),
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: wd.unwrap_or(0.0),
            },
            OptimizerArg::Adamw => Optimizer::AdamW {
                lr: lr.unwrap_or(1e-3),
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: wd.unwrap_or(0.01),
            },
        };
        Task::Training {
            loss: self.loss.unwrap_or(LossArg::Xent).loss(),
            optimizer,
        }
    }
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

struct GradArgs<'a> {
    inputs: &'a [String],
    loss: LossArg,
    output: Option<&'a str>,
    labels: Option<&'a std::path::Path>,
    output_dir: &'a std::path::Path,
    batch: Option<usize>,
    remat: &'a RematOpts,
    device: Target,
}

fn grad(model_path: &std::path::Path, a: GradArgs) -> Result<(), Error> {
    let GradArgs {
        inputs,
        loss,
        output,
        labels,
        output_dir,
        batch,
        remat,
        device,
    } = a;
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
    let mut opts = CompileOptions::new(Task::Gradient {
        loss: loss.loss(),
        output: Some(g.tensor(output).name.clone()),
    });
    remat.apply(&mut opts)?;
    let step = lowmem::compile_step(&g, &opts)?;
    let mut ex = lowmem::device::executor(&step, device)?;
    let mut labels = labels_file.map(|t| t.data);
    for (k, role) in step.inputs.iter().enumerate() {
        match *role {
            InputRole::Data(j) => ex.set_input(k, &bound[j])?,
            InputRole::Labels => {
                let t = labels.take().ok_or_else(|| {
                    Error::Usage(format!("--loss {} needs --labels FILE.pb", loss.name()))
                })?;
                ex.set_input(k, &t)?;
            }
            InputRole::Step => ex.set_input(k, &TensorData::I64(vec![1]))?,
            InputRole::State(_) => {
                return Err(Error::Usage(
                    "internal error: a gradient step has no state".into(),
                ));
            }
        }
    }
    ex.run()?;
    let outs = ex.outputs()?;
    let loss_value = outs[0].to_f64().first().copied().unwrap_or(f64::NAN);
    std::fs::create_dir_all(output_dir).map_err(|source| Error::Io {
        path: output_dir.display().to_string(),
        source,
    })?;
    let mut taken = std::collections::HashSet::new();
    let mut index = serde_json::Map::new();
    for (k, (name, _)) in step.grads.iter().enumerate() {
        let wt = g.tensor(
            g.tensor_id(name)
                .expect("gradients are of the model's weights"),
        );
        let file = grad_file_name(name, &mut taken);
        model::write_tensor(&output_dir.join(&file), name, &wt.shape, &outs[k + 1])?;
        index.insert(name.clone(), serde_json::Value::String(file));
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
    if let Some(r) = &step.remat {
        println!(
            "remat {} ({}), {} nodes recomputed ({:.1}% overhead), planned peak {}",
            r.scheme,
            r.detail,
            r.recomputed_nodes,
            100.0 * step.costs.overhead(),
            human_bytes(step.planned_peak_bytes())
        );
    }
    println!(
        "wrote {} gradients to {}",
        step.grads.len(),
        output_dir.display()
    );
    Ok(())
}

/// Heap bytes, counted: `train --json` reports the measured peak of the step.
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// Measures the peak of live heap bytes while each step runs, from a baseline taken just
/// before the executor allocates the step's memory (data set, model and the executor's
/// instruction table excluded).
struct HeapProbe {
    baseline: usize,
    peak: usize,
}

impl StepProbe for HeapProbe {
    fn before_blocks(&mut self) {
        self.baseline = HEAP.live();
        self.peak = self.baseline;
    }
    fn before(&mut self) {
        HEAP.reset_peak();
    }
    fn after(&mut self) {
        self.peak = self.peak.max(HEAP.peak());
    }
}

fn is_lmc(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "lmc")
        || std::fs::File::open(path)
            .and_then(|mut f| {
                let mut m = [0u8; 8];
                std::io::Read::read_exact(&mut f, &mut m)
                    .map(|()| &m == lowmem::compile::lmc::MAGIC)
            })
            .unwrap_or(false)
}

struct TrainArgs {
    steps: usize,
    batch: Option<usize>,
    opt: OptimizerOpts,
    remat: RematOpts,
    seed: u64,
    out: Option<PathBuf>,
    eval_every: usize,
    json: bool,
    device: Target,
}

fn train_cmd(model_path: &std::path::Path, a: TrainArgs) -> Result<(), Error> {
    if a.steps == 0 {
        return Err(Error::Usage("--steps must be positive".into()));
    }
    let split = data::digits()?;
    let mut export_batch = None;
    let mut step = if is_lmc(model_path) {
        if a.batch.is_some() || a.opt.given() || a.remat.given() {
            return Err(Error::Usage(format!(
                "{} is a compiled step: its batch, loss, optimizer, --remat and --budget were fixed by `lowmem compile`",
                model_path.display()
            )));
        }
        lowmem::compile::lmc::read(model_path)?
    } else {
        let g = model::load(model_path, None)?;
        let batch = a.batch.unwrap_or(32);
        let gb = g.clone().with_batch(batch)?;
        data::check_input(&gb, lowmem::train::data_input(&gb)?, split.train.features)?;
        export_batch = g.batch();
        let mut opts = CompileOptions::new(a.opt.task());
        opts.batch = Some(batch);
        a.remat.apply(&mut opts)?;
        opts.plan.search_time = std::time::Duration::ZERO;
        lowmem::compile_step(&g, &opts)?
    };
    let config = TrainConfig {
        steps: a.steps,
        seed: a.seed,
        eval_every: a.eval_every,
        device: a.device,
    };
    lowmem_exec::start_threads();
    let mut probe = HeapProbe {
        baseline: HEAP.live(),
        peak: 0,
    };
    let report = train(
        &mut step,
        &split.train,
        &split.test,
        &config,
        &mut probe,
        a.json,
    )?;
    let measured = probe.peak.saturating_sub(probe.baseline) as u64;
    let planned = step.planned_peak_bytes();
    let out = a.out.unwrap_or_else(|| {
        let stem = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        PathBuf::from(format!("{stem}.trained.onnx"))
    });
    let trained = match export_batch {
        Some(b) => report.model.clone().with_batch(b)?,
        None => report.model.clone(),
    };
    let bytes = lowmem_onnx::export_model(&trained)?;
    std::fs::write(&out, bytes).map_err(|source| Error::Io {
        path: out.display().to_string(),
        source,
    })?;
    let rate = report.steps as f64 / report.seconds.max(1e-9);
    let scheme = step.remat.as_ref().map_or("none", |r| r.scheme);
    if a.json {
        let j = serde_json::json!({
            "model": step.model,
            "batch": step.batch,
            "steps": report.steps,
            "final_loss": report.final_loss,
            "test_accuracy": report.accuracy(),
            "correct": report.correct,
            "total": report.total,
            "remat": scheme,
            "budget_bytes": step.budget,
            "planned_peak_bytes": planned,
            "persistent_bytes": step.plan.persistent_bytes,
            "arena_bytes": step.plan.arena_bytes,
            "measured_peak_bytes": measured,
            "device": a.device.name(),
            "device_peak_bytes": report.device_peak_bytes,
            "recompute_overhead": step.costs.overhead(),
            "steps_per_second": rate,
            "seconds": report.seconds,
            "saved": out.display().to_string(),
        });
        println!("{j}");
    } else {
        println!("final loss: {:.4}", report.final_loss);
        println!(
            "test accuracy: {:.1}% ({}/{})",
            100.0 * report.accuracy(),
            report.correct,
            report.total
        );
        println!(
            "memory: planned peak {} (persistent {} + arena {}), measured peak {}{}",
            human_bytes(planned),
            human_bytes(step.plan.persistent_bytes),
            human_bytes(step.plan.arena_bytes),
            human_bytes(measured),
            step.budget
                .map_or(String::new(), |b| format!(", budget {}", human_bytes(b)))
        );
        println!(
            "remat: {scheme}, recompute overhead {:.1}%",
            100.0 * step.costs.overhead()
        );
        println!(
            "trained {} steps in {:.2} s, {rate:.0} steps/s",
            report.steps, report.seconds
        );
        println!("saved {}", out.display());
    }
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

/// The `--device` a command asks for.
fn device_of(cmd: &Cmd) -> Option<DeviceArg> {
    match cmd {
        Cmd::Run { device, .. }
        | Cmd::Bench { device, .. }
        | Cmd::Grad { device, .. }
        | Cmd::Train { device, .. }
        | Cmd::Parity { device, .. } => Some(*device),
        _ => None,
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    // A missing GPU is said before any compiling.
    if let Some(DeviceArg::Cuda) = device_of(&cli.cmd) {
        lowmem::device::gpu()?;
    }
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
            device,
        } => {
            let g = model::load(&model, batch)?;
            let bound = model::inputs_from_specs(&g, &inputs)?;
            let step = compile(&g, &CompileOptions::new(Task::Inference))?;
            let mut ex = lowmem::device::executor(&step, device.target())?;
            for (k, d) in bound.iter().enumerate() {
                ex.set_input(k, d)?;
            }
            ex.run()?;
            let outputs = ex.outputs()?;
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
            train,
            remat,
            iters,
            json,
            device,
        } => {
            let g = model::load(&model, batch)?;
            let mut opts = CompileOptions::new(if train {
                OptimizerOpts {
                    optimizer: None,
                    lr: None,
                    momentum: None,
                    weight_decay: None,
                    loss: None,
                }
                .task()
            } else {
                Task::Inference
            });
            remat.apply(&mut opts)?;
            opts.plan.search_time = std::time::Duration::ZERO;
            if remat.given() && !train {
                return Err(Error::Usage(
                    "--remat and --budget apply to a training step: add --train".into(),
                ));
            }
            let step = lowmem::compile_step(&g, &opts)?;
            let free_before = lowmem::device::free_bytes(device.target());
            let mut ex = lowmem::device::executor(&step, device.target())?;
            let inputs = random_inputs(&step.graph, 1)?;
            set_random_inputs(ex.as_mut(), &step, &inputs)?;
            ex.run()?;
            ex.sync()?;
            let mut min_free = lowmem::device::free_bytes(device.target());
            let mut times = Vec::with_capacity(iters.max(1));
            for _ in 0..iters.max(1) {
                let t = Instant::now();
                ex.run()?;
                ex.sync()?;
                times.push(t.elapsed().as_secs_f64());
                min_free = min_free.min(lowmem::device::free_bytes(device.target()));
            }
            // Device memory the step took: the free-memory drop from before its blocks.
            let device_peak = free_before
                .zip(min_free)
                .map(|(b, m)| b.saturating_sub(m) as u64);
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let flops =
                step.costs.forward_flops + step.costs.backward_flops + step.costs.recompute_flops;
            let gflops = flops as f64 / median / 1e9;
            // The CPU's measured peak, to read the step's rate against.
            let peak = (device.target() == Target::Cpu).then(|| lowmem_exec::peak::peak_gflops().0);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model": g.name, "batch": step.batch, "task": step.task.name(),
                        "iters": times.len(), "median_s": median, "min_s": times[0],
                        "gflops": gflops, "planned_peak_bytes": step.planned_peak_bytes(),
                        "machine_peak_gflops": peak,
                        "fraction_of_peak": peak.map(|p| gflops / p),
                        "device": device.target().name(),
                        "persistent_bytes": step.plan.persistent_bytes,
                        "arena_bytes": step.plan.arena_bytes,
                        "device_peak_bytes": device_peak,
                        "remat": step.remat.as_ref().map_or("none", |r| r.scheme),
                    })
                );
            } else {
                println!(
                    "{} ({}, batch {}, {}): median {:.2} ms, min {:.2} ms over {} runs ({gflops:.1} GFLOP/s{}), planned peak {}{}",
                    g.name,
                    step.task.name(),
                    step.batch,
                    device.target().name(),
                    median * 1e3,
                    times[0] * 1e3,
                    times.len(),
                    peak.map_or(String::new(), |p| format!(
                        ", {:.1}% of the measured peak {p:.0}",
                        100.0 * gflops / p
                    )),
                    human_bytes(step.planned_peak_bytes()),
                    device_peak.map_or(String::new(), |d| format!(
                        ", device peak {}",
                        human_bytes(d)
                    ))
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
            remat,
            device,
        } => grad(
            &model,
            GradArgs {
                inputs: &inputs,
                loss,
                output: output.as_deref(),
                labels: labels.as_deref(),
                output_dir: &output_dir,
                batch,
                remat: &remat,
                device: device.target(),
            },
        ),
        Cmd::Compile {
            model,
            train,
            batch,
            opt,
            remat,
            out,
        } => {
            if !train && (opt.given() || remat.given()) {
                return Err(Error::Usage(
                    "--optimizer, --loss, --remat and --budget apply to a training step: add --train"
                        .into(),
                ));
            }
            let g = model::load(&model, None)?;
            let mut opts = CompileOptions::new(if train { opt.task() } else { Task::Inference });
            opts.batch = batch;
            remat.apply(&mut opts)?;
            let step = lowmem::compile_step(&g, &opts)?;
            lowmem::compile::lmc::write(&step, &out).map_err(|source| Error::Io {
                path: out.display().to_string(),
                source,
            })?;
            println!(
                "{} ({} step, batch {}): {} nodes, planned peak {} (persistent {} + arena {}){}",
                step.model,
                step.task.name(),
                step.batch,
                step.graph.nodes.len(),
                human_bytes(step.planned_peak_bytes()),
                human_bytes(step.plan.persistent_bytes),
                human_bytes(step.plan.arena_bytes),
                step.remat.as_ref().map_or(String::new(), |r| format!(
                    ", remat {} ({})",
                    r.scheme, r.detail
                ))
            );
            println!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Train {
            model,
            steps,
            batch,
            opt,
            remat,
            data: DataArg::Digits,
            seed,
            out,
            eval_every,
            json,
            device,
        } => train_cmd(
            &model,
            TrainArgs {
                steps,
                batch,
                opt,
                remat,
                seed,
                out,
                eval_every,
                json,
                device: device.target(),
            },
        ),
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
            store,
            rewrite,
            microbatch,
            no_fuse,
        } => {
            let budget = budget
                .as_deref()
                .map(lowmem::remat::parse_budget)
                .transpose()?;
            let (sliceout, dropit) = match rewrite.as_deref() {
                Some(r) => lowmem::parse_rewrite(r)?,
                None => (None, None),
            };
            let opts = lowmem::planning::PlanRequest {
                train,
                batch,
                loss: loss.loss(),
                optimizer: optimizer.for_planning(),
                in_place: !no_in_place,
                search: std::time::Duration::from_millis(search_ms),
                remat: remat.map(RematArg::scheme),
                budget,
                store: store.map(StoreArg::dtype),
                sliceout,
                dropit,
                microbatch,
                fuse: !no_fuse,
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
            store,
            rewrite,
            microbatch,
            no_fuse,
        } => {
            let (sliceout, dropit) = match rewrite.as_deref() {
                Some(r) => lowmem::parse_rewrite(r)?,
                None => (None, None),
            };
            let req = lowmem::planning::PlanRequest {
                train: true,
                batch,
                loss: loss.loss(),
                optimizer: optimizer.for_planning(),
                in_place: true,
                search: std::time::Duration::ZERO,
                remat: None,
                budget: None,
                store: store.map(StoreArg::dtype),
                sliceout,
                dropit,
                microbatch,
                fuse: !no_fuse,
            };
            lowmem::planning::frontier_cmd(&model, &req, levels, json.as_deref(), html.as_deref())
        }
        Cmd::Export { model, batch, out } => {
            let g = lowmem::model::load(&model, batch)?;
            let bytes = lowmem_onnx::export_model(&g)?;
            std::fs::write(&out, bytes).map_err(|source| Error::Io {
                path: out.display().to_string(),
                source,
            })?;
            println!("{}: {} nodes -> {}", g.name, g.nodes.len(), out.display());
            Ok(())
        }
        Cmd::Pack {
            file,
            out,
            time_limit,
            align,
        } => lowmem::planning::pack_cmd(&file, out.as_deref(), time_limit, align),
        Cmd::Parity {
            model,
            batch,
            grad,
            rtol,
            atol,
            grad_rtol,
            json,
            device,
        } => parity(
            &model,
            batch,
            grad,
            (rtol, atol, grad_rtol),
            json,
            device.target(),
        ),
    }
}

/// How far beyond the CPU's own sensitivity to rounding-level input noise (see `parity`)
/// a device's gradient may deviate.
const PARITY_SENSITIVITY_FACTOR: f64 = 4.0;

/// `lowmem parity`.
fn parity(
    model_path: &std::path::Path,
    batch: Option<usize>,
    grad: bool,
    (rtol, atol, grad_rtol): (f64, f64, f64),
    json: bool,
    device: Target,
) -> Result<(), Error> {
    let mut g = model::load(model_path, batch)?;
    if grad {
        let n = randomize_constant_weights(&mut g, 11);
        if n > 0 && !json {
            println!(
                "{}: {n} constant weights given random values",
                model_path.display()
            );
        }
    }
    let task = if grad {
        Task::Gradient {
            loss: parity_loss(&g),
            output: None,
        }
    } else {
        Task::Inference
    };
    let step = compile(&g, &CompileOptions::new(task))?;
    let inputs = random_inputs(&step.graph, 7)?;
    // One step on `target` from `inputs`; the executor, for a second (timed) run.
    let run_once = |target: Target, inputs: &[TensorData]| {
        let mut ex = lowmem::device::executor(&step, target)?;
        set_random_inputs(ex.as_mut(), &step, inputs)?;
        ex.run()?;
        ex.sync()?;
        Ok::<_, Error>(ex)
    };
    let run = |target: Target| -> Result<(Vec<TensorData>, f64), Error> {
        let mut ex = run_once(target, &inputs)?;
        let t = Instant::now();
        ex.run()?;
        ex.sync()?;
        let secs = t.elapsed().as_secs_f64();
        Ok((ex.outputs()?, secs))
    };
    let (want, cpu_s) = run(Target::Cpu)?;
    let (got, dev_s) = run(device)?;
    // The gradients' own sensitivity to rounding: the CPU again, on inputs moved by one part
    // in 10^7. Deep random networks amplify rounding (ReLU and pooling decisions flip, sums
    // cancel) up to 1e-2 relative in the first layers' gradients; a device is held to that.
    let sensitivity: Vec<f64> = if grad {
        let mut r = uniform(99);
        let moved: Vec<TensorData> = inputs
            .iter()
            .map(|d| match d {
                TensorData::F32(v) => {
                    TensorData::F32(v.iter().map(|x| x * (1.0 + 1e-7 * r())).collect())
                }
                d => d.clone(),
            })
            .collect();
        want.iter()
            .zip(&run_once(Target::Cpu, &moved)?.outputs()?)
            .map(|(w, m)| lowmem::device::deviation("", w, m, rtol, atol).rel_l2)
            .collect()
    } else {
        Vec::new()
    };
    let names: Vec<String> = if grad {
        std::iter::once("loss".to_string())
            .chain(step.grads.iter().map(|(n, _)| format!("d{n}")))
            .collect()
    } else {
        step.graph
            .outputs
            .iter()
            .map(|&o| step.graph.tensor(o).name.clone())
            .collect()
    };
    let devs: Vec<lowmem::device::Deviation> = names
        .iter()
        .zip(want.iter().zip(&got))
        .map(|(n, (w, gt))| lowmem::device::deviation(n, w, gt, rtol, atol))
        .collect();
    // Outputs (and the loss) element by element; gradients in relative L2.
    let bad: Vec<&lowmem::device::Deviation> = devs
        .iter()
        .enumerate()
        .filter(|(i, d)| {
            // NaN compares false: a NaN deviation is a mismatch.
            let within = if grad && *i > 0 {
                d.rel_l2 <= grad_rtol.max(PARITY_SENSITIVITY_FACTOR * sensitivity[*i])
            } else {
                d.worst_excess <= 0.0
            };
            !within
        })
        .map(|(_, d)| d)
        .collect();
    let worst = |f: fn(&lowmem::device::Deviation) -> f64| devs.iter().map(f).fold(0.0, f64::max);
    let sens = sensitivity.iter().skip(1).copied().fold(0.0, f64::max);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": model_path.display().to_string(), "batch": step.batch,
                "task": step.task.name(), "device": device.name(), "tensors": devs.len(), "mismatched": bad.len(),
                "max_abs": worst(|d| d.max_abs), "max_rel_l2": worst(|d| d.rel_l2),
                "cpu_s": cpu_s, "device_s": dev_s, "cpu_sensitivity": grad.then_some(sens),
                "first_mismatch": bad.first().map(|d| d.name.clone()),
            })
        );
    } else {
        println!(
            "{} ({}, batch {}) on {} vs cpu: {} tensors, max |diff| {:.3e}, max relative L2 {:.3e}, {} mismatched; step {:.2} ms vs {:.2} ms",
            model_path.display(),
            step.task.name(),
            step.batch,
            device.name(),
            devs.len(),
            worst(|d| d.max_abs),
            worst(|d| d.rel_l2),
            bad.len(),
            dev_s * 1e3,
            cpu_s * 1e3
        );
        if grad {
            println!(
                "  the CPU's own gradients move by up to {sens:.3e} (relative L2) when the inputs move by 1e-7; tolerance max({grad_rtol:e}, {PARITY_SENSITIVITY_FACTOR} x that, per tensor)"
            );
        }
        for d in bad.iter().take(5) {
            println!(
                "  mismatch: {} (max |diff| {:.3e}, relative L2 {:.3e})",
                d.name, d.max_abs, d.rel_l2
            );
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "{} of {} tensors differ from the CPU's on {}: first '{}'",
            bad.len(),
            devs.len(),
            device.name(),
            bad[0].name
        )))
    }
}

/// Gives every trainable weight of rank >= 2 whose elements are all equal (the zoo's "light"
/// graphs store weights as `ConstantOfShape`) uniform values of variance 1/fan-in. With
/// constant weights every channel, and so every logit, is the same number up to the order of
/// summation: activations grow to ~1e20 and the softmax's ties break on rounding, which makes
/// the gradients of two correct devices disagree. Returns how many were replaced.
fn randomize_constant_weights(g: &mut Graph, seed: u64) -> usize {
    let mut next = uniform(seed);
    let mut n = 0;
    for w in g.trainable_weights() {
        let t = &mut g.tensors[w.index()];
        let constant = match t.value.as_deref() {
            Some(TensorData::F32(v)) => v.len() > 1 && v.iter().all(|&x| x == v[0]),
            _ => false,
        };
        if t.shape.len() < 2 || !constant {
            continue;
        }
        let fan_in = (t.numel() / t.shape[0].max(1)).max(1);
        let a = (3.0 / fan_in as f32).sqrt();
        let v: Vec<f32> = (0..t.numel()).map(|_| a * next()).collect();
        t.value = Some(std::sync::Arc::new(TensorData::F32(v)));
        n += 1;
    }
    n
}

/// A loss whose gradient is not zero by construction: the sum of a softmax output is 1
/// whatever its input, so its gradient is rounding noise that no two devices share.
/// Cross-entropy over a softmax output (label 0), MSE against random targets otherwise.
fn parity_loss(g: &Graph) -> lowmem::autodiff::Loss {
    let producers = g.producers();
    let softmax = g
        .outputs
        .first()
        .is_some_and(|&o| producers[o.index()].is_some_and(|n| g.node(n).op.name() == "Softmax"));
    if softmax {
        lowmem::autodiff::Loss::CrossEntropy
    } else {
        lowmem::autodiff::Loss::Mse
    }
}

/// Writes `inputs` (from [`random_inputs`]) into every input of `step` but its state (which
/// the executor loaded), and step 1.
fn set_random_inputs(
    ex: &mut dyn lowmem::device::StepRun,
    step: &lowmem::compile::CompiledStep,
    inputs: &[TensorData],
) -> Result<(), Error> {
    for (k, role) in step.inputs.iter().enumerate() {
        match role {
            InputRole::Step => ex.set_step(1)?,
            InputRole::State(_) => {}
            _ => ex.set_input(k, &inputs[k])?,
        }
    }
    Ok(())
}

/// Deterministic pseudo-random inputs (normal-ish f32 in [-1, 1), zeros for other dtypes).
/// Uniform values in [-1, 1) from a seeded xorshift.
fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn random_inputs(g: &Graph, seed: u64) -> Result<Vec<TensorData>, Error> {
    let mut next = uniform(seed);
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
