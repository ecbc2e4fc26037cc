//! Builds hostile tar archives from a line-based text format, so that the fuzzer
//! (and a person writing seeds) works on members, not on checksums.
//!
//! One member per line; empty lines and lines starting with `#` are skipped:
//!
//! ```text
//! f NAME [= DATA]        regular file; `\n` in DATA is a newline
//! d NAME                 directory
//! l NAME -> TARGET       symlink
//! h NAME -> TARGET       hard link
//! c NAME [MAJOR MINOR]   character device (always null, zero or full)
//! b NAME [MAJOR MINOR]   block device (always an absent loop minor)
//! p NAME                 fifo
//! tX NAME [-> T] [= D]   any other type flag X (x g X L K N become regular)
//! P KEY=VALUE            pax record for the next member (`path=…`, xattrs…)
//! L NAME / K TARGET      GNU long name / long link target for the next member
//! ```
//!
//! Any member line may end in options `!size=N` (the declared size, whatever
//! the data), `!mode=OCTAL`, `!uid=N`, `!gid=N`.
//!
//! Every path (names, link targets, pax values whose key mentions a path or
//! name) is confined first, so that a bug in the extractor can only write
//! into the sentinel directory the target checks, never elsewhere on the
//! host: an absolute path is moved below `abs_root`, and an archive has at
//! most [`MAX_DOTDOTS`] `..` components in all, further ones becoming `x`;
//! both `abs_root` and the target directory sit deeper than that below the
//! sentinel.

/// How many `..` components one archive may have; the target directory and
/// `abs_root` must be nested deeper than this below the sentinel.
pub const MAX_DOTDOTS: usize = 8;

const BLOCK: usize = 512;
const MTIME: u64 = 1_000_000_000;

/// Rewrites paths so that they cannot reach outside the sentinel.
pub struct Confine {
    abs_root: String,
    dotdots_left: usize,
}

impl Confine {
    /// `abs_root` is where absolute paths are moved, an absolute path.
    pub fn new(abs_root: &str) -> Self {
        Confine {
            abs_root: abs_root.trim_end_matches('/').to_owned(),
            dotdots_left: MAX_DOTDOTS,
        }
    }

    pub fn path(&mut self, p: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(p.len() + self.abs_root.len());
        if p.first() == Some(&b'/') {
            out.extend_from_slice(self.abs_root.as_bytes());
        }
        for (i, c) in p.split(|b| *b == b'/').enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            if c == b".." {
                if self.dotdots_left == 0 {
                    out.push(b'x');
                    continue;
                }
                self.dotdots_left -= 1;
            }
            out.extend_from_slice(c);
        }
        out
    }
}

#[derive(Debug, Default)]
struct Member {
    flag: u8,
    name: Vec<u8>,
    link: Vec<u8>,
    data: Vec<u8>,
    size: Option<u64>,
    mode: Option<u32>,
    uid: u32,
    gid: u32,
    dev: (u32, u32),
}

/// The archive described by `text`, absolute paths moved below `abs_root`.
pub fn build(text: &[u8], abs_root: &str) -> Vec<u8> {
    let mut confine = Confine::new(abs_root);
    let mut out = Vec::new();
    let mut pax: Vec<u8> = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((&kind, rest)) = line.split_first() else {
            continue;
        };
        let rest = rest.get(1..).unwrap_or_default();
        match kind {
            b'#' => {}
            b'P' => {
                let (key, value) = split_at_sub(rest, b"=").unwrap_or((rest, b""));
                let lower = key.to_ascii_lowercase();
                let value = if contains(&lower, b"path") || contains(&lower, b"name") {
                    confine.path(value)
                } else {
                    value.to_vec()
                };
                pax.extend(pax_record(key, &value));
            }
            b'L' | b'K' => {
                let mut data = confine.path(rest);
                data.push(0);
                emit(&mut out, &long_header(kind, &data));
            }
            _ => {
                let Some(m) = member(kind, rest, &mut confine) else {
                    continue;
                };
                if !pax.is_empty() {
                    let x = Member {
                        flag: b'x',
                        name: b"PaxHeaders/x".to_vec(),
                        data: std::mem::take(&mut pax),
                        ..Member::default()
                    };
                    emit(&mut out, &x);
                }
                if m.name.len() > 100 {
                    let mut data = m.name.clone();
                    data.push(0);
                    emit(&mut out, &long_header(b'L', &data));
                }
                if m.link.len() > 100 {
                    let mut data = m.link.clone();
                    data.push(0);
                    emit(&mut out, &long_header(b'K', &data));
                }
                emit(&mut out, &m);
            }
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

fn member(kind: u8, rest: &[u8], confine: &mut Confine) -> Option<Member> {
    let (flag, rest) = match kind {
        b'f' => (b'0', rest),
        b'd' => (b'5', rest),
        b'l' => (b'2', rest),
        b'h' => (b'1', rest),
        b'c' => (b'3', rest),
        b'b' => (b'4', rest),
        b'p' => (b'6', rest),
        // `tX NAME`: the flag is the byte after `t`, the line goes on after a space.
        b't' => {
            let (&f, r) = rest.split_first()?;
            let f = if b"xgXLKN".contains(&f) { b'0' } else { f };
            (f, r.get(1..).unwrap_or_default())
        }
        _ => return None,
    };
    let mut m = Member {
        flag,
        ..Member::default()
    };
    let mut rest = rest;
    // Options, from the end.
    while let Some(i) = rest.iter().rposition(|b| *b == b' ') {
        let Some(opt) = rest[i + 1..].strip_prefix(b"!") else {
            break;
        };
        let (k, v) = split_at_sub(opt, b"=").unwrap_or((opt, b""));
        let v = std::str::from_utf8(v).unwrap_or_default();
        match k {
            b"size" => m.size = v.parse().ok(),
            b"mode" => m.mode = u32::from_str_radix(v, 8).ok(),
            b"uid" => m.uid = v.parse().unwrap_or(0),
            b"gid" => m.gid = v.parse().unwrap_or(0),
            _ => {}
        }
        rest = &rest[..i];
    }
    let (head, data) = split_at_sub(rest, b" = ").unwrap_or((rest, b""));
    m.data = unescape(data);
    let (mut name, link) = split_at_sub(head, b" -> ").unwrap_or((head, b""));
    if flag == b'3' || flag == b'4' {
        let nums: Vec<&[u8]> = name.rsplitn(3, |b| *b == b' ').collect();
        if let [minor, major, n] = nums.as_slice() {
            if let (Some(a), Some(b)) = (number(major), number(minor)) {
                m.dev = (a, b);
                name = n;
            }
        }
        // Nodes a stray write could not hurt: null, zero, full; absent loops.
        m.dev = if flag == b'3' {
            (1, [3, 5, 7][(m.dev.0 ^ m.dev.1) as usize % 3])
        } else {
            (7, 240 + m.dev.1 % 8)
        };
    }
    m.name = confine.path(name);
    m.link = confine.path(link);
    Some(m)
}

fn number(s: &[u8]) -> Option<u32> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"\\n") {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn split_at_sub<'a>(s: &'a [u8], sep: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let i = s.windows(sep.len()).position(|w| w == sep)?;
    Some((&s[..i], &s[i + sep.len()..]))
}

/// One pax record: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn long_header(flag: u8, data: &[u8]) -> Member {
    Member {
        flag,
        name: b"././@LongLink".to_vec(),
        data: data.to_vec(),
        ..Member::default()
    }
}

