//! A whole benchmark run: the rootfs, the pools, the suites on each, and the
//! cleanup of everything it made, also when a step fails or Ctrl-C stops it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::copy::NoProgress;
use berth_core::templates::{self, Cache, CacheMode, Template};
use berth_core::Berth;
use tracing::warn;

use crate::error::{BenchError, Result};
use crate::model::{self, Measurement, PoolFs, Report, ScalePoint, Settings, Skipped, Suite};
use crate::pools::{self, SpaceProbe, Target};
use crate::session::Session;
use crate::suites::{self, Ctx, Events};

/// What the containers are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsChoice {
    /// The built-in template (busybox or the host's tools); offline.
    Minimal,
    /// Debian minbase from the host's mirror (cached under ROOT/cache).
    Debootstrap,
    Dir(PathBuf),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Backends to make throw-away pools for; empty with no `pools` means all.
    pub backends: Vec<String>,
    /// The user's pools to measure (in the user's store).
    pub pools: Vec<String>,
    pub rootfs: RootfsChoice,
    pub suites: Vec<Suite>,
    pub runs: usize,
    pub cold: bool,
    /// N of the scale and space suites.
    pub clones: usize,
}

impl Plan {
    /// Refuses what cannot be measured before anything is made.
    pub fn check(&self) -> Result<()> {
        if self.runs == 0 {
            return Err(BenchError::Invalid("--runs must be at least 1".to_owned()));
        }
        if self.clones == 0 {
            return Err(BenchError::Invalid(
                "--clones must be at least 1".to_owned(),
            ));
        }
        if self.suites.is_empty() {
            return Err(BenchError::Invalid("no suite chosen (--suite)".to_owned()));
        }
        for b in &self.backends {
            if pools::kind(b).is_none() {
                let known: Vec<&str> = pools::KINDS.iter().map(|k| k.backend).collect();
                return Err(BenchError::Invalid(format!(
                    "unknown backend {b:?}; known: {} (or all)",
                    known.join(", ")
                )));
            }
        }
        if self.suites.contains(&Suite::Io) {
            suites::io::available()
                .map_err(|why| BenchError::Invalid(format!("the io suite needs fio: {why}")))?;
        }
        if let RootfsChoice::Dir(d) = &self.rootfs {
            if !d.is_dir() {
                return Err(BenchError::Invalid(format!(
                    "--rootfs {}: not a directory",
                    d.display()
                )));
            }
        }
        Ok(())
    }

    fn wants(&self, s: Suite) -> bool {
        self.suites.contains(&s)
    }
}

