//! Copies through mounts into a new volume: sized from the data the source
//! holds, refused up front when the pool cannot hold it, and failed with the
//! numbers when it fills up anyway.

use berth_bdev::copy::{CopyOpts, Progress};
use berth_bdev::fsutil::allocated_bytes;
use berth_bdev::generic::{copy_tree_into, with_mounted};
use berth_bdev::space::{copy_size, fill_estimate};
use berth_bdev::{Backend, BdevError, CreateOpts, Revert, VolumeSpec};

use super::{Berth, CopyTo};
use crate::error::Result;

impl Berth {
    /// Copies `source` (held by `src_b`) into the new volume `to.name` through
    /// mounts. A block-backed volume is `to.opts.size` big, else as big as
    /// [`copy_size`] says for the bytes the source holds; either way the pool's
    /// `check_room` is asked first, so a pool that cannot hold the copy refuses
    /// it before anything is made.
    pub(super) fn copy_through_mounts(
        &self,
        src_b: &dyn Backend,
        source: &VolumeSpec,
        to: &CopyTo<'_>,
        copy: &CopyOpts,
        rv: &mut Revert,
        progress: &dyn Progress,
    ) -> Result<VolumeSpec> {
        let scratch = self.scratch();
        let block = to.backend.caps().block_backed;
        let v = with_mounted(src_b, source, &scratch, true, |from| {
            // What the copy writes: the source's allocated blocks (du, not df,
            // so a source sharing its filesystem counts only its own tree).
            let used = allocated_bytes(from)?;
            let opts = if block {
                let opts = sized(&to.opts, used, to.name)?;
                to.backend.check_room(&opts, used)?;
                opts
            } else {
                to.opts.clone()
            };
            let v = to.backend.create(to.name, &opts, rv)?;
            match copy_tree_into(from, to.backend, &v, &scratch, copy, progress) {
                Ok(_) => Ok(v),
                Err(e) => Err(explain(e, to, &opts, used)),
            }
        })?;
        Ok(v)
    }
}

/// `opts` with the size of a block-backed copy of `used` bytes filled in when
/// none was asked for; an asked-for size too small for the data is refused.
fn sized(opts: &CreateOpts, used: u64, name: &str) -> Result<CreateOpts, BdevError> {
    let fs = opts.fstype.unwrap_or_default();
    let size = match opts.size {
        None => copy_size(used, fs),
        Some(size) => {
            let needs = fill_estimate(fs, size, used);
            if needs > size {
                return Err(BdevError::SizeTooSmall {
                    name: name.to_owned(),
                    size,
                    used,
                    needs,
                    fs,
                });
            }
            size
        }
    };
    Ok(CreateOpts {
        size: Some(size),
        fstype: opts.fstype,
    })
}

/// Names what was full when a copy failed. The copy engine knows only the path
/// it wrote to: that is the pool for a tree volume and the new volume itself for
/// a block-backed one. Writes a block-backed volume lost point at its pool's
/// store when that has no room left now.
fn explain(e: BdevError, to: &CopyTo<'_>, opts: &CreateOpts, used: u64) -> BdevError {
    let block = to.backend.caps().block_backed;
    match e {
        BdevError::NoSpace {
            needed, available, ..
        } => BdevError::NoSpace {
            target: if block {
                format!("volume {}", to.name)
            } else {
                format!("pool {}", to.pool)
            },
            needed,
            available,
        },
        BdevError::WriteLost { .. } if block => match to.backend.check_room(opts, used) {
            Err(full @ BdevError::NoSpace { .. }) => {
                tracing::warn!(error = %e, "the copy lost writes");
                full
            }
            _ => e,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::FsType;

    const MIB: u64 = 1 << 20;

    #[test]
    fn copies_are_sized_from_the_data_unless_asked() {
        let none = CreateOpts::default();
        let o = sized(&none, 81 * MIB, "c").unwrap();
        assert_eq!(o.size, Some(166 * MIB));
        // Sized from the data alone: a copy of the copy is no bigger.
        assert_eq!(sized(&o, 81 * MIB, "c2").unwrap().size, Some(166 * MIB));
        let xfs = CreateOpts {
            size: None,
            fstype: Some(FsType::Xfs),
        };
        assert_eq!(sized(&xfs, MIB, "c").unwrap().size, Some(300 * MIB));
        let asked = CreateOpts {
            size: Some(512 * MIB),
            fstype: None,
        };
        assert_eq!(sized(&asked, 81 * MIB, "c").unwrap().size, Some(512 * MIB));
    }

    #[test]
    fn a_size_too_small_for_the_data_is_refused() {
        let small = CreateOpts {
            size: Some(50 * MIB),
            fstype: None,
        };
        let e = sized(&small, 81 * MIB, "bigc").unwrap_err().to_string();
        assert!(e.contains("bigc") && e.contains("50.0 MiB"), "{e}");
        assert!(e.contains("81.0 MiB of data"), "{e}");
    }
}
