//! Shared code of outpost's fuzz targets (see `fuzz_targets/`) and of the
//! seed generator (`examples/gen_seeds.rs`).
//!
//! - [`apply`]: the environment of the `apply_entry` target (a real
//!   database, and real log entries made by change capture on two other
//!   nodes to build inputs from) and the input format of that target.

pub mod apply;
