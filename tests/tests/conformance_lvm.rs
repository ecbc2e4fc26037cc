//! Conformance of the lvm backend against a real device-mapper. This host's
//! kernel has none, so `lvm_in_a_vm` boots Debian's cloud kernel under QEMU with
//! this very test binary as the payload, and the guest runs the `#[ignore]`d
//! `in_vm::` suites below (thin pool and classic mode) one test at a time.

use std::time::Duration;

mod in_vm {
    berth_tests::conformance!(
        #[ignore = "needs device-mapper: runs inside the test VM (lvm_in_a_vm)"]
        thin,
        berth_tests::pools::lvm::setup_thin
    );
    berth_tests::conformance!(
        #[ignore = "needs device-mapper: runs inside the test VM (lvm_in_a_vm)"]
        classic,
        berth_tests::pools::lvm::setup_classic
    );
}

#[test]
fn lvm_in_a_vm() {
    if berth_tests::vm::in_vm() {
        return;
    }
    let expected = in_vm::thin::PROPERTIES.len() + in_vm::classic::PROPERTIES.len();
    // The limit only stops a hung guest; a normal run takes about 3 minutes.
    berth_tests::vm::run_ignored_in_vm("in_vm::", expected, Duration::from_secs(900));
}
