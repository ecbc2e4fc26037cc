//! What a benchmark run produces: the JSON document `--format json` prints and
//! `--out DIR` writes, from which the CSVs, charts and HTML page are made.

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// A group of measurements, selected with `--suite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// create, clone, copy, snapshot, restore, mount, start, destroy.
    Lifecycle,
    /// fio through the container's mounted rootfs.
    Io,
    /// unpack, walk and delete a tree of many small files.
    Meta,
    /// 1 → N snapshot clones; the same on a 10× rootfs.
    Scale,
    /// disk added by clones and writes, next to what `berth info` reports.
    Space,
    /// `berth image build` and containers made from an image.
    Image,
}

impl Suite {
    pub const ALL: [Suite; 6] = [
        Suite::Lifecycle,
        Suite::Io,
        Suite::Meta,
        Suite::Scale,
        Suite::Space,
        Suite::Image,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Lifecycle => "lifecycle",
            Suite::Io => "io",
            Suite::Meta => "meta",
            Suite::Scale => "scale",
            Suite::Space => "space",
            Suite::Image => "image",
        }
    }

    pub fn parse(s: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// The unit of a measurement's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    #[serde(rename = "ms")]
    Ms,
    #[serde(rename = "MiB/s")]
    MibPerSec,
    #[serde(rename = "IOPS")]
    Iops,
    #[serde(rename = "bytes")]
    Bytes,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MibPerSec => "MiB/s",
            Unit::Iops => "IOPS",
            Unit::Bytes => "bytes",
        }
    }
}

/// The raw operation a berth figure is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Primitive {
    /// What ran, e.g. `btrfs subvolume snapshot SRC DST`.
    pub command: String,
    pub value: Summary,
}

/// One row: an operation on one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub suite: Suite,
    pub backend: String,
    pub pool: String,
    pub operation: String,
    pub unit: Unit,
    /// berth's figure; `None` when the operation failed (see `error`).
    pub berth: Option<Summary>,
    pub primitive: Option<Primitive>,
    /// berth's median over the primitive's (time: lower is better for berth).
    pub ratio: Option<f64>,
    /// For space rows: what `berth info` reports for the same thing.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reported: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Measurement {
    pub fn new(suite: Suite, backend: &str, pool: &str, operation: &str, unit: Unit) -> Self {
        Measurement {
            suite,
            backend: backend.to_owned(),
            pool: pool.to_owned(),
            operation: operation.to_owned(),
            unit,
            berth: None,
            primitive: None,
            ratio: None,
            reported: None,
            note: None,
            error: None,
        }
    }

    /// Sets berth's figure and the primitive's, and their ratio.
    pub fn with(mut self, berth: Option<Summary>, primitive: Option<Primitive>) -> Self {
        self.ratio = match (&berth, &primitive) {
            (Some(b), Some(p)) => crate::stats::ratio(b.median, p.value.median),
            _ => None,
        };
        self.berth = berth;
        self.primitive = primitive;
        self
    }
}

/// One point of the scale suite: the `n`th snapshot clone of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalePoint {
    pub backend: String,
    pub pool: String,
    pub n: usize,
    pub clone_ms: f64,
}

/// A backend that was not measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub backend: String,
    pub reason: String,
}

/// The host the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    /// Per measured pool: the filesystem under it, e.g. `btrfs on a loop-mounted image`.
    pub filesystems: Vec<PoolFs>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolFs {
    pub backend: String,
    pub pool: String,
    pub under: String,
}

/// The tree containers are made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rootfs {
    /// `minimal`, `debootstrap` or the directory given.
    pub source: String,
    pub files: u64,
    pub bytes: u64,
}

/// How the run was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub suites: Vec<Suite>,
    pub runs: usize,
    pub cold: bool,
    pub clones: usize,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format version of this document.
    pub schema: u32,
    pub berth_version: String,
    /// Seconds since the epoch when the run started.
    pub started: u64,
    pub seconds: f64,
    pub host: Host,
    pub rootfs: Rootfs,
    pub settings: Settings,
    pub skipped: Vec<Skipped>,
    pub results: Vec<Measurement>,
    pub scale: Vec<ScalePoint>,
}

pub const SCHEMA: u32 = 1;

impl Report {
    /// Rows that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Measurement> {
        self.results.iter().filter(|m| m.error.is_some())
    }
}

/// Operation names, shared by the suites that measure and the charts that plot.
pub mod op {
    pub const CREATE: &str = "create";
    pub const SNAPSHOT_CLONE: &str = "snapshot clone";
    pub const COPY: &str = "copy";
    pub const SNAPSHOT: &str = "snapshot";
    pub const RESTORE: &str = "restore";
    pub const MOUNT: &str = "mount + umount";
    pub const START: &str = "start /bin/true";
    pub const DESTROY: &str = "destroy";
    /// What every state-changing berth command pays before any backend work.
    pub const FLOOR: &str = "berth floor: exec + 2 durable writes";
    /// Scale suite, on the 10× rootfs.
    pub const BIG_SNAPSHOT_CLONE: &str = "snapshot clone, 10x rootfs";
    pub const BIG_COPY: &str = "copy, 10x rootfs";
    pub const NTH_START: &str = "start /bin/true of the Nth clone";
    /// Space suite.
    pub const SPACE_CLONE: &str = "one snapshot clone";
    pub const SPACE_WRITE: &str = "1 MiB written in a clone";
    pub const SPACE_PER_CLONE: &str = "per clone, of N";
    /// Meta suite.
    pub const UNPACK: &str = "unpack tar";
    pub const WALK: &str = "find + stat";
    pub const REMOVE: &str = "rm -rf";
    /// Io suite.
    pub const SEQ_WRITE: &str = "seq write 1M";
    pub const SEQ_READ: &str = "seq read 1M";
    pub const RAND_READ: &str = "rand read 4k";
    pub const RAND_WRITE: &str = "rand write 4k";
    pub const FSYNC_WRITE: &str = "4k write + fsync";
    pub const FIRST_WRITE_INHERITED: &str = "first write, inherited 64 MiB file";
    pub const FIRST_WRITE_NEW: &str = "first write, new 64 MiB file";
    /// Image suite.
    pub const IMAGE_BUILD: &str = "image build";
    pub const IMAGE_FIRST: &str = "1st create --image, image built on the pool";
    pub const IMAGE_FIRST_COPIED: &str = "1st create --image, image on the default pool";
    pub const IMAGE_LATER: &str = "create --image #2..N";
    pub const IMAGE_LAST: &str = "create --image #N";
    pub const IMAGE_LATER_VS_CLONE: &str = "create --image #2..N vs berth clone";
    pub const IMAGE_SPACE: &str = "per container from an image, #2..N";
}
