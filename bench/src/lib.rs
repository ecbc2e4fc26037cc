//! `berth bench`: the storage benchmark. For each backend the host can run it
//! makes a throw-away pool (or uses the user's), measures berth's operations
//! next to the backend's raw primitive alternately in the same run, and reports
//! them as a table, JSON, CSV, SVG charts and an HTML page.

pub mod error;
pub mod model;
pub mod output;
pub mod stats;
pub mod suites;

pub use error::{BenchError, Result};
pub use model::{Measurement, Report, Suite, Unit};
mod host;
mod io_run;
pub mod pools;
pub mod run;
pub mod session;

pub use run::{run, Plan, RootfsChoice};
pub use suites::Events;
