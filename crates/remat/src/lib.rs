//! Rematerialisation (checkpointing): a forward graph cut into a chain of stages
//! ([`stages()`], [`chain()`]: the cost model; [`chain_with_options`]: with record options
//! inside each stage), and schedules over that chain — store-all,
//! Chen's sqrt and log schemes, Revolve, and Rotor's optimal dynamic programme — as pure
//! algorithms over the cost model, with [`Schedule::simulate`] the one source of truth for
//! their memory and compute.
//!
//! # Model
//!
//! A [`Chain`] has `n` stages `0..n`. Stage `i` reads the boundary tensor
//! `X_i` (`input_bytes[i]`) and produces `X_{i+1}`; `X_n` is the loss input.
//! Buffers that can be live:
//!
//! * `X_j` — a boundary activation, `input_bytes[j]` bytes. `X_0` is live at
//!   the start (the network input) and counts towards memory.
//! * `R_i` — the record of stage `i`, `saved_bytes[i]` bytes: everything a
//!   recording forward keeps for `B_i`, **including the output `X_{i+1}`**
//!   and **excluding the input `X_i`** (so `saved_bytes[i] >= input_bytes[i+1]`).
//!   While `R_i` is live, `X_{i+1}` is *available* (inside the record).
//! * `δ_j` — the gradient of `X_j`, `input_bytes[j]` bytes; at most one live.
//!
//! Operations ([`Action`]):
//!
//! * `Forward { stage: i, record: false }` (F_i^∅): needs `X_i` available;
//!   creates the buffer `X_{i+1}` (error if that buffer is already live).
//!   Transient peak: live + `x_{i+1}` + `fwd_tmp[i]`.
//! * `Forward { stage: i, record: true }` (F_i^all): needs `X_i` available;
//!   creates `R_i`. Transient peak: live + `a_i` + `fwd_tmp[i]`.
//! * `Loss`: needs `X_n` available and no gradient yet; creates `δ_n`.
//!   Peak: live + `x_n`. Cost 0.
//! * `Backward { stage: i }` (B_i): needs `R_i`, `δ_{i+1}` and `X_i` available;
//!   creates `δ_i`, then frees `R_i` and `δ_{i+1}`.
//!   Transient peak: live + `x_i` + `bwd_tmp[i]`.
//! * `Free { activation: j }`: frees the buffer `X_j` (must be live).
//!
//! **Record options** (Rockmate's two levels): a stage may offer other records than the full
//! one ([`RecordOption`], [`Chain::options`]; built by [`chain_with_options`], which solves the
//! node-level problem inside each stage). A schedule picks one per stage
//! ([`Schedule::options`]; a stage is recorded once, as its record lives until its backward):
//! `F_i^all` then keeps `a_i^o` bytes with forward temporary `ft_i^o`, and `B_i` has backward
//! temporary `bt_i^o` and costs `bwd[i] + recompute_i^o` (it re-runs what the record
//! dropped). Option 0 is the full record at no extra cost.
//!
//! A schedule is valid when every op's requirements hold and it ends with
//! `δ_0` live (so every `B_i` ran exactly once, in order `n-1, …, 0`).
//! Peak memory = the maximum over time of the bytes of live buffers plus the
//! current op's transient bytes. Compute = Σ fwd over every forward op
//! (recomputations included) + Σ bwd over backward ops.

mod inner;
mod rewrite;
mod rotor;
mod schemes;
mod stages;

pub use inner::{InnerOptions, SolveLimits, StageOption, StageSolve, chain_with_options};
pub use rewrite::{Remat, checkpoints, rematerialize, rematerialize_with};

