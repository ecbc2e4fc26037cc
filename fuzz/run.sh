#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, default 30, as
# many at once as there are cores, starting from the seeds in
# fuzz/corpus/<target> (new inputs go to a scratch corpus, so the committed
# seeds stay as they are). Exits non-zero if a target panics, hangs (one input
# over 10 s) or runs out of memory; the input is kept in fuzz/artifacts/<target>/
# and `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <that file>` replays it.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET…]
#   FUZZ_PROFILE=dev|release  dev (unoptimized, ~2.5x cheaper to build) unless
#                             SECONDS is 120 or more, where speed pays off.
#   FUZZ_SANITIZER=address    ASan; default none: the fuzzed code is safe Rust.
#
# cargo-fuzz wants a nightly compiler for its -Z flags; RUSTC_BOOTSTRAP=1 lets
# the stable one take them. tar_import needs root (device nodes, owners).
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(tar_import store_toml seccomp volume_spec size)
fi
profile=${FUZZ_PROFILE:-$([ "$secs" -ge 120 ] && echo release || echo dev)}
flags=(--sanitizer "${FUZZ_SANITIZER:-none}" "--$profile")
CARGO_FUZZ_VERSION=0.13.2

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    # A debug build installs in half the time and runs as well for this.
    cargo install --locked --debug cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# The targets' temp dirs (store root, tar sentinels) go here, on tmpfs when
# there is one (the store fsyncs every write), and are removed with it.
shm=/dev/shm
[ -d "$shm" ] && [ -w "$shm" ] || shm=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$shm/berth-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

start=$(date +%s)
if ! CARGO_PROFILE_DEV_DEBUG=0 cargo fuzz build "${flags[@]}" >"$scratch/build.log" 2>&1; then
    tail -n 60 "$scratch/build.log" >&2
    echo "fuzz build failed" >&2
    exit 1
fi
echo "build ($profile): $(($(date +%s) - start)) s"

# One target: its log in $scratch/T.log, its summary line in $scratch/T.result.
fuzz_one() {
    local t=$1 status=ok runs cov dict=() t0
    t0=$(date +%s)
    mkdir -p "$scratch/corpus/$t"
    [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
    CARGO_PROFILE_DEV_DEBUG=0 cargo fuzz run "${flags[@]}" "$t" "$scratch/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 "${dict[@]}" >"$scratch/$t.log" 2>&1 || status=FAILED
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$scratch/$t.log" | tail -n 1 || true)
    printf '%-12s %-6s %9s execs in %3d s  %s\n' "$t" "$status" "${runs:-?}" \
        "$(($(date +%s) - t0))" "$cov" >"$scratch/$t.result"
}

jobs=$(nproc)
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    fuzz_one "$t" &
done
wait

failed=()
for t in "${targets[@]}"; do
    cat "$scratch/$t.result"
    if grep -q FAILED "$scratch/$t.result"; then
        failed+=("$t")
        grep -v '^#[0-9]' "$scratch/$t.log" | tail -n 40 >&2
    fi
done
echo "total: $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
