//! A made-up report and small readers for the output tests: an RFC 4180 CSV
//! reader and an XML well-formedness check.

use crate::model::{
    op, Host, Measurement, PoolFs, Primitive, Report, Rootfs, ScalePoint, Settings, Skipped, Suite,
    Unit, SCHEMA,
};
use crate::stats::Summary;

pub const HOSTILE_NOTE: &str = "<script>alert(\"x\")</script>";

fn summary(median: f64, min: f64, max: f64, runs: usize) -> Option<Summary> {
    Some(Summary {
        median,
        min,
        max,
        runs,
    })
}

fn primitive(command: &str, median: f64) -> Option<Primitive> {
    Some(Primitive {
        command: command.to_owned(),
        value: Summary {
            median,
            min: median * 0.9,
            max: median * 1.2,
            runs: 5,
        },
    })
}

/// Four backends (one failing a row), one skipped, rows in three suites and
/// scale points for two backends.
pub fn report() -> Report {
    let bt = ("btrfs", "/pools/bt");
    let lvm = ("lvm-thin", "vg0/thin");
    let zfs = ("zfs", "tank/berth");
    let dir = ("dir", "/pools/dir");
    let row = |suite, (backend, pool): (&str, &str), operation, unit| {
        Measurement::new(suite, backend, pool, operation, unit)
    };
    let lifecycle = |b, operation| row(Suite::Lifecycle, b, operation, Unit::Ms);
    let mut failed = lifecycle(zfs, op::SNAPSHOT_CLONE);
    failed.error = Some("dataset busy".to_owned());
    let mut quoted = lifecycle(dir, op::SNAPSHOT_CLONE).with(
        summary(80.0, 70.0, 95.5, 5),
        primitive("cp -a --reflink=never SRC DST", 75.0),
    );
    quoted.note = Some("cold, \"dropped\" caches\nthen ran".to_owned());
    let mut hostile = lifecycle(dir, op::COPY).with(summary(81.0, 79.0, 90.0, 5), None);
    hostile.note = Some(HOSTILE_NOTE.to_owned());
    let mut space_clone = row(Suite::Space, bt, op::SPACE_CLONE, Unit::Bytes)
        .with(summary(16384.0, 16384.0, 20480.0, 3), None);
    space_clone.reported = Some(16384);
    let mut space_dir = row(Suite::Space, dir, op::SPACE_CLONE, Unit::Bytes)
        .with(summary(52_428_800.0, 52_428_800.0, 52_432_896.0, 3), None);
    space_dir.reported = Some(50_000_000);
    let mut space_write = row(Suite::Space, bt, op::SPACE_WRITE, Unit::Bytes)
        .with(summary(1_048_576.0, 1_048_576.0, 1_052_672.0, 3), None);
    space_write.reported = None;
    let results = vec![
        lifecycle(bt, op::SNAPSHOT_CLONE).with(
            summary(12.5, 11.0, 14.25, 5),
            primitive("btrfs subvolume snapshot SRC DST", 10.0),
        ),
        lifecycle(lvm, op::SNAPSHOT_CLONE).with(
            summary(210.0, 190.0, 260.0, 5),
            primitive("lvcreate -s -n DST vg0/SRC, lvchange -ay -K", 180.0),
        ),
        failed,
        quoted,
        lifecycle(bt, op::COPY).with(summary(300.0, 290.0, 330.0, 5), primitive("cp -a", 280.0)),
        hostile,
        lifecycle(bt, op::START).with(summary(45.0, 40.0, 52.0, 5), primitive("chroot", 3.0)),
        lifecycle(lvm, op::START).with(summary(48.0, 41.0, 50.0, 5), primitive("chroot", 3.1)),
        row(Suite::Io, bt, op::SEQ_WRITE, Unit::MibPerSec).with(
            summary(950.0, 900.0, 990.0, 3),
            primitive("fio on the pool", 1000.0),
        ),
        row(Suite::Io, lvm, op::SEQ_WRITE, Unit::MibPerSec)
            .with(summary(700.0, 650.0, 720.0, 3), None),
        row(Suite::Io, bt, op::SEQ_READ, Unit::MibPerSec)
            .with(summary(2100.0, 2000.0, 2200.0, 3), None),
        row(Suite::Io, bt, op::RAND_READ, Unit::Iops).with(
            summary(50_000.0, 48_000.0, 52_000.0, 3),
            primitive("fio on the pool", 55_000.0),
        ),
        row(Suite::Io, lvm, op::RAND_READ, Unit::Iops)
            .with(summary(40_000.0, 39_000.0, 41_000.0, 3), None),
        space_clone,
        space_dir,
        space_write,
    ];
    let mut scale = Vec::new();
    for n in 1..=5 {
        for ((backend, pool), base) in [(bt, 10.0), (lvm, 200.0)] {
            scale.push(ScalePoint {
                backend: backend.to_owned(),
                pool: pool.to_owned(),
                n,
                clone_ms: base + n as f64 / 2.0,
            });
        }
    }
    let pool_fs = |(backend, pool): (&str, &str), under: &str| PoolFs {
        backend: backend.to_owned(),
        pool: pool.to_owned(),
        under: under.to_owned(),
    };
    Report {
        schema: SCHEMA,
        berth_version: "0.1.0".to_owned(),
        started: 1_700_000_000,
        seconds: 321.5,
        host: Host {
            kernel: "6.8.0-31-generic".to_owned(),
            cpus: 2,
            cpu_model: "AMD EPYC 7B13".to_owned(),
            memory_bytes: 8 << 30,
            filesystems: vec![
                pool_fs(bt, "btrfs on a loop-mounted image"),
                pool_fs(lvm, "thin pool on a loop device"),
                pool_fs(zfs, "zpool on a loop device"),
                pool_fs(dir, "ext4"),
            ],
        },
        rootfs: Rootfs {
            source: "minimal".to_owned(),
            files: 1234,
            bytes: 52_000_000,
        },
        settings: Settings {
            suites: vec![Suite::Lifecycle, Suite::Io, Suite::Space, Suite::Scale],
            runs: 5,
            cold: false,
            clones: 5,
        },
        skipped: vec![Skipped {
            backend: "overlay".to_owned(),
            reason: "needs <overlayfs> & a kernel that has it".to_owned(),
        }],
        results,
        scale,
    }
}