/// Why a chain, a schedule or a rewrite request is invalid.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RematError {
    /// A [`Chain`] with no stage.
    #[error("chain has no stage")]
    EmptyChain,
    /// The per-stage vectors of a [`Chain`] disagree in length.
    #[error(
        "chain length mismatch: fwd {fwd}, bwd {bwd}, saved {saved}, fwd_tmp {fwd_tmp}, \
         bwd_tmp {bwd_tmp}, input {input} (want n + 1)"
    )]
    ChainLengths {
        fwd: usize,
        bwd: usize,
        saved: usize,
        fwd_tmp: usize,
        bwd_tmp: usize,
        input: usize,
    },
    /// `saved_bytes[stage] < input_bytes[stage + 1]`.
    #[error(
        "stage {stage}: saved_bytes {saved} < output bytes {output} (the record includes the output)"
    )]
    RecordSmallerThanOutput {
        stage: usize,
        saved: u64,
        output: u64,
    },
    /// Action `index` of a schedule cannot run ([`Schedule::simulate`]).
    #[error("action {index} ({action:?}): {reason}")]
    InvalidAction {
        index: usize,
        action: Action,
        reason: String,
    },
    /// A schedule that does not end with the input gradient `δ_0` live.
    #[error("schedule ends with gradient {}, expected δ_0", match .gradient { Some(j) => format!("δ_{j}"), None => "none".into() })]
    Unfinished { gradient: Option<usize> },
    /// [`rematerialize`]: `backward_of` does not have one entry per node.
    #[error("backward_of has {entries} entries for {nodes} nodes")]
    BackwardOfLength { entries: usize, nodes: usize },
    /// [`rematerialize`] or a cost model without stages.
    #[error("no stages")]
    NoStages,
    /// [`rematerialize`]: a schedule action names a stage that does not exist.
    #[error("action {index}: stage {stage} out of range (n = {n})")]
    StageOutOfRange {
        index: usize,
        stage: usize,
        n: usize,
    },
    /// [`rematerialize`]: a stage whose backward runs twice.
    #[error("stage {stage} runs backward twice")]
    BackwardTwice { stage: usize },
    /// [`rematerialize`]: a stage whose backward runs before any forward of it.
    #[error("stage {stage} runs backward before forward")]
    BackwardBeforeForward { stage: usize },
    /// [`rematerialize`]: a stage whose backward never runs.
    #[error("stage {stage} never runs backward")]
    NeverBackward { stage: usize },
    /// [`rematerialize_with`]: the schedule records a stage with an option it lacks.
    #[error("stage {stage} has no record option {option}")]
    NoOption { stage: usize, option: usize },
    /// The rewritten graph would have more than 2^32 tensors.
    #[error("rewritten graph: more than 2^32 tensors")]
    TooManyTensors,
    /// The rewritten graph could not be built.
    #[error("rewritten graph: {0}")]
    Graph(#[from] lowmem_ir::IrError),
}

pub use rotor::{InfeasibleError, min_peak_budget, optimal};
pub use schemes::{
    chen_sqrt, chen_sqrt_best, chen_sqrt_thresholds, log_scheme, revolve, revolve_forward_count,
    store_all,
};
pub use stages::{
    Stage, chain, chain_of_step, chain_with, cut_points, stage_backward_reads, stage_of, stages,
    stages_from, works_for,
};

/// The index of a stage in a chain (`0..n`), where a stage index sits next to node and
/// tensor indices (e.g. [`stage_of`]). Schedules ([`Action`]) use plain `usize` stage numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId(pub u32);

impl StageId {
    /// The stage's position in the chain.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Another way to record a stage (Rockmate's options): the recording forward keeps only part
/// of what the stage's backward reads, and the backward first recomputes the rest from the
/// stage input and the kept tensors. The full record ([`Chain::saved_bytes`] and the stage's
/// temporaries, no extra cost) is option 0; these are options `1..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordOption {
    /// Bytes of the record (kept tensors and the output `X_{i+1}`).
    pub saved_bytes: u64,
    /// Transient bytes of the recording forward beyond the record.
    pub fwd_tmp: u64,
    /// Transient bytes of the backward beyond the record, `X_i` and `δ_{i+1}`: the
    /// recomputed tensors and the internal gradients while they are live.
    pub bwd_tmp: u64,
    /// Cost of the recomputation inside the backward (added to `bwd[i]`).
    pub recompute: u64,
}

/// A chain of `n` stages with its cost model. See the crate docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Forward cost of each stage (len `n`).
    pub fwd: Vec<u64>,
    /// Backward cost of each stage (len `n`).
    pub bwd: Vec<u64>,
    /// Bytes of the boundary tensors `x_0..=x_n` (len `n + 1`); `x_n` is the loss input.
    pub input_bytes: Vec<u64>,
    /// Bytes `a_i` of the record of stage `i` (len `n`): includes the output
    /// `x_{i+1}`, excludes the input `x_i`.
    pub saved_bytes: Vec<u64>,
    /// Extra transient bytes while a forward of stage `i` runs (len `n`).
    pub fwd_tmp: Vec<u64>,
    /// Extra transient bytes while the backward of stage `i` runs (len `n`).
    pub bwd_tmp: Vec<u64>,
    /// Per stage, the record options beyond the full record (len `n`; most are empty).
    /// Option `o >= 1` of stage `i` is `options[i][o - 1]`.
    pub options: Vec<Vec<RecordOption>>,
}

impl Chain {
    /// A chain without temporaries. Validates lengths and `a_i >= x_{i+1}`.
    pub fn new(
        fwd: Vec<u64>,
        bwd: Vec<u64>,
        input_bytes: Vec<u64>,
        saved_bytes: Vec<u64>,
    ) -> Result<Chain, RematError> {
        let n = fwd.len();
        let c = Chain {
            fwd,
            bwd,
            input_bytes,
            saved_bytes,
            fwd_tmp: vec![0; n],
            bwd_tmp: vec![0; n],
            options: vec![Vec::new(); n],
        };
        c.validate()?;
        Ok(c)
    }

