//! `lowmem train`: the data set as a batch source for a compiled training step (run inside
//! its arena by [`lowmem_exec::train::Trainer`] on the CPU or
//! [`lowmem_cuda::train::CudaTrainer`] on a GPU), progress, and test accuracy.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use lowmem_compile::CompiledStep;
use lowmem_exec::train::{BatchSource, Labels, StepProbe, Trainer};
use lowmem_ir::{Graph, TensorData, TensorId};

use crate::Error;
use crate::data::{Batches, Dataset};
use crate::device::Target;

/// Sets the value of each named weight of `graph` (by tensor name), checking dtype and size.
pub fn set_weights<'a>(
    graph: &mut Graph,
    values: impl IntoIterator<Item = (&'a str, Arc<TensorData>)>,
) -> Result<(), Error> {
    for (name, data) in values {
        let id = graph
            .tensor_id(name)
            .ok_or_else(|| Error::Model(format!("the model has no weight '{name}'")))?;
        let t = &mut graph.tensors[id.index()];
        if t.value.is_none() {
            return Err(Error::Model(format!(
                "'{name}' is not a weight of the model"
            )));
        }
        if t.dtype != data.dtype() || t.numel() != data.len() {
            return Err(Error::Model(format!(
                "weight '{name}': {} {:?} cannot take {} values of {}",
                t.dtype,
                t.shape,
                data.len(),
                data.dtype()
            )));
        }
        t.value = Some(data);
    }
    Ok(())
}

/// The single data input of a model (training feeds one tensor of examples).
pub fn data_input(graph: &Graph) -> Result<TensorId, Error> {
    match graph.inputs[..] {
        [x] => Ok(x),
        _ => Err(Error::Model(format!(
            "training needs a model with one data input; this one has {}",
            graph.inputs.len()
        ))),
    }
}

/// Index of the largest of each row of `[rows, cols]`.
fn argmax_rows(v: &[f32], cols: usize) -> Vec<usize> {
    v.chunks(cols)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv { (i, x) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

/// Classification accuracy of `forward`'s first output (`[N, classes]` scores) on `data`:
/// (correct, total). The graph is rebatched to the data set size.
pub fn accuracy(forward: &Graph, data: &Dataset) -> Result<(usize, usize), Error> {
    let n = data.len();
    let g = forward.clone().with_batch(n)?;
    let x = data_input(&g)?;
    crate::data::check_input(&g, x, data.features)?;
    let out = g.tensor(g.outputs[0]);
    if out.shape.len() != 2 || out.shape[0] != n {
        return Err(Error::Model(format!(
            "output '{}' has shape {:?}; evaluating accuracy needs [N, classes]",
            out.name, out.shape
        )));
    }
    let classes = out.shape[1];
    let outs = lowmem_exec::run(&g, &[TensorData::F32(data.x.clone())])?;
    let pred = argmax_rows(&outs[0].to_f32(), classes);
    let correct = pred
        .iter()
        .zip(&data.y)
        .filter(|&(&p, &y)| p as i64 == y)
        .count();
    Ok((correct, n))
}

/// Training settings (the step itself: batch, loss, optimizer, remat, comes compiled).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub steps: usize,
    /// Seed of the batch shuffle.
    pub seed: u64,
    /// Evaluate test accuracy every this many steps (0: only at the end).
    pub eval_every: usize,
    pub device: Target,
}

/// What training achieved.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The forward graph (at the compiled batch) with the trained weights.
    pub model: Graph,
    pub final_loss: f32,
    pub correct: usize,
    pub total: usize,
    pub steps: usize,
    pub seconds: f64,
    /// On a GPU: the device memory the step took, measured (the free-memory drop from just
    /// before the executor allocated its blocks to the lowest point after any step).
    pub device_peak_bytes: Option<u64>,
}

/// One training step after another, on either backend.
trait Steps {
    /// Runs the next step; returns its loss.
    fn next(
        &mut self,
        source: &mut dyn BatchSource,
        probe: &mut dyn StepProbe,
    ) -> Result<f32, Error>;
    fn state(&self) -> Result<Vec<Arc<TensorData>>, Error>;
}