/// Records of an RFC 4180 document.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "unterminated CSV"
    );
    records
}

/// Checks that `xml` is one well-formed element (optionally after an XML
/// declaration, a doctype and comments): tags balanced, attributes quoted, text free of
/// `<` and of unknown entities. Returns the root element's name.
pub fn check_well_formed(xml: &str) -> Result<String, String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut root: Option<String> = None;
    let mut rest = xml;
    loop {
        let Some(open) = rest.find('<') else {
            check_text(rest)?;
            if !rest.trim().is_empty() && stack.is_empty() {
                return Err(format!("text outside the root: {rest:?}"));
            }
            break;
        };
        let text = &rest[..open];
        check_text(text)?;
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:?}"));
        }
        rest = &rest[open..];
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("<!DOCTYPE") {
            let end = after.find('>').ok_or("unterminated doctype")?;
            rest = &after[end + 1..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("<?") {
            let end = after.find("?>").ok_or("unterminated declaration")?;
            rest = &after[end + 2..];
            continue;
        }
        let end = tag_end(rest).ok_or_else(|| format!("unterminated tag at {rest:.40?}"))?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name = body.split_whitespace().next().ok_or("empty tag")?;
        check_attributes(&body[name.len()..])?;
        if stack.is_empty() {
            if root.is_some() {
                return Err(format!("second root element <{name}>"));
            }
            root = Some(name.to_owned());
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{open}> never closed"));
    }
    root.ok_or_else(|| "no element".to_owned())
}

/// The index of the `>` that ends the tag `rest` starts with, skipping quoted values.
fn tag_end(rest: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if q == c => quote = None,
            (None, '>') => return Some(i),
            (None, '<') if i > 0 => return None,
            _ => {}
        }
    }
    None
}

fn check_attributes(mut attrs: &str) -> Result<(), String> {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return Ok(());
        }
        let eq = attrs
            .find('=')
            .ok_or_else(|| format!("attribute without value: {attrs}"))?;
        let name = attrs[..eq].trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("bad attribute name {name:?}"));
        }
        let value = &attrs[eq + 1..];
        let quote = value
            .chars()
            .next()
            .filter(|q| *q == '"' || *q == '\'')
            .ok_or_else(|| format!("unquoted value of {name}"))?;
        let close = value[1..]
            .find(quote)
            .ok_or_else(|| format!("unterminated value of {name}"))?;
        check_text(&value[1..1 + close])?;
        attrs = &value[close + 2..];
    }
}

fn check_text(text: &str) -> Result<(), String> {
    if text.contains('<') {
        return Err(format!("raw < in {text:?}"));
    }
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .ok_or_else(|| format!("bare & in {text:?}"))?;
        let entity = &after[..semi];
        let known = matches!(entity, "amp" | "lt" | "gt" | "quot" | "apos")
            || entity.strip_prefix('#').is_some_and(|n| {
                n.strip_prefix('x').map_or(n.parse::<u32>().is_ok(), |h| {
                    u32::from_str_radix(h, 16).is_ok()
                })
            });
        if !known {
            return Err(format!("unknown entity &{entity}; in {text:?}"));
        }
        rest = &after[semi + 1..];
    }
    Ok(())
}

/// The contents of every `<text>` element, entities decoded.
pub fn texts(svg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find("<text") {
        let Some(open_end) = rest[start..].find('>') else {
            break;
        };
        let body = &rest[start + open_end + 1..];
        let Some(close) = body.find("</text>") else {
            break;
        };
        out.push(
            body[..close]
                .trim()
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &body[close..];
    }
    out
}

#[test]
fn the_checker_rejects_what_is_not_well_formed() {
    let good =
        "<?xml version=\"1.0\"?>\n<svg a=\"1\"><g><text x='2'>a &amp; b</text><rect/></g></svg>\n";
    assert_eq!(check_well_formed(good), Ok("svg".to_owned()));
    for bad in [
        "<svg><g></svg>",
        "<svg></g></svg>",
        "<svg><text>a < b</text></svg>",
        "<svg><text>a & b</text></svg>",
        "<svg a=1></svg>",
        "<svg></svg><svg></svg>",
        "<svg>",
        "text<svg></svg>",
    ] {
        assert!(check_well_formed(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_csv("a,\"b,\"\"c\"\"\nd\"\n,\n"),
        [vec!["a", "b,\"c\"\nd"], vec!["", ""]]
    );
}
