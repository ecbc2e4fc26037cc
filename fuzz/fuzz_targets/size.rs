//! Size and cpu strings as users type them: `berth create --size`/`pool add
//! --size` (cli/src/output.rs `parse_size`) and the limits of `berth config`
//! and `berth run` (`berth_runtime::cgroup::{parse_size, parse_cpus}`). No
//! input panics, results stay in range, and every size the CLI takes means the
//! same number of bytes to the runtime's parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `parse_size` lives in the `berth` binary, not in the berth_core library, so
/// its file is compiled in here as it is; it only needs this from its crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
enum Format {
    Text,
    Json,
    Csv,
}

#[allow(dead_code)]
#[path = "../../cli/src/output.rs"]
mod output;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let cli = output::parse_size(s);
    if let Ok(n) = cli {
        assert!(n > 0, "{s:?}: cli size 0");
        let _ = output::human(n);
    }
    let runtime = berth_runtime::cgroup::parse_size(s);
    if let Ok(n) = cli {
        match runtime {
            Ok(m) => assert_eq!(m, n, "{s:?}: cli and runtime disagree"),
            Err(e) => panic!("{s:?}: the cli takes it as {n} bytes, the runtime refuses: {e}"),
        }
    }
    if let Ok(c) = berth_runtime::cgroup::parse_cpus(s) {
        assert!(
            c.is_finite() && c > 0.0 && c <= 1_000_000.0,
            "{s:?}: {c} cpus"
        );
    }
});
