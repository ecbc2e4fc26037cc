//! Shared harness for berth's privileged integration tests (root, real kernel).
//!
//! `cli` drives the `berth` binary (stores, berth-probe, run leak checks);
//! `harness` has the scratch filesystems, leak checks and the skip rule;
//! `conformance` has one generic test per backend property; `pools` sets up one
//! pool per backend; `consistency` checks a store from outside after crashes
//! and crowds; `rng` is a seeded generator for randomised tests; `fidelity`
//! runs a reference tree through every clone and copy path.

pub mod cgroups;
pub mod cli;
pub mod conformance;
pub mod consistency;
pub mod fidelity;
pub mod grow;
pub mod harness;
pub mod ops;
pub mod pools;
pub mod rng;
pub mod tmux;
pub mod vm;
