//! Conformance of the zfs backend (zfs-fuse on a file-backed zpool).
berth_tests::conformance!(zfs, berth_tests::pools::zfs::setup);
