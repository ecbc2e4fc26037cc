//! Conformance of the btrfs backend.
berth_tests::conformance!(btrfs, berth_tests::pools::btrfs::setup);