impl Steps for Trainer<'_> {
    fn next(
        &mut self,
        source: &mut dyn BatchSource,
        probe: &mut dyn StepProbe,
    ) -> Result<f32, Error> {
        Ok(self.step(source, probe)?)
    }
    fn state(&self) -> Result<Vec<Arc<TensorData>>, Error> {
        Ok(Trainer::state(self))
    }
}

/// The device's free memory, sampled after each step.
struct DeviceMemory<'p> {
    dev: &'static dyn lowmem_cuda::Device,
    inner: &'p mut (dyn StepProbe + Send),
    min_free: usize,
}

impl StepProbe for DeviceMemory<'_> {
    fn before(&mut self) {
        self.inner.before();
    }
    fn after(&mut self) {
        self.inner.after();
        if let Some((free, _)) = self.dev.mem_info() {
            self.min_free = self.min_free.min(free);
        }
    }
}

struct OnDevice<'s, 'p> {
    trainer: lowmem_cuda::train::CudaTrainer<'s, 'static>,
    mem: DeviceMemory<'p>,
}

impl Steps for OnDevice<'_, '_> {
    fn next(
        &mut self,
        source: &mut dyn BatchSource,
        _probe: &mut dyn StepProbe,
    ) -> Result<f32, Error> {
        self.trainer.step(source, &mut self.mem)?;
        Ok(self.trainer.loss()?)
    }
    fn state(&self) -> Result<Vec<Arc<TensorData>>, Error> {
        Ok(self.trainer.state()?)
    }
}

impl TrainReport {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { every: usize },
    Quiet,
}

