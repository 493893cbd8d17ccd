#!/usr/bin/env bash
# A bounded fuzz pass over churnguard's untrusted-input paths: every cargo-fuzz target in fuzz/
# (event parsing, user and clock record decoding, restoring an engine from records), one after
# the other, each for SECONDS_PER_TARGET seconds of libFuzzer time.
#
#   bash scripts/fuzz.sh                  # 60 s per target
#   bash scripts/fuzz.sh 300              # 5 minutes per target
#   bash scripts/fuzz.sh 30 restore       # only the named targets
#   bash scripts/fuzz.sh --seeds          # rewrite the committed seeds (fuzz/src/seeds.rs)
#
# Installs cargo-fuzz (pinned, `cargo install --locked`) when it is missing. cargo-fuzz passes
# rustc flags of nightly's; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them, so no nightly
# is needed. The targets are built without a sanitizer (the code is safe Rust, and librdkafka's
# configure fails when its C dependencies are built with AddressSanitizer) and with debug
# assertions, so an arithmetic overflow fails the run; fuzz/src/lib.rs's allocator refuses any
# allocation over 512 MB and a live heap over 1 GB, and -rss_limit_mb bounds the process.
#
# Each target starts from the committed seeds (fuzz/corpus/<target>) and what earlier runs on
# this machine kept (fuzz/work/<target>, not committed); what it finds goes to the latter.
# One fuzzer at a time, in one process (libFuzzer's default; -jobs would fork workers).
#
# Prints per target the runs executed, the corpus (libFuzzer's in-memory corpus, and the files
# and bytes on disk) and the seconds taken. A crash, panic, timeout or refused allocation ends
# the pass with exit 1 and the reproducer's path (fuzz/artifacts/<target>/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

CARGO_FUZZ_VERSION=0.13.2
write_seeds=0
if [[ "${1:-}" == "--seeds" ]]; then
    write_seeds=1
    shift
fi
seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL=0
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
cargo fuzz --version

# The same build options for build and run, or `cargo fuzz run` would build again. 16 codegen
# units: a build several times faster than cargo-fuzz's default of 1, for somewhat slower runs.
build_opts=(--sanitizer none --debug-assertions --codegen-units 16)
# -timeout: an input that takes 10 s is a hang. -malloc_limit_mb is enforced only under a
# sanitizer; the allocator in fuzz/src/lib.rs applies the same bound here.
fuzz_opts=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1)

build_started=$SECONDS
cargo fuzz build "${build_opts[@]}"
echo "fuzz.sh: build took $((SECONDS - build_started)) s" >&2
seeds_bin="target/$(rustc -vV | sed -n 's/^host: //p')/release/seeds"
if ((write_seeds)); then
    "$seeds_bin" --write
    exit 0
fi
# Stale seeds (a codec or default feature spec change) only make the fuzzers slower to get
# past the layout ids, so they are reported, not failed.
"$seeds_bin" || echo "fuzz.sh: WARNING: the committed seeds are stale (see above)" >&2

if (($# > 0)); then
    targets=("$@")
else
    # The seeds bin is built with the targets but is not one.
    mapfile -t targets < <(cargo fuzz list | grep -vx seeds)
fi

mkdir -p work/logs
report=()
status=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/logs/$t.log"
    marker="$(mktemp)" # artifacts newer than this are this run's
    started=$SECONDS
    echo "fuzz.sh: $t for $seconds s" >&2
    rc=0
    # New inputs are written to the first corpus dir (work/); the seeds are read only.
    cargo fuzz run "${build_opts[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" "${fuzz_opts[@]}" >"$log" 2>&1 || rc=$?
    took=$((SECONDS - started))
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    corp="$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)"
    files="$(find "work/$t" "corpus/$t" -type f | wc -l)"
    bytes="$(find "work/$t" "corpus/$t" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')"
    line="$(printf '%-13s %10s runs  %4d s  libFuzzer corpus %-12s  on disk %5d files %9d bytes' \
        "$t" "${runs:-?}" "$took" "${corp:-?}" "$files" "$bytes")"
    report+=("$line")
    echo "$line"
    if ((rc != 0)); then
        status=1
        tail -40 "$log" >&2
        found="$(find "artifacts/$t" -type f -newer "$marker" | head -1)"
        echo "fuzz.sh: $t FAILED (exit $rc); log: fuzz/$log" >&2
        if [[ -n "$found" ]]; then
            echo "fuzz.sh: reproducer: fuzz/$found" >&2
            echo "fuzz.sh: rerun it: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_opts[*]} $t $found)" >&2
        fi
    fi
    rm -f "$marker"
    ((status == 0)) || break
done

echo
echo "fuzz.sh: $seconds s per target"
printf '%s\n' "${report[@]}"
if ((status != 0)); then
    echo "fuzz.sh: a target failed (see above)"
fi
exit "$status"
