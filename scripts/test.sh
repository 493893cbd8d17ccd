#!/usr/bin/env bash
# The churnguard test command: runs every test, including the Kafka integration
# tests, against a real Apache Kafka broker (4.x, single-node KRaft) on loopback.
#
#   bash scripts/test.sh                       # cargo test --workspace --no-fail-fast --all-targets
#   bash scripts/test.sh --test kafka_service  # extra args go to cargo test; a target
#                                              # selection (--test, --lib, ...) replaces
#                                              # the default --all-targets
#   bash scripts/test.sh -- --nocapture        # args after -- go to the test binaries
#
# It starts the broker (scripts/kafka.sh start), exports CHURNGUARD_KAFKA_BROKERS
# and CHURNGUARD_KAFKA_PID, runs cargo test and exits with cargo's status. The
# broker it started is stopped on exit, whatever happens; a broker that was
# already running (started by hand with scripts/kafka.sh start) is reused and
# left running.
#
# Tests that need Kafka are #[ignore]d ("needs a Kafka broker"), so a plain
# `cargo test` reports them as ignored. This script passes --include-ignored to
# the integration test binaries (tests/*.rs), so here they run (and FAIL when
# they cannot reach the broker; see tests/common/mod.rs). Not to the unit tests
# (their #[ignore]d tests are release-mode measurements, see src/sim.rs) nor to
# the criterion bench (run once as a smoke test; it rejects --include-ignored).
# So with the default target set cargo test runs twice: --lib --bins --examples
# --benches, then --test '*' with --include-ignored. A target selection of your
# own gets --include-ignored only when it is all --test NAME.
#
# Also exported when found on PATH, for the Prometheus-based tests (Debian package
# `prometheus`): CHURNGUARD_PROMETHEUS_BIN, CHURNGUARD_PROMTOOL_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BROKER=(bash "$ROOT/scripts/kafka.sh")

started_here=0
out=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [[ -z "$out" ]] || rm -f "$out"
    if ((started_here)); then
        "${BROKER[@]}" stop || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if "${BROKER[@]}" status >/dev/null 2>&1; then
    echo "test.sh: reusing the running broker: $("${BROKER[@]}" status)" >&2
else
    started_here=1
    "${BROKER[@]}" start
fi
eval "$("${BROKER[@]}" env)"
export CHURNGUARD_KAFKA_BROKERS CHURNGUARD_KAFKA_PID
echo "test.sh: CHURNGUARD_KAFKA_BROKERS=$CHURNGUARD_KAFKA_BROKERS CHURNGUARD_KAFKA_PID=$CHURNGUARD_KAFKA_PID" >&2

# tests/prometheus.rs needs Debian's prometheus and promtool: on a fresh machine install them.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's prometheus package (for tests/prometheus.rs)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "test.sh: prometheus/promtool not found; install Debian's prometheus package" >&2
    fi
fi
if [[ -z "${CHURNGUARD_PROMETHEUS_BIN:-}" ]] && command -v prometheus >/dev/null 2>&1; then
    CHURNGUARD_PROMETHEUS_BIN="$(command -v prometheus)"
    export CHURNGUARD_PROMETHEUS_BIN
fi
if [[ -z "${CHURNGUARD_PROMTOOL_BIN:-}" ]] && command -v promtool >/dev/null 2>&1; then
    CHURNGUARD_PROMTOOL_BIN="$(command -v promtool)"
    export CHURNGUARD_PROMTOOL_BIN
fi
echo "test.sh: CHURNGUARD_PROMETHEUS_BIN=${CHURNGUARD_PROMETHEUS_BIN:-<not found>}" \
    "CHURNGUARD_PROMTOOL_BIN=${CHURNGUARD_PROMTOOL_BIN:-<not found>}" >&2

# Split the arguments: cargo's before the first --, the test binaries' after it.
cargo_args=()
bin_args=()
seen_dashes=0
for arg in "$@"; do
    if ((seen_dashes)); then
        bin_args+=("$arg")
    elif [[ "$arg" == "--" ]]; then
        seen_dashes=1
    else
        cargo_args+=("$arg")
    fi
done

# Default to all targets unless the caller picked targets themselves (cargo adds
# target selections up, so `--all-targets --test x` would still build everything).
# An explicit --all-targets is treated as the default.
picked=0
only_integration=1
rest=()
for arg in "${cargo_args[@]+"${cargo_args[@]}"}"; do
    case "$arg" in
    --all-targets) continue ;;
    --test | --test=*) picked=1 ;;
    --lib | --bins | --bin | --bin=* | --tests | --benches | --bench | --bench=* | \
        --examples | --example | --example=* | --doc)
        picked=1
        only_integration=0
        ;;
    esac
    rest+=("$arg")
done

# --no-fail-fast: report every failing test binary, not just the first.
out="$(mktemp)"
status=0
run_cargo_test() {
    echo "test.sh: cargo test $*" >&2
    cargo test "$@" 2>&1 | tee -a "$out" || status=${PIPESTATUS[0]}
}
common=(--workspace --no-fail-fast "${rest[@]+"${rest[@]}"}")
if ((!picked)); then
    run_cargo_test "${common[@]}" --lib --bins --examples --benches -- "${bin_args[@]+"${bin_args[@]}"}"
    run_cargo_test "${common[@]}" --test '*' -- --include-ignored "${bin_args[@]+"${bin_args[@]}"}"
    # Parquet output is an optional feature (heavy to compile): its test runs in a build with it.
    run_cargo_test "${common[@]}" --features parquet --test workbench -- parquet "${bin_args[@]+"${bin_args[@]}"}"
elif ((only_integration)); then
    run_cargo_test "${common[@]}" -- --include-ignored "${bin_args[@]+"${bin_args[@]}"}"
else
    echo "test.sh: targets other than --test NAME picked: no --include-ignored," \
        "so #[ignore]d tests (e.g. the Kafka tests) stay skipped" >&2
    run_cargo_test "${common[@]}" -- "${bin_args[@]+"${bin_args[@]}"}"
fi

if ((started_here)); then
    "${BROKER[@]}" stop || true
    started_here=0
fi

# One closing line over all test binaries: "tests: N passed, N failed, N skipped"
# (skipped = #[ignore]d); also written to $CHURNGUARD_TEST_SUMMARY_FILE when set.
summary="$(awk '/^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed;?$/) p += $(i - 1)
            if ($i ~ /^failed;?$/) f += $(i - 1)
            if ($i ~ /^ignored;?$/) s += $(i - 1)
        }
    }
    END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$out")"
echo "$summary"
if [[ -n "${CHURNGUARD_TEST_SUMMARY_FILE:-}" ]]; then
    echo "$summary" >"$CHURNGUARD_TEST_SUMMARY_FILE"
fi
exit "$status"