/// Runs the benchmark for the store at `root`, timing the berth binary `berth`.
pub fn run(root: &Path, berth: &Path, plan: &Plan, events: &dyn Events) -> Result<Report> {
    plan.check()?;
    let started = Instant::now();
    let user = Berth::open(root, true)?;
    // The user's pools are looked up before anything is made.
    let mut user_pools = Vec::new();
    for name in &plan.pools {
        user_pools.push(user.store().pool(name)?);
    }
    drop(user);
    let session = Session::open(root, berth)?;
    let outcome = measure_all(&session, plan, user_pools, events);
    let closed = session.close();
    let (results, scale, skipped, filesystems, rootfs) = outcome?;
    closed?;
    Ok(Report {
        schema: model::SCHEMA,
        berth_version: env!("CARGO_PKG_VERSION").to_owned(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(started.elapsed().as_secs()),
        seconds: crate::stats::round3(started.elapsed().as_secs_f64()),
        host: crate::host::describe(filesystems),
        rootfs,
        settings: Settings {
            suites: plan.suites.clone(),
            runs: plan.runs,
            cold: plan.cold,
            clones: plan.clones,
        },
        skipped,
        results,
        scale,
    })
}

type Measured = (
    Vec<Measurement>,
    Vec<ScalePoint>,
    Vec<Skipped>,
    Vec<PoolFs>,
    model::Rootfs,
);

fn measure_all(
    s: &Session,
    plan: &Plan,
    user_pools: Vec<berth_bdev::PoolConfig>,
    events: &dyn Events,
) -> Result<Measured> {
    let (rootfs, info) = make_rootfs(s, &plan.rootfs)?;
    check_space(s, plan, info.bytes)?;
    let tarball = s.dir.join("rootfs.tar");
    if plan.wants(Suite::Meta) {
        cmd::run(
            &HostRunner,
            "tar",
            &[
                "-C",
                &pools::arg(&rootfs),
                "-cf",
                &pools::arg(&tarball),
                ".",
            ],
        )?;
    }
    let big = OnceLock::new();
    let big_rootfs = || -> Result<PathBuf> {
        if let Some(p) = big.get() {
            return Ok(Clone::clone(p));
        }
        let p = make_big_rootfs(s, &rootfs)?;
        Ok(big.get_or_init(|| p).clone())
    };

    let mut skipped = Vec::new();
    let chosen: Vec<&pools::Kind> = if plan.backends.is_empty() && plan.pools.is_empty() {
        pools::KINDS.iter().collect()
    } else {
        plan.backends
            .iter()
            .filter_map(|b| pools::kind(b))
            .collect()
    };
    events.begin((chosen.len() + user_pools.len()) as u64 * step_count(plan));
    let mut results = Vec::new();
    let mut points = Vec::new();
    let mut filesystems = Vec::new();
    // One pool at a time, made, measured and removed before the next: a
    // sparse scratch image keeps the blocks its peak used until it is deleted,
    // so pools kept side by side would add up on the host's disk.
    let mut todo: Vec<Result<Target, (&str, String)>> = Vec::new();
    for p in user_pools {
        todo.push(Ok(user_target(s, p)));
    }
    let mut kinds = chosen.into_iter();
    loop {
        let next = match todo.pop() {
            Some(t) => t,
            None => match kinds.next() {
                Some(k) => make_target(s, k).map_err(|reason| (k.backend, reason)),
                None => break,
            },
        };
        let mut t = match next {
            Ok(t) => t,
            Err((backend, reason)) => {
                skipped.push(Skipped {
                    backend: backend.to_owned(),
                    reason,
                });
                continue;
            }
        };
        filesystems.push(PoolFs {
            backend: t.pool.backend.clone(),
            pool: t.pool.name.clone(),
            under: t.under.clone(),
        });
        let outcome = measure_pool(
            s,
            &mut t,
            plan,
            &rootfs,
            &tarball,
            &big_rootfs,
            events,
            &mut results,
            &mut points,
        );
        let (backend, pool) = (t.pool.backend.clone(), t.pool.name.clone());
        let row = |operation: &str, e: &BenchError| {
            let mut m = Measurement::new(
                plan.suites.first().copied().unwrap_or(Suite::Lifecycle),
                &backend,
                &pool,
                operation,
                crate::model::Unit::Ms,
            );
            m.error = Some(e.to_string());
            m
        };
        // Removed whatever happened; a failed removal is a failed row.
        if let Err(e) = teardown(s, t) {
            warn!(error = %e, "benchmark pool teardown");
            results.push(row("(teardown)", &e));
        }
        match outcome {
            Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
            // One pool's failure is a row of the report, not the end of the run.
            Err(e) => results.push(row("(pool)", &e)),
            Ok(()) => {}
        }
    }
    Ok((results, points, skipped, filesystems, info))
}

/// Refuses to start when the disk under the run's directory cannot hold the
/// busiest pool: its copies of the rootfs (at most ten at a time, see
/// `suites::MAX_COPIES`), and with the scale suite the 10× rootfs and a copy of it.
fn check_space(s: &Session, plan: &Plan, rootfs_bytes: u64) -> Result<()> {
    let copies: u64 = if plan.wants(Suite::Scale) { 35 } else { 15 };
    let need = rootfs_bytes.saturating_mul(copies) + (1 << 30);
    let st =
        rustix::fs::statvfs(&s.dir).map_err(|e| BenchError::io("statvfs", &s.dir)(e.into()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < need {
        let h = berth_bdev::space::human;
        return Err(BenchError::Invalid(format!(
            "the benchmark needs about {} free under {} (the rootfs is {}; each pool holds \
             up to {copies} copies of it at a time), and there are {}: free some space, use a \
             smaller --rootfs, or leave out --suite scale",
            h(need),
            s.dir.display(),
            h(rootfs_bytes),
            h(free)
        )));
    }
    Ok(())
}

/// A throw-away pool of backend `k`, added to the run's store; or why not.
fn make_target(s: &Session, k: &pools::Kind) -> std::result::Result<Target, String> {
    let dir = s.dir.join(k.backend);
    berth_bdev::fsutil::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let t = (k.scratch)(s, &dir)?;
    let b = Berth::open(&t.root, true).map_err(|e| e.to_string())?;
    b.pool_add(&t.pool).map_err(|e| e.to_string())?;
    Ok(t)
}

fn step_count(plan: &Plan) -> u64 {
    1 + plan
        .suites
        .iter()
        .map(|s| match s {
            Suite::Lifecycle => plan.runs as u64 + 1,
            Suite::Scale => plan.clones.div_ceil(10) as u64 + 2,
            Suite::Image => plan.runs as u64 + plan.clones.div_ceil(10) as u64,
            _ => 1,
        })
        .sum::<u64>()
}

#[allow(clippy::too_many_arguments)]
fn measure_pool(
    s: &Session,
    t: &mut Target,
    plan: &Plan,
    rootfs: &Path,
    tarball: &Path,
    big_rootfs: &dyn Fn() -> Result<PathBuf>,
    events: &dyn Events,
    results: &mut Vec<Measurement>,
    points: &mut Vec<ScalePoint>,
) -> Result<()> {
    let src = s.name(&format!("{}-src", t.pool.name));
    events.step(&format!("{}: creating the source container", t.pool.name));
    let b = Berth::open(&t.root, true)?;
    let caps = b.backend(&t.pool)?.caps();
    drop(b);
    let rootfs_arg = pools::arg(rootfs);
    let mut args = vec![
        "create",
        &src,
        "--from-dir",
        &rootfs_arg,
        "--pool",
        &t.pool.name,
    ];
    if caps.lacks_xattrs {
        args.push("--drop-xattrs");
    }
    s.berth_output(&t.root, &args)?;
    let measured = (|| -> Result<()> {
        if let Some(n) = t.native.as_mut() {
            let volume = Berth::open(&t.root, false)?.store().container(&src)?.volume;
            n.prepare(rootfs, &volume)?;
        }
        let cx = Ctx {
            session: s,
            target: t,
            plan,
            events,
            src: src.clone(),
            rootfs,
            caps,
        };
        for suite in &plan.suites {
            cx.check()?;
            match suite {
                Suite::Lifecycle => suites::lifecycle::run(&cx, results)?,
                Suite::Space => suites::space::run(&cx, results)?,
                Suite::Scale => suites::scale::run(&cx, big_rootfs, results, points)?,
                Suite::Meta => suites::meta::run(&cx, tarball, results)?,
                Suite::Io => crate::io_run::run(&cx, results)?,
                Suite::Image => suites::image::run(&cx, results)?,
            }
        }
        Ok(())
    })();
    let native_done = t.native.as_mut().map_or(Ok(()), |n| n.cleanup());
    let destroyed = s
        .berth_output(&t.root, &["destroy", "--force", "--with-snapshots", &src])
        .map(|_| ());
    measured?;
    native_done?;
    destroyed
}

fn teardown(s: &Session, t: Target) -> Result<()> {
    if t.root == s.store() {
        // Anything a failed step left in the throw-away pool goes with it. The
        // store is let go before: each destroy is a berth command that locks it.
        let left: Vec<String> = Berth::open(&t.root, false)?
            .store()
            .containers()?
            .into_iter()
            .filter(|c| c.pool == t.pool.name)
            .map(|c| c.name)
            .collect();
        for name in left {
            let _ = s.berth_output(&t.root, &["destroy", "--force", "--with-snapshots", &name]);
        }
        // Images a failed step left: their copies here keep the pool in use.
        let images: Vec<String> = Berth::open(&t.root, false)?
            .store()
            .images()?
            .into_iter()
            .filter(|i| i.copy_on(&t.pool.name).is_some())
            .map(|i| i.name)
            .collect();
        for name in images {
            let _ = s.berth_output(&t.root, &["image", "rm", &name]);
        }
        Berth::open(&t.root, true)?.pool_rm(&t.pool.name)?;
    }
    t.teardown
        .run_now()
        .map_err(|(step, e)| BenchError::Invalid(format!("{step}: {e}")))
}

/// A user's pool: measured in the user's store; primitives only where a work
/// directory beside the pool is on the same filesystem.
fn user_target(s: &Session, pool: berth_bdev::PoolConfig) -> Target {
    let work = pool.path.as_ref().and_then(|p| {
        p.parent()
            .map(|d| d.join(format!(".berth-bench-{}", s.tag)))
    });
    let same_fs = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        matches!((std::fs::metadata(a), std::fs::metadata(b)), (Ok(x), Ok(y)) if x.dev() == y.dev())
    };
    let native = match (&pool.path, &work) {
        (Some(p), Some(w)) if w.parent().is_some_and(|d| same_fs(p, d)) => {
            pools::kind(&pool.backend).and_then(|k| (k.native)(&pool, w))
        }
        _ => None,
    };
    Target {
        under: "the user's pool".to_owned(),
        root: s.root.clone(),
        native,
        space: SpaceProbe::None(
            "not measured on a user's pool (its filesystem is shared)".to_owned(),
        ),
        teardown: berth_bdev::revert::Revert::new(),
        pool,
    }
}

fn make_rootfs(s: &Session, choice: &RootfsChoice) -> Result<(PathBuf, model::Rootfs)> {
    let (path, source) = match choice {
        RootfsChoice::Dir(d) => (d.clone(), d.display().to_string()),
        RootfsChoice::Minimal | RootfsChoice::Debootstrap => {
            let t = match choice {
                RootfsChoice::Minimal => Template::Minimal,
                _ => Template::parse_with("debootstrap", templates::host_suite)?,
            };
            let at = s.dir.join("rootfs");
            berth_bdev::fsutil::create_dir_all(&at)?;
            templates::probe(&t)?;
            let cache = Cache {
                dir: s.root.join("cache"),
                mode: CacheMode::Use,
            };
            templates::populate_cached(
                &t,
                &at,
                &cache,
                &HostRunner,
                &Default::default(),
                &NoProgress,
            )?;
            let name = if *choice == RootfsChoice::Minimal {
                "minimal"
            } else {
                "debootstrap"
            };
            (at, name.to_owned())
        }
    };
    let (files, bytes) = tree_size(&path);
    Ok((
        path,
        model::Rootfs {
            source,
            files,
            bytes,
        },
    ))
}

/// Entries and bytes of regular files under `dir`.
pub(crate) fn tree_size(dir: &Path) -> (u64, u64) {
    let mut stack = vec![dir.to_path_buf()];
    let (mut files, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            files += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

/// The rootfs with nine more copies of itself under /bulk: 10× the files and bytes.
fn make_big_rootfs(s: &Session, rootfs: &Path) -> Result<PathBuf> {
    let big = s.dir.join("rootfs-10x");
    let src = format!("{}/.", pools::arg(rootfs));
    let mut cmds = vec![pools::argv(&["cp", "-a", &src, &pools::arg(&big)])];
    for k in 1..10 {
        let at = big.join("bulk").join(k.to_string());
        cmds.push(pools::argv(&["mkdir", "-p", &pools::arg(&at)]));
        cmds.push(pools::argv(&["cp", "-a", &src, &pools::arg(&at)]));
    }
    pools::run_untimed(&cmds)?;
    Ok(big)
}
