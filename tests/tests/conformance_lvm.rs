//! Conformance of the lvm backend against a real device-mapper. This host's
//! kernel has none, so `lvm_in_a_vm` boots Debian's cloud kernel under QEMU with
//! the `berth-lvm-guest` payload, which runs every conformance property on a
//! thin-pool and on a classic volume group (see `tests/src/bin/berth-lvm-guest.rs`).

use std::path::Path;
use std::time::Duration;

#[test]
fn lvm_in_a_vm() {
    let guest = Path::new(env!("CARGO_BIN_EXE_berth-lvm-guest"));
    // The limit only stops a hung guest; a normal run takes about 3 minutes.
    berth_tests::vm::run_in_vm(guest, &["conformance"], Duration::from_secs(900));
}
