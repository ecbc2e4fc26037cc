//! Conformance of the qcow2 backend (qemu-storage-daemon FUSE export + loop).
berth_tests::conformance!(qcow2, berth_tests::pools::qcow2::setup);