impl Progress {
    fn new(steps: usize, quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {pos}/{len} loss {msg} {per_sec} [{elapsed_precise}<{eta_precise}]",
                )
                .expect("valid template"),
            );
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                every: steps.div_ceil(10).max(1),
            }
        }
    }

    fn step(&self, step: usize, steps: usize, loss: f32, start: Instant) {
        match self {
            Progress::Bar(b) => {
                b.set_message(format!("{loss:.4}"));
                b.set_position(step as u64);
            }
            Progress::Lines { every } => {
                if step.is_multiple_of(*every) || step == steps {
                    let rate = step as f64 / start.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("step {step}/{steps} loss {loss:.4} {rate:.1} steps/s");
                }
            }
            Progress::Quiet => {}
        }
    }

    fn println(&self, line: &str) {
        match self {
            Progress::Bar(b) => b.println(line),
            Progress::Lines { .. } => eprintln!("{line}"),
            Progress::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// Batches of a labelled data set for a training step: a fresh fixed-seed shuffle each
/// epoch, examples gathered straight into the step's input slot.
pub struct DatasetSource<'a> {
    data: &'a Dataset,
    batches: Batches,
}

impl<'a> DatasetSource<'a> {
    pub fn new(data: &'a Dataset, seed: u64) -> DatasetSource<'a> {
        DatasetSource {
            data,
            batches: Batches::new(data.len(), seed),
        }
    }
}

impl BatchSource for DatasetSource<'_> {
    fn fill(&mut self, x: &mut [f32], labels: Option<Labels<'_>>) -> Result<(), String> {
        let f = self.data.features;
        if f == 0 || !x.len().is_multiple_of(f) || x.len() / f > self.data.len() {
            return Err(format!(
                "{} values do not hold whole batches of {f}-feature examples (at most {})",
                x.len(),
                self.data.len()
            ));
        }
        let n = x.len() / f;
        let idx = self.batches.next_batch(n);
        for (row, &i) in x.chunks_exact_mut(f).zip(idx) {
            row.copy_from_slice(&self.data.x[i * f..(i + 1) * f]);
        }
        match labels {
            Some(Labels::Classes(y)) if y.len() == n => {
                for (y, &i) in y.iter_mut().zip(idx) {
                    *y = self.data.y[i];
                }
            }
            Some(Labels::Targets(t)) if t.len() == n * self.data.classes => {
                t.fill(0.0);
                for (r, &i) in idx.iter().enumerate() {
                    t[r * self.data.classes + self.data.y[i] as usize] = 1.0;
                }
            }
            Some(_) => {
                return Err(format!(
                    "the labels do not fit {n} examples of {} classes",
                    self.data.classes
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// Trains the compiled step `step` on `train` inside its arena (its state is updated to
/// the trained values), reporting accuracy on `test`. `probe` runs around each step.
pub fn train(
    step: &mut CompiledStep,
    train: &Dataset,
    test: &Dataset,
    config: &TrainConfig,
    probe: &mut (dyn StepProbe + Send),
    quiet: bool,
) -> Result<TrainReport, Error> {
    if step.batch == 0 || step.batch > train.len() {
        return Err(Error::Usage(format!(
            "the batch must be in 1..={} (the training set size), got {}",
            train.len(),
            step.batch
        )));
    }
    let x = data_input(&step.forward)?;
    crate::data::check_input(&step.forward, x, train.features)?;
    let mut source = DatasetSource::new(train, config.seed);
    let progress = Progress::new(config.steps, quiet);
    let mut eval_time = 0.0;
    let mut loss = f32::NAN;
    let now: &CompiledStep = step;
    let mut run_loop =
        |trainer: &mut dyn Steps, probe: &mut dyn StepProbe, start: Instant| -> Result<(), Error> {
            for k in 1..=config.steps {
                loss = trainer.next(&mut source, probe)?;
                if !loss.is_finite() {
                    progress.finish();
                    return Err(Error::Training(format!(
                        "the loss diverged to {loss} at step {k} (try a smaller --lr)"
                    )));
                }
                progress.step(k, config.steps, loss, start);
                if config.eval_every > 0 && k.is_multiple_of(config.eval_every) && k < config.steps
                {
                    let t = Instant::now();
                    let mut at = now.clone();
                    for (s, v) in at.state.iter_mut().zip(trainer.state()?) {
                        s.value = v;
                    }
                    let (c, n) = accuracy(&at.trained_forward(None)?, test)?;
                    progress.println(&format!(
                        "step {k}/{}: test accuracy {:.1}% ({c}/{n})",
                        config.steps,
                        100.0 * c as f64 / n as f64
                    ));
                    eval_time += t.elapsed().as_secs_f64();
                }
            }
            Ok(())
        };
    let start;
    let mut device_peak_bytes = None;
    let state = match config.device {
        Target::Cpu => {
            let mut trainer = Trainer::with_hook(now, || probe.before_blocks())?;
            start = Instant::now();
            // The whole loop runs on a thread of the kernels' pool: no step allocates.
            lowmem_exec::in_pool(|| run_loop(&mut trainer, probe, start))?;
            Steps::state(&trainer)?
        }
        Target::Cuda => {
            let dev: &'static dyn lowmem_cuda::Device = crate::device::gpu()?;
            probe.before_blocks();
            let (baseline, _) = dev.mem_info().unwrap_or((0, 0));
            let trainer = lowmem_cuda::train::CudaTrainer::new(now, dev)?;
            let mut on = OnDevice {
                trainer,
                mem: DeviceMemory {
                    dev,
                    inner: probe,
                    min_free: baseline,
                },
            };
            start = Instant::now();
            run_loop(&mut on, &mut lowmem_exec::train::NoProbe, start)?;
            device_peak_bytes = Some(baseline.saturating_sub(on.mem.min_free) as u64);
            on.state()?
        }
    };
    let seconds = start.elapsed().as_secs_f64() - eval_time;
    progress.finish();
    for (s, v) in step.state.iter_mut().zip(state) {
        s.value = v;
    }
    let trained = step.trained_forward(None)?;
    let (correct, total) = accuracy(&trained, test)?;
    Ok(TrainReport {
        model: trained,
        final_loss: loss,
        correct,
        total,
        steps: config.steps,
        seconds,
        device_peak_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax_rows(&[0.0, 2.0, 2.0, 5.0, 1.0, 0.0], 3), [1, 0]);
    }
}
