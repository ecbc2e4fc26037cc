//! `berth image build|import|ls|info|rm|prune` and `berth commit`.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_bdev::FsType;
use berth_core::images::Image;
use berth_core::ops::{ImageBuildRequest, ImageSource};
use berth_core::Berth;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::backend_args::BackendParser;
use crate::output::{human, parse_size, print_list, say};
use crate::progress::CopyBar;
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Build an image from a template, a directory or a tarball.
    Build(BuildArgs),
    /// Import an image from an OCI image layout (`skopeo copy … oci:DIR[:TAG]`).
    Import(ImportArgs),
    /// List images.
    Ls,
    /// Show an image: digest, parent, defaults, copies and the containers using it.
    Info(ImageName),
    /// Remove an image and all its copies (refused while containers read one).
    Rm(ImageName),
    /// Remove the copies of images on pools where no container reads them
    /// (each image keeps the copy it was built on).
    Prune,
}

#[derive(Args, Debug)]
pub struct ImageName {
    pub name: String,
}

#[derive(Args, Debug)]
pub struct Placement {
    /// Pool to build the image in (default: the default pool).
    #[arg(long, conflicts_with = "backend")]
    pub pool: Option<String>,
    /// Backend to build it on (its pool is made under the state root when needed).
    #[arg(short = 'B', long, value_parser = BackendParser)]
    pub backend: Option<String>,
    /// Volume size for block-backed backends, e.g. 2G.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Filesystem for block-backed backends: ext4, xfs or btrfs.
    #[arg(long)]
    pub fstype: Option<FsType>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    pub name: String,
    /// Template: minimal (default, offline), debootstrap[:SUITE].
    #[arg(short = 't', long, conflicts_with_all = ["from_dir", "from_tar"])]
    pub template: Option<String>,
    /// Build it from a directory tree.
    #[arg(long, conflicts_with = "from_tar")]
    pub from_dir: Option<PathBuf>,
    /// Build it from a tarball (plain, gz, xz, zst, bz2).
    #[arg(long)]
    pub from_tar: Option<PathBuf>,
    #[command(flatten)]
    pub place: Placement,
    /// Leave out extended attributes the pool cannot store instead of refusing.
    #[arg(long)]
    pub drop_xattrs: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The OCI image layout: DIR, or DIR:TAG when it holds several images.
    #[arg(long, value_name = "DIR[:TAG]")]
    pub oci: String,
    pub name: String,
    #[command(flatten)]
    pub place: Placement,
    /// Create the device nodes the layers hold (refused by default).
    #[arg(long)]
    pub allow_devices: bool,
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The container whose rootfs becomes the image (a running one is frozen
    /// while it is copied).
    pub container: String,
    pub image: String,
}

pub fn run(cli: &Cli, c: &ImageCmd) -> anyhow::Result<ExitCode> {
    match c {
        ImageCmd::Build(a) => {
            let t = crate::cmd_container::template_from(
                a.template.as_deref(),
                a.from_dir.as_ref(),
                a.from_tar.as_ref(),
                None,
            )?;
            build(
                cli,
                &a.name,
                ImageSource::Template(t),
                &a.place,
                a.drop_xattrs,
                false,
            )
        }
        ImageCmd::Import(a) => {
            let (layout, tag) = split_layout(&a.oci);
            let source = ImageSource::Oci { layout, tag };
            build(cli, &a.name, source, &a.place, false, a.allow_devices)
        }
        ImageCmd::Ls => ls(cli),
        ImageCmd::Info(a) => info(cli, &a.name),
        ImageCmd::Rm(a) => {
            Berth::open(&cli.root, true)?.image_rm(&a.name)?;
            say(format!("removed image {}", a.name))?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Prune => {
            let pruned = Berth::open(&cli.root, true)?.image_prune()?;
            for (img, pool) in &pruned {
                say(format!("removed image {img}'s copy on pool {pool}"))?;
            }
            if pruned.is_empty() {
                say("nothing to prune")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `DIR:TAG` splits at the last ':' when what follows names no path.
fn split_layout(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => {
            (PathBuf::from(dir), Some(tag.to_owned()))
        }
        _ => (PathBuf::from(s), None),
    }
}

fn build(
    cli: &Cli,
    name: &str,
    source: ImageSource,
    place: &Placement,
    drop_xattrs: bool,
    allow_devices: bool,
) -> anyhow::Result<ExitCode> {
    let req = ImageBuildRequest {
        source,
        pool: place.pool.clone(),
        backend: place.backend.clone(),
        size: place.size,
        fstype: place.fstype,
        drop_xattrs,
        allow_devices,
    };
    let b = Berth::open(&cli.root, true)?;
    let bar = CopyBar::new(format!("building image {name}"));
    let img = b.image_build(name, &req, &bar)?;
    bar.finish();
    say(format!(
        "built image {} on pool {} ({})",
        img.name, img.copies[0].pool, img.digest
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn commit(cli: &Cli, a: &CommitArgs) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, true)?;
    let bar = CopyBar::new(format!("committing {}", a.container));
    let img = b.commit(&a.container, &a.image, &bar)?;
    bar.finish();
    say(format!(
        "committed {} as image {} ({})",
        a.container, img.name, img.digest
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    image: Image,
    users: Vec<String>,
}

fn listed(b: &Berth, image: Image) -> anyhow::Result<Listed> {
    let users = b.image_users(&image.name)?;
    Ok(Listed { image, users })
}

fn ls(cli: &Cli) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, false)?;
    let all = b
        .store()
        .images()?
        .into_iter()
        .map(|i| listed(&b, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rows = all
        .iter()
        .map(|l| {
            let i = &l.image;
            vec![
                i.name.clone(),
                short(&i.digest),
                i.parent.clone().unwrap_or_else(|| "-".to_owned()),
                i.copies
                    .iter()
                    .map(|c| c.pool.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                l.users.len().to_string(),
                i.source.clone(),
            ]
        })
        .collect();
    print_list(
        cli.format,
        &["NAME", "DIGEST", "PARENT", "POOLS", "CONTAINERS", "SOURCE"],
        rows,
        &all,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

fn info(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, false)?;
    let l = listed(&b, b.store().image(name)?)?;
    if cli.format == crate::Format::Json {
        print_list(cli.format, &[], Vec::new(), &l)?;
        return Ok(ExitCode::SUCCESS);
    }
    let i = &l.image;
    say(format!("name:       {}", i.name))?;
    say(format!("digest:     {}", i.digest))?;
    say(format!("source:     {}", i.source))?;
    if let Some(p) = &i.parent {
        say(format!("parent:     {p}"))?;
    }
    let d = &i.defaults;
    if !d.cmd.is_empty() {
        say(format!("cmd:        {}", d.cmd.join(" ")))?;
    }
    for e in &d.env {
        say(format!("env:        {e}"))?;
    }
    if let Some(w) = &d.workdir {
        say(format!("workdir:    {w}"))?;
    }
    if let Some(u) = &d.user {
        say(format!("user:       {u}"))?;
    }
    for c in &i.copies {
        let used = b
            .backend(&b.store().pool(&c.pool)?)
            .and_then(|be| Ok(be.usage(&c.volume)?))
            .map(|u| human(u.used_bytes))
            .unwrap_or_else(|_| "?".to_owned());
        say(format!(
            "copy:       pool {} ({}, {used})",
            c.pool, c.volume
        ))?;
    }
    if !l.users.is_empty() {
        say(format!("containers: {}", l.users.join(", ")))?;
    }
    Ok(ExitCode::SUCCESS)
}
