//! Runs one graph on the CPU executor (the oracle) and through the CUDA backend's launch
//! code and kernels on the host shim, both inside the same compiled plan, and compares.
#![allow(dead_code)]

use lowmem_compile::{CompileOptions, CompiledStep, Task, compile};
use lowmem_cuda::CudaExecutor;
use lowmem_cuda_shim::HostShim;
use lowmem_exec::Executor;
use lowmem_ir::{DType, Graph, Op, TensorData};
pub use lowmem_testkit::Rng;

/// One operand of a test graph.
pub enum In {
    /// A graph input of this shape (random values in [-2, 2]).
    F32(Vec<usize>),
    /// A graph input with these values.
    Data(Vec<usize>, TensorData),
}

/// A graph of one node `op` over fresh inputs, every output a graph output.
pub fn one_node(op: Op, ins: &[In], n_out: usize, rng: &mut Rng) -> (Graph, Vec<TensorData>) {
    let mut g = Graph::new("t");
    let mut ids = Vec::new();
    let mut vals = Vec::new();
    for (i, inp) in ins.iter().enumerate() {
        let (shape, data) = match inp {
            In::F32(s) => {
                let n = s.iter().product();
                (s.clone(), TensorData::F32(rng.vec_in(n, -2.0, 2.0)))
            }
            In::Data(s, d) => (s.clone(), d.clone()),
        };
        ids.push(g.add_input(format!("x{i}"), data.dtype(), shape).unwrap());
        vals.push(data);
    }
    let names: Vec<String> = (0..n_out).map(|k| format!("y{k}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let outs = g.add_node("n", op, &ids, &refs).unwrap();
    g.set_outputs(outs);
    (g, vals)
}

pub fn inference(g: &Graph) -> CompiledStep {
    compile(g, &CompileOptions::new(Task::Inference)).unwrap()
}

/// The step's outputs on the CPU executor and on the shim.
pub fn run_both(step: &CompiledStep, inputs: &[TensorData]) -> (Vec<TensorData>, Vec<TensorData>) {
    let mut cpu = Executor::new(step).unwrap();
    for (k, v) in inputs.iter().enumerate() {
        cpu.set_input(k, v).unwrap();
    }
    cpu.run().unwrap();
    let shim = HostShim::new();
    let mut gpu = CudaExecutor::new(step, &shim).unwrap();
    for (k, v) in inputs.iter().enumerate() {
        gpu.set_input(k, v).unwrap();
    }
    gpu.run().unwrap_or_else(|e| panic!("{e}"));
    (cpu.outputs(), gpu.outputs().unwrap())
}

/// Asserts `got` matches `want` to `|got - want| <= atol + rtol * |want|` (NaN matches
/// NaN); other dtypes must be equal.
pub fn assert_close(what: &str, want: &TensorData, got: &TensorData, rtol: f32, atol: f32) {
    assert_eq!(want.dtype(), got.dtype(), "{what}: dtype");
    assert_eq!(want.len(), got.len(), "{what}: length");
    match (want, got) {
        (TensorData::F32(w), TensorData::F32(g)) => {
            for (i, (&a, &b)) in w.iter().zip(g).enumerate() {
                let ok =
                    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * a.abs();
                assert!(ok, "{what}: element {i}: CPU {a}, CUDA kernel {b}");
            }
        }
        _ => assert_eq!(want, got, "{what}"),
    }
}

/// Runs `op` over `ins` both ways and compares every output.
pub fn check(op: Op, ins: &[In], n_out: usize, seed: u64, rtol: f32, atol: f32) {
    let mut rng = Rng::new(seed);
    let name = format!(
        "{op:?} on {:?}",
        ins.iter()
            .map(|i| match i {
                In::F32(s) | In::Data(s, _) => s.clone(),
            })
            .collect::<Vec<_>>()
    );
    let (g, vals) = one_node(op, ins, n_out, &mut rng);
    let step = inference(&g);
    let (want, got) = run_both(&step, &vals);
    for (k, (w, gt)) in want.iter().zip(&got).enumerate() {
        assert_close(&format!("{name}, output {k}"), w, gt, rtol, atol);
    }
}

pub fn i64s(v: Vec<i64>) -> TensorData {
    TensorData::I64(v)
}

pub fn dtype_of(d: &TensorData) -> DType {
    d.dtype()
}
