//! Shared harness for berth's privileged integration tests (root, real kernel).
//!
//! `cli` drives the `berth` binary (stores, berth-probe, run leak checks);
//! `harness` has the scratch filesystems, leak checks and the skip rule;
//! `conformance` has one generic test per backend property; `pools` sets up one
//! pool per backend.

pub mod cgroups;
pub mod cli;
pub mod conformance;
pub mod harness;
pub mod ops;
pub mod pools;
pub mod vm;
