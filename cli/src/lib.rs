//! berth's application layer: the on-disk store and the operations behind each
//! command. The `berth` binary (main.rs) parses arguments and prints.
#![forbid(unsafe_code)]

pub mod confine;
pub mod damage;
pub mod error;
pub mod interrupt;
pub mod journal;
pub mod locks;
pub mod ops;
pub mod progress;
pub mod store;
pub mod userns;

pub use error::{BerthError, Result};
pub use ops::Berth;
