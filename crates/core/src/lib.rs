//! The decision core of dockgc: the model of a Docker host, the policy, and the planner.
//!
//! Pure by design: no I/O, no async runtime, no clock. Time and the world come in as a
//! [`model::Snapshot`]; decisions come out as a [`plan::Plan`]. That makes every planning
//! decision reproducible from a snapshot file and testable in memory.

pub mod explain;
pub mod graph;
pub mod history;
pub mod model;
pub mod plan;
pub mod policy;
pub mod simulate;
pub mod synthetic;
pub mod trace;
pub mod usage;

pub use explain::{explain, Explanation, Verdict};
pub use history::{History, ImageUse};
pub use model::Snapshot;
pub use plan::{plan, Goal, Kind, Plan, Reason, Request, Selection, SkipReason, Step};
pub use policy::Policy;
pub use usage::{usage, Usage};