/// Appends `m`'s header and data blocks.
fn emit(out: &mut Vec<u8>, m: &Member) {
    let mut h = [0u8; BLOCK];
    put(&mut h[0..100], &m.name);
    let mode = m.mode.unwrap_or(match m.flag {
        b'5' => 0o755,
        b'2' => 0o777,
        _ => 0o644,
    });
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], u64::from(m.uid));
    octal(&mut h[116..124], u64::from(m.gid));
    let size = m.size.unwrap_or(m.data.len() as u64);
    if size < 1 << 33 {
        octal(&mut h[124..136], size);
    } else {
        // GNU base-256 for sizes past 8 GiB.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], MTIME);
    h[156] = m.flag;
    put(&mut h[157..257], &m.link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put(&mut h[265..297], b"root");
    put(&mut h[297..329], b"root");
    octal(&mut h[329..337], u64::from(m.dev.0));
    octal(&mut h[337..345], u64::from(m.dev.1));
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&m.data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A NUL-terminated octal number filling `field`, truncated if too large.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    put(field, &s.as_bytes()[s.len() - digits..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_keeps_paths_below_the_sentinel() {
        let mut c = Confine::new("/s");
        assert_eq!(c.path(b"/etc/passwd"), b"/s/etc/passwd");
        assert_eq!(c.path(b"a/../../b"), b"a/../../b");
        assert_eq!(c.path(b"../../../../../../../.."), b"../../../../../../x/x");
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record(b"path", b"a");
        assert_eq!(r, b"9 path=a\n");
        let r = pax_record(b"k", &[b'v'; 95]);
        assert_eq!(r.len(), 102);
        assert!(r.starts_with(b"102 "));
    }

    #[test]
    fn headers_have_valid_checksums_and_pad_to_blocks() {
        let a = build(b"f etc/x = hi\\nthere !mode=600\nl l -> /t\n", "/s");
        assert_eq!(a.len() % BLOCK, 0);
        assert_eq!(&a[257..262], b"ustar");
        assert_eq!(&a[..5], b"etc/x");
        assert_eq!(&a[100..107], b"0000600");
        assert_eq!(&a[BLOCK..BLOCK + 8], b"hi\nthere");
        let h = &a[2 * BLOCK..3 * BLOCK];
        assert_eq!(h[156], b'2');
        assert_eq!(&h[157..161], b"/s/t");
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h.to_vec();
        blank[148..156].fill(b' ');
        assert_eq!(stored, blank.iter().map(|b| u64::from(*b)).sum::<u64>());
    }

    #[test]
    fn devices_are_mapped_to_harmless_ones() {
        let a = build(b"b sda 8 0\nc mem 1 1\n", "/s");
        assert_eq!(&a[..3], b"sda");
        assert_eq!(&a[329..336], b"0000007");
        assert_eq!(&a[BLOCK..BLOCK + 3], b"mem");
        assert_eq!(&a[BLOCK + 329..BLOCK + 336], b"0000001");
        assert_ne!(&a[BLOCK + 337..BLOCK + 344], b"0000001");
    }
}
