#!/usr/bin/env bash
# The churnguard test command: runs every test, including the Kafka integration
# tests, against a real Kafka-protocol broker (tansu) on loopback.
#
#   bash scripts/test.sh                      # cargo test --workspace --no-fail-fast --all-targets
#   bash scripts/test.sh --test kafka_broker  # extra args go to cargo test; a target
#                                             # selection (--test, --lib, ...) replaces
#                                             # the default --all-targets
#   bash scripts/test.sh -- --nocapture       # args after -- go to the test binaries
#
# It starts the broker (scripts/broker.sh start), exports CHURNGUARD_KAFKA_BROKERS,
# runs cargo test and exits with cargo's status. The broker it started is stopped
# on exit, whatever happens; a broker that was already running (started by hand
# with scripts/broker.sh start) is reused and left running.
#
# Tests that need Kafka read CHURNGUARD_KAFKA_BROKERS and FAIL when it is unset,
# unless CHURNGUARD_SKIP_KAFKA_TESTS=1 (see tests/common/mod.rs). This script
# unsets CHURNGUARD_SKIP_KAFKA_TESTS: here the Kafka tests always run.
#
# Also exported when found on PATH, for the Prometheus-based tests (Debian package
# `prometheus`): CHURNGUARD_PROMETHEUS_BIN, CHURNGUARD_PROMTOOL_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BROKER=(bash "$ROOT/scripts/broker.sh")

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
export CHURNGUARD_KAFKA_BROKERS
unset CHURNGUARD_SKIP_KAFKA_TESTS
echo "test.sh: CHURNGUARD_KAFKA_BROKERS=$CHURNGUARD_KAFKA_BROKERS" >&2

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

# Default to all targets unless the caller picked targets themselves (cargo adds
# target selections up, so `--all-targets --test x` would still build everything).
targets=(--all-targets)
for arg in "$@"; do
    [[ "$arg" == "--" ]] && break
    case "$arg" in
    --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | --bench=* | \
        --examples | --example | --example=* | --doc | --all-targets)
        targets=()
        break
        ;;
    esac
done

# --no-fail-fast: report every failing test binary, not just the first.
out="$(mktemp)"
status=0
cargo test --workspace --no-fail-fast "${targets[@]}" "$@" 2>&1 | tee "$out" || status=${PIPESTATUS[0]}

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
