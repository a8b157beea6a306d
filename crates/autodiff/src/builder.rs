//! Building the training graph: replaying the forward pass (with training semantics where
//! asked), attaching the loss, and the reverse sweep that accumulates gradients.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lowmem_ir::{DType, Graph, NodeId, Op, SoftmaxAttrs, TensorData, TensorId, TensorKind};

use crate::sliceout::{Cut, SlicePlan};
use crate::{AutodiffError, Loss, Mode, StateKind};

pub(crate) struct Builder {
    pub g: Graph,
    mode: Mode,
    /// Forward tensor -> tensor in `g`.
    map: Vec<Option<TensorId>>,
    /// Whether a tensor of `g` depends on a differentiated weight.
    requires: Vec<bool>,
    pub step: Option<TensorId>,
    /// (forward weight, input, updated output, kind) of each BatchNorm running statistic.
    pub running_stats: Vec<(TensorId, TensorId, TensorId, StateKind)>,
    names: HashSet<String>,
    counter: usize,
    /// Per node of `g`: the forward node whose gradient rule emitted it (set by `backward`).
    pub backward_of: Vec<Option<NodeId>>,
    /// SliceOut's changes to the replay (training mode).
    pub slice: SlicePlan,
    /// (tensor, axis, seed) -> its window, so a weight read twice is sliced once.
    windows: HashMap<(TensorId, usize, u64), TensorId>,
}

/// The tensor the loss reads, and whether the output's Softmax was fused into the loss.
pub(crate) fn loss_input(
    fwd: &Graph,
    output: TensorId,
    loss: Loss,
) -> Result<(TensorId, bool), AutodiffError> {
    if !fwd.outputs.contains(&output) && fwd.kind(output) != TensorKind::Activation {
        return Err(AutodiffError::Loss(format!(
            "'{}' is not an output of the graph",
            fwd.tensor(output).name
        )));
    }
    if loss != Loss::CrossEntropy {
        return Ok((output, false));
    }
    let producers = fwd.producers();
    if let Some(n) = producers[output.index()] {
        let node = fwd.node(n);
        if let Op::Softmax(SoftmaxAttrs { axis, legacy }) = &node.op {
            let shape = &fwd.tensor(output).shape;
            let r = shape.len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            // Fusable when the softmax normalises exactly the class dims (1..).
            let over_classes = ax == 1 && (*legacy || shape[2..].iter().all(|&d| d == 1));
            if over_classes || (ax == r - 1 && r == 2) {
                return Ok((node.inputs[0], true));
            }
        }
    }
    Ok((output, false))
}

impl Builder {
    pub fn new(fwd: &Graph, mode: Mode, name: &str) -> Builder {
        Builder {
            g: Graph::new(name),
            mode,
            map: vec![None; fwd.tensors.len()],
            requires: Vec::new(),
            step: None,
            running_stats: Vec::new(),
            names: fwd.tensors.iter().map(|t| t.name.clone()).collect(),
            counter: 0,
            backward_of: Vec::new(),
            slice: SlicePlan::default(),
            windows: HashMap::new(),
        }
    }

    /// A builder that appends to `g` (every name in it reserved).
    pub fn over(g: Graph) -> Builder {
        let mut names: HashSet<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
        names.extend(g.nodes.iter().map(|n| n.name.clone()));
        Builder {
            mode: Mode::Training,
            map: Vec::new(),
            requires: Vec::new(),
            step: None,
            running_stats: Vec::new(),
            names,
            counter: 0,
            backward_of: Vec::new(),
            slice: SlicePlan::default(),
            windows: HashMap::new(),
            g,
        }
    }

    pub fn map(&self, t: TensorId) -> TensorId {
        self.map[t.index()].expect("forward tensor replayed")
    }

    pub fn is_mapped(&self, t: TensorId) -> bool {
        self.map[t.index()].is_some()
    }

