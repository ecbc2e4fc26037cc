use std::path::PathBuf;

use berth_bdev::cmd::CmdError;
use berth_bdev::BdevError;
use berth_core::BerthError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Berth(#[from] BerthError),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error(transparent)]
    Template(#[from] berth_core::templates::TemplateError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

impl BenchError {
    /// For `map_err`: an io error on `path` while doing `what`.
    pub fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| BenchError::Io { what, path, source }
    }
}
