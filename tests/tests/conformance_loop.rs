//! Conformance of the loop backend: on a reflink pool (xfs) and on one without
//! reflink (ext4), where snapshot clones are unsupported.
berth_tests::conformance!(loop_xfs_pool, berth_tests::pools::r#loop::setup);
berth_tests::conformance!(loop_ext4_pool, berth_tests::pools::r#loop::setup_ext4);
