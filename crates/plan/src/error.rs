//! Errors of the packing checker, the CSV reader and the plan verifier. Each names the
//! buffer, line, tensor, step or byte range it is about.

use lowmem_ir::TensorId;
use lowmem_schedule::{Kind, LiveRange, StepId};
use thiserror::Error;

use crate::pack::BufferId;
use crate::plan::ALIGN;

/// A malformed MiniMalloc CSV file ([`read_csv`](crate::read_csv)); lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsvError {
    #[error("empty input: expected header id,lower,upper,size")]
    Empty,
    #[error("line {line}: expected header id,lower,upper,size, found {found:?}")]
    Header { line: usize, found: String },
    #[error("line {line}: expected 4 fields, found {found}")]
    Fields { line: usize, found: usize },
    #[error("line {line}: bad {field} {value:?}: {reason}")]
    Number {
        line: usize,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("line {line}: lower {lower} > upper {upper}")]
    Range { line: usize, lower: u64, upper: u64 },
}

/// A buffer placed at a byte offset, as an overlap reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub buffer: BufferId,
    pub lower: u64,
    pub upper: u64,
    pub offset: u64,
    pub size: u64,
}

impl std::fmt::Display for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "buffer {} (live [{}, {}), bytes [{}, {}))",
            self.buffer,
            self.lower,
            self.upper,
            self.offset,
            self.offset.saturating_add(self.size)
        )
    }
}

/// An invalid packing ([`verify`](crate::verify)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PackError {
    #[error("{buffers} buffers but {offsets} offsets")]
    Count { buffers: usize, offsets: usize },
    #[error("buffer {buffer}: lower {lower} > upper {upper}")]
    Range {
        buffer: BufferId,
        lower: u64,
        upper: u64,
    },
    #[error("buffer {buffer}: offset {offset} is not a multiple of {align}")]
    Misaligned {
        buffer: BufferId,
        offset: u64,
        align: u64,
    },
    #[error("buffer {buffer}: offset {offset} + size {size} overflows u64")]
    Overflow {
        buffer: BufferId,
        offset: u64,
        size: u64,
    },
    #[error("overlap: {0} and {1}")]
    Overlap(Placed, Placed),
}

/// What occupies a byte range of the arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Occupant {
    Tensor { tensor: TensorId, name: String },
    Workspace { step: StepId },
}

impl std::fmt::Display for Occupant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Occupant::Tensor { name, .. } => write!(f, "tensor '{name}'"),
            Occupant::Workspace { step } => write!(f, "the workspace of step {step}"),
        }
    }
}

/// An arena byte range `[lo, hi)` held over a live range, as an overlap reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub what: Occupant,
    pub bytes: (u64, u64),
    pub live: LiveRange,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (bytes {}..{}, live over {})",
            self.what, self.bytes.0, self.bytes.1, self.live
        )
    }
}

/// An unsafe or malformed memory plan ([`verify_plan`](crate::verify_plan)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("the plan covers {order} of {nodes} nodes and {offsets} of {tensors} tensors")]
    Coverage {
        order: usize,
        nodes: usize,
        offsets: usize,
        tensors: usize,
    },
    #[error("the order lists node {0:?} twice or out of range")]
    Order(lowmem_ir::NodeId),
    #[error("read before write: node '{node}' at step {step} reads '{name}' before it is written")]
    ReadBeforeWrite {
        node: String,
        step: StepId,
        tensor: TensorId,
        name: String,
    },
    #[error("{kind:?} '{name}' is placed in the arena at offset {offset}; it must stay outside")]
    Persistent {
        kind: Kind,
        tensor: TensorId,
        name: String,
        offset: u64,
    },
    #[error("tensor '{name}' has no arena offset")]
    NoOffset { tensor: TensorId, name: String },
    #[error("tensor '{name}' has an offset but no producer")]
    NoProducer { tensor: TensorId, name: String },
    #[error("tensor '{name}' at offset {offset} is not {align}-byte aligned", align = ALIGN)]
    Misaligned {
        tensor: TensorId,
        name: String,
        offset: u64,
    },
    #[error(
        "tensor '{name}' at offset {offset} ({bytes} bytes) runs past the arena of {arena} bytes"
    )]
    PastArena {
        tensor: TensorId,
        name: String,
        offset: u64,
        bytes: u64,
        arena: u64,
    },
    #[error(
        "the workspace of step {step} at offset {offset} ({bytes} bytes) is misaligned or outside the arena of {arena} bytes"
    )]
    Workspace {
        step: StepId,
        offset: u64,
        bytes: u64,
        arena: u64,
    },
    #[error("{0} overlaps {1}")]
    Overlap(Box<Held>, Box<Held>),
}