    /// Sets the record options beyond the full record (validated).
    pub fn with_options(mut self, options: Vec<Vec<RecordOption>>) -> Result<Chain, RematError> {
        self.options = options;
        self.validate()?;
        Ok(self)
    }

    /// Record option `o` of stage `i` (0: the full record).
    pub fn record(&self, i: usize, o: usize) -> RecordOption {
        if o == 0 {
            RecordOption {
                saved_bytes: self.saved_bytes[i],
                fwd_tmp: self.fwd_tmp[i],
                bwd_tmp: self.bwd_tmp[i],
                recompute: 0,
            }
        } else {
            self.options[i][o - 1]
        }
    }

    /// Number of record options of stage `i`, the full record included.
    pub fn option_count(&self, i: usize) -> usize {
        1 + self.options[i].len()
    }

    /// Sets the forward/backward temporaries (validated).
    pub fn with_temporaries(
        mut self,
        fwd_tmp: Vec<u64>,
        bwd_tmp: Vec<u64>,
    ) -> Result<Chain, RematError> {
        self.fwd_tmp = fwd_tmp;
        self.bwd_tmp = bwd_tmp;
        self.validate()?;
        Ok(self)
    }

    /// `n` stages, every cost 1, every boundary 1 byte, every record 1 byte
    /// (the record is just the output).
    pub fn unit(n: usize) -> Chain {
        Chain::new(vec![1; n], vec![1; n], vec![1; n + 1], vec![1; n]).expect("valid unit chain")
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.fwd.len()
    }

    /// Whether the chain has no stage (never valid).
    pub fn is_empty(&self) -> bool {
        self.fwd.is_empty()
    }

    /// Checks lengths, `n >= 1` and `saved_bytes[i] >= input_bytes[i + 1]`.
    pub fn validate(&self) -> Result<(), RematError> {
        let n = self.fwd.len();
        if n == 0 {
            return Err(RematError::EmptyChain);
        }
        if self.bwd.len() != n
            || self.saved_bytes.len() != n
            || self.fwd_tmp.len() != n
            || self.bwd_tmp.len() != n
            || self.input_bytes.len() != n + 1
            || self.options.len() != n
        {
            return Err(RematError::ChainLengths {
                fwd: n,
                bwd: self.bwd.len(),
                saved: self.saved_bytes.len(),
                fwd_tmp: self.fwd_tmp.len(),
                bwd_tmp: self.bwd_tmp.len(),
                input: self.input_bytes.len(),
            });
        }
        for i in 0..n {
            for o in 0..self.option_count(i) {
                let saved = self.record(i, o).saved_bytes;
                if saved < self.input_bytes[i + 1] {
                    return Err(RematError::RecordSmallerThanOutput {
                        stage: i,
                        saved,
                        output: self.input_bytes[i + 1],
                    });
                }
            }
        }
        Ok(())
    }
}

/// One operation of a schedule. See the crate docs for semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Run stage `stage` forward; `record` keeps its record `R_stage`,
    /// otherwise only its output `X_{stage+1}` is kept.
    Forward { stage: usize, record: bool },
    /// Create the loss gradient `δ_n` from `X_n`.
    Loss,
    /// Run stage `stage` backward (consumes `R_stage` and `δ_{stage+1}`).
    Backward { stage: usize },
    /// Free the boundary buffer `X_activation`.
    Free { activation: usize },
}

/// Detailed result of [`Schedule::simulate_detailed`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Peak bytes (live buffers + transient of the running op).
    pub peak_bytes: u64,
    /// Σ forward costs (with recomputation) + Σ backward costs.
    pub compute: u64,
    /// Number of non-recording forwards (F^∅, "advances").
    pub forwards_plain: u64,
    /// Number of recording forwards (F^all).
    pub forwards_recorded: u64,
    /// Largest number of live `X_j` buffers when a forward, loss or backward
    /// starts (checkpoints + the current boundary; the output being created is
    /// not counted).
    pub max_live_activations: usize,
}

/// A sequence of operations, and the record option of each stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub ops: Vec<Action>,
    /// Per stage, the [`RecordOption`] its recording forward uses (a stage is recorded once:
    /// a record lives until the stage's backward). Empty: the full record everywhere.
    pub options: Vec<usize>,
}

impl Schedule {
    /// A schedule recording every stage in full.
    pub fn new(ops: Vec<Action>) -> Schedule {
        Schedule {
            ops,
            options: Vec::new(),
        }
    }

    /// The record option of stage `i`.
    pub fn option(&self, i: usize) -> usize {
        self.options.get(i).copied().unwrap_or(0)
    }

    /// Checks validity; returns `(peak_bytes, compute)`.
    pub fn simulate(&self, chain: &Chain) -> Result<(u64, u64), RematError> {
        self.simulate_detailed(chain)
            .map(|s| (s.peak_bytes, s.compute))
    }