    /// A tensor or node name not used yet (forward names are reserved).
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        while self.names.contains(&name) {
            self.counter += 1;
            name = format!("{base}.{}", self.counter);
        }
        self.names.insert(name.clone());
        name
    }

    fn track(&mut self, ids: &[TensorId], req: bool) {
        for &id in ids {
            if self.requires.len() <= id.index() {
                self.requires.resize(id.index() + 1, false);
            }
            self.requires[id.index()] = req && self.g.tensor(id).dtype.is_float();
        }
    }

    pub fn requires(&self, t: TensorId) -> bool {
        self.requires.get(t.index()).copied().unwrap_or(false)
    }

    /// Appends a node named after `hint` with `n_out` fresh outputs.
    pub fn emit(
        &mut self,
        hint: &str,
        op: Op,
        inputs: &[TensorId],
        n_out: usize,
    ) -> Result<Vec<TensorId>, AutodiffError> {
        let node = self.fresh(hint);
        let outs: Vec<String> = (0..n_out)
            .map(|k| {
                if n_out == 1 {
                    self.fresh(&node)
                } else {
                    self.fresh(&format!("{node}.{k}"))
                }
            })
            .collect();
        let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let req = inputs.iter().any(|&i| self.requires(i));
        let ids = self.g.add_node(node, op, inputs, &outs)?;
        self.track(&ids, req);
        Ok(ids)
    }

    pub fn emit1(
        &mut self,
        hint: &str,
        op: Op,
        inputs: &[TensorId],
    ) -> Result<TensorId, AutodiffError> {
        Ok(self.emit(hint, op, inputs, 1)?[0])
    }

    pub fn constant(
        &mut self,
        hint: &str,
        shape: Vec<usize>,
        data: TensorData,
    ) -> Result<TensorId, AutodiffError> {
        let name = self.fresh(hint);
        let id = self.g.add_weight(name, shape, Arc::new(data))?;
        self.track(&[id], false);
        Ok(id)
    }

    pub fn step_input(&mut self) -> Result<TensorId, AutodiffError> {
        if let Some(s) = self.step {
            return Ok(s);
        }
        let name = self.fresh("step");
        let id = self.g.add_input(name, DType::I64, vec![])?;
        self.track(&[id], false);
        self.step = Some(id);
        Ok(id)
    }

    /// `t` read through SliceOut's window `cut`.
    fn window(&mut self, t: TensorId, cut: Cut) -> Result<TensorId, AutodiffError> {
        if let Some(&w) = self.windows.get(&(t, cut.axis, cut.seed)) {
            return Ok(w);
        }
        let step = self.step_input()?;
        let name = format!("{}.window", self.g.tensor(t).name);
        let w = self.emit1(
            &name,
            Op::SliceWindow {
                axis: cut.axis,
                size: cut.kept,
                seed: cut.seed,
            },
            &[t, step],
        )?;
        self.windows.insert((t, cut.axis, cut.seed), w);
        Ok(w)
    }

    /// Copies the forward nodes that `target` depends on. Weights in `as_input` become graph
    /// inputs (carried state); in training mode BatchNormalization and Dropout switch to their
    /// training forms. Differentiation requirements are seeded by the caller via `backward`.
    pub fn replay(
        &mut self,
        fwd: &Graph,
        target: TensorId,
        as_input: &HashMap<TensorId, StateKind>,
    ) -> Result<(), AutodiffError> {
        // Nodes needed for `target`, found backwards from it.
        let producers = fwd.producers();
        let mut needed = vec![false; fwd.nodes.len()];
        let mut stack = vec![target];
        let mut seen = vec![false; fwd.tensors.len()];
        while let Some(t) = stack.pop() {
            if std::mem::replace(&mut seen[t.index()], true) {
                continue;
            }
            if let Some(n) = producers[t.index()] {
                needed[n.index()] = true;
                stack.extend(fwd.node(n).inputs.iter().copied());
            }
        }
        for &i in &fwd.inputs {
            let t = fwd.tensor(i);
            let id = self.g.add_input(t.name.clone(), t.dtype, t.shape.clone())?;
            self.map[i.index()] = Some(id);
            self.track(&[id], false);
        }
        for w in fwd.weights() {
            if !seen[w.index()] {
                continue;
            }
            let t = fwd.tensor(w);
            let id = if as_input.contains_key(&w) {
                self.g.add_input(t.name.clone(), t.dtype, t.shape.clone())?
            } else {
                self.g.add_weight(
                    t.name.clone(),
                    t.shape.clone(),
                    t.value.clone().expect("weight"),
                )?
            };
            self.map[w.index()] = Some(id);
            self.track(&[id], false);
        }
        for n in fwd.node_ids().filter(|n| needed[n.index()]) {
            let node = fwd.node(n);
            let mut ins: Vec<TensorId> = node.inputs.iter().map(|&i| self.map(i)).collect();
            for (i, t) in ins.iter_mut().enumerate() {
                for cut in self
                    .slice
                    .inputs
                    .get(&(n.index(), i))
                    .cloned()
                    .unwrap_or_default()
                {
                    *t = self.window(*t, cut)?;
                }
            }
            let outs: Vec<&str> = node
                .outputs
                .iter()
                .map(|&o| fwd.tensor(o).name.as_str())
                .collect();
            let ids = match (&node.op, self.mode) {
                (Op::BatchNormalization(a), Mode::Training) => {
                    let mut extra = Vec::new();
                    for suffix in [
                        "saved_mean",
                        "saved_invstd",
                        "running_mean_next",
                        "running_var_next",
                    ] {
                        extra.push(self.fresh(&format!("{}.{suffix}", node.name)));
                    }
                    let mut names = outs.clone();
                    names.extend(extra.iter().map(String::as_str));
                    let ids = self.g.add_node(
                        node.name.clone(),
                        Op::BatchNormTrain(a.clone()),
                        &ins,
                        &names,
                    )?;
                    for (k, kind) in [(3, StateKind::RunningMean), (4, StateKind::RunningVar)] {
                        let w = node.inputs[k];
                        if as_input.contains_key(&w) && !self.running_stats.iter().any(|r| r.0 == w)
                        {
                            self.running_stats.push((w, ins[k], ids[k], kind));
                        }
                    }
                    ids[..1].to_vec()
                }
                (Op::Dropout { .. }, Mode::Training)
                    if self.slice.scales.contains_key(&n.index()) =>
                {
                    let alpha = self.slice.scales[&n.index()];
                    self.g
                        .add_node(node.name.clone(), Op::Scale { alpha }, &ins[..1], &outs)?
                }
                (Op::Dropout { ratio, seed }, Mode::Training) => {
                    if node.outputs.len() > 1 {
                        return Err(AutodiffError::NoGradient {
                            node: node.name.clone(),
                            op: "Dropout".into(),
                            why: "training-mode dropout with a mask output is not supported".into(),
                        });
                    }
                    let step = self.step_input()?;
                    // Distinct nodes get distinct masks even if the file gives them one seed:
                    // mixed with the node's rank among the Dropouts, which rewrites of other
                    // ops (epilogue fusion) leave as it is.
                    let rank = fwd.nodes[..n.index()]
                        .iter()
                        .filter(|m| matches!(m.op, Op::Dropout { .. }))
                        .count();
                    let seed = seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    self.g.add_node(
                        node.name.clone(),
                        Op::DropoutTrain {
                            ratio: *ratio,
                            seed,
                        },
                        &[ins[0], step],
                        &outs,
                    )?
                }
                (op, _) => self
                    .g
                    .add_node(node.name.clone(), op.clone(), &ins, &outs)?,
            };
            for (&o, &id) in node.outputs.iter().zip(&ids) {
                self.map[o.index()] = Some(id);
            }
            let new_ids: Vec<TensorId> = self.g.nodes.last().expect("just added").outputs.clone();
            self.track(&new_ids, false);
        }
        Ok(())
    }

    /// Adds the loss node(s); returns the scalar loss and the labels input if the loss has one.
    pub fn loss(
        &mut self,
        fwd: &Graph,
        loss_in: TensorId,
        fused: bool,
        loss: Loss,
    ) -> Result<(TensorId, Option<TensorId>), AutodiffError> {
        let x = self.map(loss_in);
        let (dtype, shape) = (self.g.tensor(x).dtype, self.g.tensor(x).shape.clone());
        let name = &fwd.tensor(loss_in).name;
        match loss {
            Loss::Sum | Loss::Mean => {
                let a = lowmem_ir::ReduceAttrs {
                    axes: None,
                    keepdims: false,
                };
                let op = if loss == Loss::Sum {
                    Op::ReduceSum(a)
                } else {
                    Op::ReduceMean(a)
                };
                Ok((self.emit1("loss", op, &[x])?, None))
            }
            Loss::Scalar => {
                if shape.iter().product::<usize>() != 1 {
                    return Err(AutodiffError::Loss(format!(
                        "'{name}' has shape {shape:?}, not a scalar"
                    )));
                }
                let t = if shape.is_empty() {
                    self.emit1("loss", Op::Identity, &[x])?
                } else {
                    self.emit1(
                        "loss",
                        Op::Reshape {
                            shape: vec![],
                            allowzero: false,
                        },
                        &[x],
                    )?
                };
                Ok((t, None))
            }
            Loss::CrossEntropy => {
                if shape.len() < 2 || shape[2..].iter().any(|&d| d != 1) {
                    return Err(AutodiffError::Loss(format!(
                        "cross-entropy needs logits [N, C] (or [N, C, 1, ...]); '{name}'{} has shape {shape:?}",
                        if fused {
                            " (the input of the output's Softmax)"
                        } else {
                            ""
                        }
                    )));
                }
                let logits = if shape.len() == 2 {
                    x
                } else {
                    self.emit1(
                        &format!("{name}.as_matrix"),
                        Op::Reshape {
                            shape: vec![shape[0] as i64, shape[1] as i64],
                            allowzero: false,
                        },
                        &[x],
                    )?
                };
                let name = self.fresh("labels");
                let labels = self.g.add_input(name, DType::I64, vec![shape[0]])?;
                self.track(&[labels], false);
                Ok((
                    self.emit1("loss", Op::SoftmaxCrossEntropy, &[logits, labels])?,
                    Some(labels),
                ))
            }
            Loss::Mse => {
                let name = self.fresh("labels");
                let labels = self.g.add_input(name, dtype, shape)?;
                self.track(&[labels], false);
                Ok((self.emit1("loss", Op::MseLoss, &[x, labels])?, Some(labels)))
            }
        }
    }

    /// The reverse sweep from `loss` over every node emitted so far, seeded with `dloss`
    /// (1, or 1/K for one of K micro-batches of a mean loss); returns (weight, gradient) for
    /// each of `wrt` (tensors of `g`), in order.
    pub fn backward(
        &mut self,
        loss: TensorId,
        wrt: &[TensorId],
        dloss: f32,
    ) -> Result<Vec<(TensorId, TensorId)>, AutodiffError> {
        // Requirements: forward from the differentiated weights.
        let n_fwd = self.g.nodes.len();
        let wanted: HashSet<TensorId> = wrt.iter().copied().collect();
        for &w in wrt {
            self.track(&[w], true);
        }
        for n in 0..n_fwd {
            let node = &self.g.nodes[n];
            let req = node.inputs.iter().any(|&i| self.requires(i));
            let outs = node.outputs.clone();
            self.track(&outs, req);
        }
        if !self.requires(loss) {
            return Err(AutodiffError::Loss(
                "the loss does not depend on any weight being differentiated".into(),
            ));
        }
        let mut contrib: HashMap<TensorId, Vec<TensorId>> = HashMap::new();
        let seed = self.constant("loss.seed", vec![], TensorData::F32(vec![dloss]))?;
        contrib.insert(loss, vec![seed]);
        for n in (0..n_fwd).rev() {
            let node = self.g.nodes[n].clone();
            if !node.outputs.iter().any(|o| contrib.contains_key(o)) {
                continue;
            }
            let first = self.g.nodes.len();
            let mut dys = Vec::with_capacity(node.outputs.len());
            for o in &node.outputs {
                dys.push(match contrib.remove(o) {
                    Some(parts) => Some(self.accumulate(*o, parts)?),
                    None => None,
                });
            }
            let needs: Vec<bool> = node.inputs.iter().map(|&i| self.requires(i)).collect();
            if !needs.iter().any(|&x| x) {
                continue;
            }
            let grads = crate::rules::gradient(self, NodeId(n as u32), &node, &dys, &needs);
            self.backward_of.resize(first, None);
            self.backward_of
                .resize(self.g.nodes.len(), Some(NodeId(n as u32)));
            let grads = grads?;
            for ((&i, g), &need) in node.inputs.iter().zip(grads).zip(&needs) {
                if let (Some(g), true) = (g, need) {
                    contrib.entry(i).or_default().push(g);
                }
            }
        }
        let mut out = Vec::with_capacity(wrt.len());
        for &w in wrt {
            let g = match contrib.remove(&w) {
                Some(parts) => self.accumulate(w, parts)?,
                None => {
                    // The loss does not read this weight: its gradient is zero.
                    let t = self.g.tensor(w);
                    let (shape, dtype, n) = (t.shape.clone(), t.dtype, t.numel());
                    let name = format!("{}.grad", t.name);
                    self.constant(&name, shape, TensorData::zeros(dtype, n))?
                }
            };
            debug_assert!(wanted.contains(&w));
            // Name each weight's gradient after the weight, where that name is free and the
            // tensor is the gradient alone (not also a weight's own value).
            let name = format!("{}.grad", self.g.tensor(w).name);
            if g != w && !self.names.contains(&name) && self.g.tensor(g).value.is_none() {
                self.names.insert(name.clone());
                self.g.rename(g, name)?;
            }
            out.push((w, g));
        }
        Ok(out)
    }

    /// One gradient from its contributions (summed when there are several).
    fn accumulate(&mut self, t: TensorId, parts: Vec<TensorId>) -> Result<TensorId, AutodiffError> {
        if parts.len() == 1 {
            return Ok(parts[0]);
        }
        let name = format!("{}.grad", self.g.tensor(t).name);
        self.emit1(&name, Op::Sum, &parts)
    }

    /// Forward activations (produced before `backward_start`) that backward nodes read.
    pub fn saved(&self, backward_start: usize) -> Vec<TensorId> {
        saved_of(&self.g, backward_start)
    }
}

/// The tensors produced before `backward_start` (forward pass and loss) that nodes from
/// `backward_start` on read, in first-read order.
pub(crate) fn saved_of(g: &Graph, backward_start: usize) -> Vec<TensorId> {
    let producers = g.producers();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for node in &g.nodes[backward_start..] {
        for &i in &node.inputs {
            let fwd = producers[i.index()].is_some_and(|p| p.index() < backward_start);
            if fwd && seen.insert(i) {
                out.push(i);
            }
        }
    }
    out
}
