//! `berth export CONTAINER FILE` and `berth import FILE [NAME]`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_bdev::fsutil::AtomicFile;
use berth_core::ops::{Compress, Encoding, ExportRequest, ImportRequest, ImportedAny};
use berth_core::Berth;
use clap::{Args, ValueEnum};

use crate::backend_args::BackendParser;
use crate::output::{human, parse_size, say};
use crate::progress::CopyBar;
use crate::Cli;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Container (or, with --image, image) to export.
    pub name: String,
    /// Where to write it: a file (.tar, .tar.gz, .tar.zst), or - for stdout.
    pub file: PathBuf,
    /// Compression (default: from FILE's suffix; none for -).
    #[arg(long, value_enum)]
    pub compress: Option<CompressArg>,
    /// Write the backend's own send streams (btrfs send, zfs send), which
    /// only a pool of the same backend imports. The default where the
    /// container's backend has them.
    #[arg(long, conflicts_with = "portable")]
    pub native: bool,
    /// Write layer tars, which a pool of any backend imports.
    #[arg(long)]
    pub portable: bool,
    /// Only the changes since this snapshot, for a container that holds it
    /// too (`berth import` applies them on top of it).
    #[arg(long, value_name = "SNAP", conflicts_with = "without_snapshots")]
    pub since: Option<String>,
    /// Leave the container's snapshots out.
    #[arg(long)]
    pub without_snapshots: bool,
    /// Export a running container frozen for the whole export.
    #[arg(long)]
    pub freeze: bool,
    /// NAME is an image (`berth image ls`): its tree and defaults, which
    /// `berth import` makes an image again.
    #[arg(long, conflicts_with_all = ["since", "freeze", "without_snapshots"])]
    pub image: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressArg {
    None,
    Gzip,
    Zstd,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An export (plain, gzip or zstd), or - for stdin.
    pub file: PathBuf,
    /// The container's (or image's) name (default: the exported one's). An
    /// incremental export (--since) updates the container of this name.
    pub name: Option<String>,
    /// Pool to import into (default: the default pool; for native streams,
    /// the only pool of their backend).
    #[arg(long, conflicts_with = "backend")]
    pub pool: Option<String>,
    /// Backend to import into (its pool is made under the state root when needed).
    #[arg(short = 'B', long, value_parser = BackendParser)]
    pub backend: Option<String>,
    /// Volume size for block-backed backends, e.g. 2G (default: sized from
    /// the data).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// The container runs in a user namespace; an export that carries
    /// device nodes is refused.
    #[arg(long)]
    pub unprivileged: bool,
    /// Leave the export's snapshots out (portable exports).
    #[arg(long)]
    pub without_snapshots: bool,
}

pub fn export(cli: &Cli, a: &ExportArgs) -> anyhow::Result<ExitCode> {
    let to_stdout = a.file.as_os_str() == "-";
    let compress = match a.compress {
        Some(CompressArg::None) => Compress::None,
        Some(CompressArg::Gzip) => Compress::Gzip,
        Some(CompressArg::Zstd) => Compress::Zstd,
        None if to_stdout => Compress::None,
        None => Compress::for_path(&a.file),
    };
    let req = ExportRequest {
        compress,
        encoding: if a.native {
            Encoding::Native
        } else if a.portable {
            Encoding::Portable
        } else {
            Encoding::Auto
        },
        since: a.since.clone(),
        without_snapshots: a.without_snapshots,
        freeze: a.freeze,
    };
    let b = Berth::open(&cli.root, true)?;
    if to_stdout {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            anyhow::bail!(
                "stdout is a terminal: redirect it (`berth export {} - > FILE`) or give a FILE",
                a.name
            );
        }
        let mut out = stdout.lock();
        let done = export_one(&b, a, &req, &mut out)
            .map_err(anyhow::Error::from)
            .and_then(|_| out.flush().context("flush stdout"));
        // A reader that went away has half an export: a failure, not the
        // quiet end of a listing (as main treats a closed stdout), so the
        // error is passed on as its text alone.
        return done
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| anyhow::anyhow!("{e:#}"));
    }
    // FILE is replaced only by a complete, synced export; a failed or killed
    // export leaves FILE as it was and nothing beside it.
    let mut file = AtomicFile::create(&a.file)?;
    let sum = export_one(&b, a, &req, &mut file)?;
    berth_core::journal::crash_point("export", "written");
    file.commit(true)?;
    let kind = if sum.encoding == "tar" {
        "portable".to_owned()
    } else {
        format!("native {}", sum.encoding)
    };
    say(format!(
        "exported {} to {} ({kind}, {} stream{}, {})",
        a.name,
        a.file.display(),
        sum.streams.len(),
        if sum.streams.len() == 1 { "" } else { "s" },
        human(sum.bytes)
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn export_one(
    b: &Berth,
    a: &ExportArgs,
    req: &ExportRequest,
    out: &mut dyn Write,
) -> berth_core::Result<berth_core::ops::ExportSummary> {
    if a.image {
        b.export_image(&a.name, req, out)
    } else {
        b.export(&a.name, req, out)
    }
}

pub fn import(cli: &Cli, a: &ImportArgs) -> anyhow::Result<ExitCode> {
    let req = ImportRequest {
        name: a.name.clone(),
        pool: a.pool.clone(),
        backend: a.backend.clone(),
        size: a.size,
        unprivileged: a.unprivileged,
        without_snapshots: a.without_snapshots,
    };
    let b = Berth::open(&cli.root, true)?;
    let bar = CopyBar::new("importing".to_owned());
    let got = if a.file.as_os_str() == "-" {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        b.import_any(&mut input, &req, &bar)?
    } else {
        let mut input =
            File::open(&a.file).with_context(|| format!("open {}", a.file.display()))?;
        b.import_any(&mut input, &req, &bar)?
    };
    bar.finish();
    let got = match got {
        ImportedAny::Container(c) => *c,
        ImportedAny::Image(img) => {
            say(format!(
                "imported image {} into pool {} ({})",
                img.name, img.copies[0].pool, img.digest
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let c = &got.container;
    let line = match &got.since {
        Some(snap) => format!(
            "imported into {} the changes since {}@{snap}",
            c.name, c.name
        ),
        None => format!(
            "imported {} into pool {} ({} snapshot{})",
            c.name,
            c.pool,
            c.snapshots.len(),
            if c.snapshots.len() == 1 { "" } else { "s" }
        ),
    };
    say(line)?;
    Ok(ExitCode::SUCCESS)
}
