//! The CUDA backend on a real GPU against the CPU executor: gated on the driver probe,
//! "skipped: no CUDA device" where there is none (CI has none; benches/gpu.sh covers the
//! GPU machine).

use lowmem_compile::{CompileOptions, Task, compile};
use lowmem_cuda::{CudaError, CudaExecutor, Gpu};
use lowmem_exec::Executor;
use lowmem_ir::TensorData;
use lowmem_testkit::{Rng, load_example};

fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice(_))) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("a CUDA driver is present but the backend fails to start: {e}"),
    }
}

#[test]
fn gradient_steps_on_the_gpu_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for name in ["digits_cnn", "tiny_cnn", "encoder_block"] {
        let g = load_example(name);
        // MSE against random targets: a sum over tiny_cnn's softmax output has a zero gradient.
        let task = Task::Gradient {
            loss: lowmem_autodiff::Loss::Mse,
            output: None,
        };
        let step = compile(&g, &CompileOptions::new(task)).unwrap();
        let mut rng = Rng::new(1);
        let mut cpu = Executor::new(&step).unwrap();
        let mut dev = CudaExecutor::new(&step, &gpu).unwrap();
        for (k, &t) in step.graph.inputs.iter().enumerate() {
            let t = step.graph.tensor(t);
            let v = match t.dtype {
                lowmem_ir::DType::F32 => TensorData::F32(rng.vec_in(t.numel(), -1.0, 1.0)),
                d => TensorData::zeros(d, t.numel()),
            };
            cpu.set_input(k, &v).unwrap();
            dev.set_input(k, &v).unwrap();
        }
        cpu.run().unwrap();
        dev.run().unwrap();
        for (k, (a, b)) in cpu.outputs().iter().zip(dev.outputs().unwrap()).enumerate() {
            let (err, norm) = lowmem_testkit::l2_distance(a, &b);
            assert!(
                err <= 1e-3 * norm.max(1e-6),
                "{name} output {k}: relative L2 error {}",
                err / norm.max(1e-15)
            );
        }
    }
}
