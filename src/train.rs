//! `lowmem train` and `lowmem grad`: the training loop over a [`TrainingGraph`] and the
//! helpers around it (feeding state, evaluating, writing weights back into the forward graph).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use lowmem_autodiff::{Loss, Optimizer, StateKind, TrainingGraph, training_step};
use lowmem_ir::{DType, Graph, TensorData, TensorId};

use crate::Error;
use crate::data::{Batches, Dataset, one_hot};

/// Sets the value of each named weight of `graph` (by tensor name), checking dtype and size.
pub fn set_weights<'a>(
    graph: &mut Graph,
    values: impl IntoIterator<Item = (&'a str, Arc<TensorData>)>,
) -> Result<(), Error> {
    for (name, data) in values {
        let id = graph
            .tensor_id(name)
            .ok_or_else(|| Error::Usage(format!("the model has no weight '{name}'")))?;
        let t = &mut graph.tensors[id.index()];
        if t.value.is_none() {
            return Err(Error::Usage(format!(
                "'{name}' is not a weight of the model"
            )));
        }
        if t.dtype != data.dtype() || t.numel() != data.len() {
            return Err(Error::Usage(format!(
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
        _ => Err(Error::Usage(format!(
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
        return Err(Error::Usage(format!(
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

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch: usize,
    pub optimizer: Optimizer,
    pub loss: Loss,
    pub seed: u64,
    /// Evaluate test accuracy every this many steps (0: only at the end).
    pub eval_every: usize,
}

/// What training achieved.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The forward graph (at its original batch) with the trained weights.
    pub model: Graph,
    pub final_loss: f32,
    pub correct: usize,
    pub total: usize,
    pub steps: usize,
    pub seconds: f64,
}

impl TrainReport {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { every: usize },
}

impl Progress {
    fn new(steps: usize) -> Progress {
        if std::io::stderr().is_terminal() {
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
        }
    }

    fn println(&self, line: &str) {
        match self {
            Progress::Bar(b) => b.println(line),
            Progress::Lines { .. } => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// The forward graph (at its original batch) carrying the parameters and running statistics
/// of the current training state.
fn trained_model(model: &Graph, tg: &TrainingGraph, state: &[TensorData]) -> Result<Graph, Error> {
    let mut g = model.clone();
    let updates: Vec<(&str, Arc<TensorData>)> = tg
        .state
        .iter()
        .zip(state)
        .filter(|(s, _)| {
            matches!(
                s.kind,
                StateKind::Parameter | StateKind::RunningMean | StateKind::RunningVar
            )
        })
        .map(|(s, v)| {
            // `of` names the forward weight; fall back to the state's own name.
            let name = if g.tensor_id(&s.of).is_some() {
                s.of.as_str()
            } else {
                s.name.as_str()
            };
            (name, Arc::new(v.clone()))
        })
        .collect();
    set_weights(&mut g, updates)?;
    Ok(g)
}

/// Trains `model` (its batch is rewritten to `config.batch`) on `train`, reporting accuracy
/// on `test`.
pub fn train(
    model: &Graph,
    train: &Dataset,
    test: &Dataset,
    config: &TrainConfig,
) -> Result<TrainReport, Error> {
    if config.batch == 0 || config.batch > train.len() {
        return Err(Error::Usage(format!(
            "--batch must be in 1..={} (the training set size), got {}",
            train.len(),
            config.batch
        )));
    }
    let forward = model.clone().with_batch(config.batch)?;
    let x = data_input(&forward)?;
    crate::data::check_input(&forward, x, train.features)?;
    let output = *forward
        .outputs
        .first()
        .ok_or_else(|| Error::Usage("the model has no outputs".into()))?;
    let tg = training_step(&forward, output, config.loss, &config.optimizer)?;

    // Where each graph input comes from.
    enum Feed {
        Data,
        Labels,
        Step,
        State(usize),
    }
    let state_of: HashMap<TensorId, usize> = tg
        .state
        .iter()
        .enumerate()
        .map(|(k, s)| (s.input, k))
        .collect();
    let feeds: Vec<Feed> = tg
        .graph
        .inputs
        .iter()
        .map(|&i| {
            if tg.data.contains(&i) {
                Ok(Feed::Data)
            } else if tg.labels == Some(i) {
                Ok(Feed::Labels)
            } else if tg.step == i {
                Ok(Feed::Step)
            } else if let Some(&k) = state_of.get(&i) {
                Ok(Feed::State(k))
            } else {
                Err(Error::Usage(format!(
                    "training graph input '{}' is neither data, labels, step nor state",
                    tg.graph.tensor(i).name
                )))
            }
        })
        .collect::<Result<_, _>>()?;
    let labels_onehot = tg
        .labels
        .map(|l| tg.graph.tensor(l))
        .filter(|t| t.dtype != DType::I64)
        .map(|t| t.shape.last().copied().unwrap_or(1));

    let mut state: Vec<TensorData> = tg.state.iter().map(|s| (*s.init).clone()).collect();
    let mut batches = Batches::new(train.len(), config.seed);
    let progress = Progress::new(config.steps);
    let start = Instant::now();
    let mut eval_time = 0.0;
    let mut loss = f32::NAN;
    for step in 1..=config.steps {
        let (bx, by) = train.gather(batches.next_batch(config.batch));
        let mut bx = Some(TensorData::F32(bx));
        let mut by = Some(match labels_onehot {
            Some(classes) => one_hot(&by, classes),
            None => TensorData::I64(by),
        });
        let mut taken: Vec<Option<TensorData>> =
            std::mem::take(&mut state).into_iter().map(Some).collect();
        let inputs: Vec<TensorData> = feeds
            .iter()
            .map(|f| match f {
                Feed::Data => bx.take().expect("one data input"),
                Feed::Labels => by.take().expect("one labels input"),
                Feed::Step => TensorData::I64(vec![step as i64]),
                Feed::State(k) => taken[*k].take().expect("each state fed once"),
            })
            .collect();
        let mut outs = lowmem_exec::run(&tg.graph, &inputs)?.into_iter();
        loss = outs
            .next()
            .map(|l| l.to_f32().first().copied().unwrap_or(f32::NAN))
            .unwrap_or(f32::NAN);
        state = outs.collect();
        if state.len() != tg.state.len() {
            return Err(Error::Usage(format!(
                "the training graph gave {} state outputs for {} states",
                state.len(),
                tg.state.len()
            )));
        }
        if !loss.is_finite() {
            progress.finish();
            return Err(Error::Usage(format!(
                "the loss diverged to {loss} at step {step} (try a smaller --lr)"
            )));
        }
        progress.step(step, config.steps, loss, start);
        if config.eval_every > 0 && step.is_multiple_of(config.eval_every) && step < config.steps {
            let t = Instant::now();
            let (c, n) = accuracy(&trained_model(model, &tg, &state)?, test)?;
            progress.println(&format!(
                "step {step}/{}: test accuracy {:.1}% ({c}/{n})",
                config.steps,
                100.0 * c as f64 / n as f64
            ));
            eval_time += t.elapsed().as_secs_f64();
        }
    }
    let seconds = start.elapsed().as_secs_f64() - eval_time;
    progress.finish();
    let trained = trained_model(model, &tg, &state)?;
    let (correct, total) = accuracy(&trained, test)?;
    Ok(TrainReport {
        model: trained,
        final_loss: loss,
        correct,
        total,
        steps: config.steps,
        seconds,
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
