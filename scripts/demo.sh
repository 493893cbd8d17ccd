#!/usr/bin/env bash
# The main job on an embedded default: builds churnguard and runs `churnguard demo`, which
# starts an in-process Kafka-protocol broker, the simulator producing events on an accelerated
# clock, and the full streaming service, and prints interventions live. Needs nothing running.
#
#   bash scripts/demo.sh                    # until Ctrl-C
#   bash scripts/demo.sh --duration 30s     # stop by itself and print a summary
#
# Arguments go to `churnguard demo` (see `churnguard demo --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -x target/release/churnguard ]]; then
    echo "Building churnguard in release mode: its Rust dependencies, and librdkafka from C sources." >&2
    echo "The first build takes several minutes (7 to 13 on 2 cores); cargo's progress follows." >&2
else
    echo "Building churnguard in release mode (up to date in seconds unless the sources changed)." >&2
fi
cargo build --release
exec ./target/release/churnguard demo "$@"
