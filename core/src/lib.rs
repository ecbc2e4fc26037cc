//! berth's application layer: the on-disk store and the operations behind each
//! command. The `berth` binary (cli/) parses arguments and prints; tests use
//! this crate directly.
#![forbid(unsafe_code)]

pub mod confine;
pub mod damage;
pub mod error;
pub mod images;
pub mod interrupt;
pub mod journal;
pub mod locks;
pub mod logs;
pub mod net;
pub mod ops;
pub mod store;
pub mod templates;
pub mod userns;

pub use error::{BerthError, Result};
pub use ops::Berth;
