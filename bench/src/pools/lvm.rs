//! lvm: needs device-mapper, which the benchmark does not set up on its own.

use super::Kind;

pub const KIND: Kind = Kind {
    backend: "lvm",
    scratch: |_, _| {
        Err(if std::path::Path::new("/dev/mapper/control").exists() {
            "the benchmark makes no throw-away volume group; measure an existing lvm pool with --pool"
                .to_owned()
        } else {
            "this kernel has no device-mapper (/dev/mapper/control is missing); the tests run lvm in a QEMU guest"
                .to_owned()
        })
    },
    native: |_, _| None,
};
