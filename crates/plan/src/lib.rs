//! Memory planning for lowmem: one arena with static offsets for every non-persistent tensor
//! of a graph, close to the lower bound (the peak of live bytes), and an independent verifier.
//!
//! [`pack`] is the offset-assignment engine (buffers with half-open live ranges and sizes get
//! byte offsets so that buffers live at the same time never share bytes); [`plan()`] builds
//! the problem from a graph's schedule and liveness (`lowmem-schedule`) and keeps the best
//! placement; [`verify_plan`] re-derives liveness and proves a plan safe.

mod error;
pub mod pack;
mod plan;
mod search;
mod verify;

pub use error::{CsvError, Held, Occupant, PackError, Placed, VerifyError};
pub use pack::{
    Buffer, BufferId, Packing, best_fit_heap, greedy_by_breadth, greedy_by_size, lower_bound, pack,
    read_csv, verify, write_csv,
};
pub use plan::{ALIGN, MemoryPlan, PERSISTENT_ALIGN, PlanBuffer, PlanOptions, plan, plan_each};
pub use verify::{Claim, verify_plan};
