//! Conformance of the aufs backend.
berth_tests::conformance!(aufs, berth_tests::pools::aufs::setup);