    /// Checks validity and returns detailed statistics. The single source of
    /// truth for memory and compute of every scheme.
    pub fn simulate_detailed(&self, chain: &Chain) -> Result<SimStats, RematError> {
        chain.validate()?;
        let n = chain.len();
        let x = &chain.input_bytes;
        let mut x_live = vec![false; n + 1];
        let mut r_live = vec![false; n];
        let mut grad: Option<usize> = None;
        x_live[0] = true;
        let mut live_x_count = 1usize;
        let mut live = x[0];
        let mut st = SimStats {
            peak_bytes: live,
            max_live_activations: 1,
            ..SimStats::default()
        };
        let avail =
            |j: usize, x_live: &[bool], r_live: &[bool]| x_live[j] || (j > 0 && r_live[j - 1]);
        for (k, op) in self.ops.iter().enumerate() {
            let err = |reason: String| {
                Err(RematError::InvalidAction {
                    index: k,
                    action: *op,
                    reason,
                })
            };
            if !matches!(op, Action::Free { .. }) {
                st.max_live_activations = st.max_live_activations.max(live_x_count);
            }
            match *op {
                Action::Forward { stage: i, record } => {
                    if i >= n {
                        return err(format!("stage out of range (n = {n})"));
                    }
                    if !avail(i, &x_live, &r_live) {
                        return err(format!("input X_{i} not available"));
                    }
                    st.compute += chain.fwd[i];
                    if record {
                        if r_live[i] {
                            return err(format!("R_{i} already live"));
                        }
                        let o = self.option(i);
                        if o >= chain.option_count(i) {
                            return err(format!("stage {i} has no record option {o}"));
                        }
                        let r = chain.record(i, o);
                        st.peak_bytes = st.peak_bytes.max(live + r.saved_bytes + r.fwd_tmp);
                        r_live[i] = true;
                        live += r.saved_bytes;
                        st.forwards_recorded += 1;
                    } else {
                        if x_live[i + 1] {
                            return err(format!("X_{} already live", i + 1));
                        }
                        st.peak_bytes = st.peak_bytes.max(live + x[i + 1] + chain.fwd_tmp[i]);
                        x_live[i + 1] = true;
                        live_x_count += 1;
                        live += x[i + 1];
                        st.forwards_plain += 1;
                    }
                }
                Action::Loss => {
                    if grad.is_some() {
                        return err("a gradient is already live or the loss ran".into());
                    }
                    if !avail(n, &x_live, &r_live) {
                        return err(format!("loss input X_{n} not available"));
                    }
                    live += x[n];
                    st.peak_bytes = st.peak_bytes.max(live);
                    grad = Some(n);
                }
                Action::Backward { stage: i } => {
                    if i >= n {
                        return err(format!("stage out of range (n = {n})"));
                    }
                    if grad != Some(i + 1) {
                        return err(format!("needs δ_{}, live gradient is {grad:?}", i + 1));
                    }
                    if !r_live[i] {
                        return err(format!("record R_{i} not live"));
                    }
                    if !avail(i, &x_live, &r_live) {
                        return err(format!("input X_{i} not available"));
                    }
                    let r = chain.record(i, self.option(i));
                    st.peak_bytes = st.peak_bytes.max(live + x[i] + r.bwd_tmp);
                    live = live + x[i] - x[i + 1] - r.saved_bytes;
                    r_live[i] = false;
                    grad = Some(i);
                    st.compute += chain.bwd[i] + r.recompute;
                }
                Action::Free { activation: j } => {
                    if j > n || !x_live[j] {
                        return err(format!("X_{j} not live"));
                    }
                    x_live[j] = false;
                    live_x_count -= 1;
                    live -= x[j];
                }
            }
        }
        if grad != Some(0) {
            return Err(RematError::Unfinished { gradient: grad });
        }
        Ok(st)
    }
}

/// Appends F_c^∅ … F_{e-1}^∅ starting from the available `X_c`, freeing every
/// intermediate boundary (but not `X_c` nor the final `X_e`).
pub(crate) fn advance(ops: &mut Vec<Action>, c: usize, e: usize) {
    for k in c..e {
        ops.push(Action::Forward {
            stage: k,
            record: false,
        });
        if k > c {
            ops.push(Action::Free { activation: k });
        }
    }
}

/// Appends the "turn" of stage `i`: F_i^all, the loss if `i` is the last
/// stage, then B_i.
pub(crate) fn youturn(ops: &mut Vec<Action>, i: usize, n: usize) {
    ops.push(Action::Forward {
        stage: i,
        record: true,
    });
    if i + 1 == n {
        ops.push(Action::Loss);
    }
    ops.push(Action::Backward { stage: i });
}
