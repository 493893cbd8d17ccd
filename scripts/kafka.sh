#!/usr/bin/env bash
# A real Apache Kafka 4.x broker (single-node KRaft: broker and controller in one
# JVM) on loopback, for churnguard's integration tests.
#
# Usage: scripts/kafka.sh install|start|stop|status|env|pin
#
#   install  Copy the broker's jars from Maven Central (scripts/kafka/pom.xml, via
#            `mvn dependency:copy-dependencies`) into $CACHE/kafka-<version>/libs
#            and check the sha256 of every jar against scripts/kafka/jars.sha256:
#            a mismatch, a missing or an unlisted jar fails loudly. When the jars
#            are already there, only the checksums are checked (well under 1 s).
#            Needs java (17+) and mvn.
#   start    Install if needed, format a fresh storage dir (random cluster id),
#            pick two free loopback ports (broker listener, controller), write
#            server.properties, run kafka.Kafka in the background and wait until
#            it answers a Kafka Metadata request listing itself (up to 60 s).
#            Already running: says so, exit 0.
#   stop     CONT (in case a test left it frozen), TERM, KILL after 10 s; remove
#            its temp dirs (data, config). The log is kept.
#   status   Print "running 127.0.0.1:PORT (pid N)" (exit 0) or "not running" (exit 3).
#   env      Print, for eval:
#              export CHURNGUARD_KAFKA_BROKERS=127.0.0.1:PORT
#              export CHURNGUARD_KAFKA_PID=N
#            The pid is the broker's JVM: `kill -STOP` freezes the broker (an
#            outage: connections stay open, nothing answers), `kill -CONT` resumes it.
#   pin      Maintainers, after changing a version in scripts/kafka/pom.xml: copy
#            the jars afresh and rewrite scripts/kafka/jars.sha256 from them.
#
# Start time: outside CI, the first broker run on a machine dumps a class-data
# sharing archive of the classes it loaded (JVM -XX:ArchiveClassesAtExit, written
# as it exits on stop's TERM: that stop takes 5-15 s longer) next to the jars;
# later starts map it (-XX:SharedArchiveFile) and the broker comes up in about
# half the time. Under CI=true no archive is dumped (one start per fresh machine
# gains nothing), but one that exists is used. The JVM checks the archive against
# the classpath and its own build and ignores a stale one; a new install or
# another java makes a new one.
#
# Files: the jars in $CACHE/kafka-<version>/libs (CACHE: $CHURNGUARD_KAFKA_CACHE,
# default ${XDG_CACHE_HOME:-~/.cache}/churnguard; Maven's own downloads stay in
# ~/.m2). The running broker's state in .cache/kafka/ (gitignored): state (pid,
# ports, dirs), broker.log (its log, kept after stop). Data and config in a temp
# dir, removed by stop.
#
# Environment:
#   CHURNGUARD_KAFKA_PORT      fixed broker port for `start` (default: a free one)
#   CHURNGUARD_KAFKA_JVM_OPTS  JVM options (default: see JVM_OPTS below)
#   CHURNGUARD_KAFKA_CDS       0 to not use or make the class-data archive (see below)
#   CHURNGUARD_KAFKA_CACHE     where the jars go (see above)
#   JAVA, MVN                  the java and mvn to use (default: from PATH)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly POM="$ROOT/scripts/kafka/pom.xml"
readonly SUMS="$ROOT/scripts/kafka/jars.sha256"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
readonly KAFKA_VERSION
[[ -n "$KAFKA_VERSION" ]] || {
    echo "kafka.sh: ERROR: no <kafka.version> in $POM" >&2
    exit 1
}
readonly CACHE="${CHURNGUARD_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/churnguard}"
readonly LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
readonly STATE_DIR="$ROOT/.cache/kafka"
readonly STATE="$STATE_DIR/state"
readonly LOG="$STATE_DIR/broker.log"
readonly START_TIMEOUT_S=60
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
# Lean flags for a quick start on a small machine: a small heap, the serial GC,
# only the C1 compiler (the tests are short; C2 warm-up costs CPU the tests need).
# See docs/KAFKA.md for measurements.
read -r -a JVM_OPTS <<<"${CHURNGUARD_KAFKA_JVM_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss1m -Djava.awt.headless=true}"

say() { echo "kafka.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found on PATH; on Debian: apt-get install --no-install-recommends $2"
}

# Copies the pom's runtime jars into directory $1 (created, must not exist).
mvn_copy() {
    need "$MVN" maven
    need "$JAVA" openjdk-17-jre-headless
    local out="$1" log
    log="$(mktemp)"
    say "copying Kafka $KAFKA_VERSION jars from Maven Central (mvn dependency:copy-dependencies)"
    if ! "$MVN" -B -q -f "$POM" -Dmaven.repo.local="${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}" \
        dependency:copy-dependencies -DoutputDirectory="$out" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "mvn dependency:copy-dependencies failed for $POM (output above)"
    fi
    rm -f "$log"
}

# 0 when directory $1 holds exactly the jars of $SUMS, each with its sha256.
# Prints what is wrong otherwise.
verify_jars() {
    local dir="$1" want got
    [[ -d "$dir" ]] || {
        echo "no directory $dir"
        return 1
    }
    want="$(awk '{print $2}' "$SUMS" | sed 's/^\*//' | sort)"
    got="$(cd "$dir" && find . -maxdepth 1 -type f -printf '%f\n' | sort)"
    if [[ "$want" != "$got" ]]; then
        echo "the jars differ from ${SUMS#"$ROOT"/}:"
        diff <(echo "$want") <(echo "$got") | sed -n 's/^</  missing:  /p; s/^>/  unlisted: /p'
        return 1
    fi
    (cd "$dir" && sha256sum --check --quiet --strict "$SUMS" 2>&1) || return 1
}

cmd_install() {
    [[ -s "$SUMS" ]] || die "${SUMS#"$ROOT"/} is missing or empty (scripts/kafka.sh pin writes it)"
    if [[ -d "$LIBS" ]]; then
        local why
        if why="$(verify_jars "$LIBS")"; then
            say "Kafka $KAFKA_VERSION already installed in $LIBS ($(wc -l <"$SUMS") jars, sha256 ok)"
            return 0
        fi
        say "the installed jars in $LIBS do not match; installing again:"
        echo "$why" >&2
    fi
    mkdir -p "$(dirname "$LIBS")"
    local tmp="$LIBS.tmp.$$" why
    rm -rf "$tmp"
    mvn_copy "$tmp"
    if ! why="$(verify_jars "$tmp")"; then
        echo "$why" >&2
        rm -rf "$tmp"
        die "CHECKSUM MISMATCH: the jars Maven delivered for Kafka $KAFKA_VERSION do not match \
${SUMS#"$ROOT"/} (nothing installed). If scripts/kafka/pom.xml was changed on purpose, \
run scripts/kafka.sh pin and review the diff. Otherwise a corrupt copy in Maven's local \
repository (${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}) can cause this: delete the jar named above there and retry."
    fi
    rm -rf "$LIBS"
    rm -f "$(dirname "$LIBS")"/classes-*.jsa # made for the old jars
    mv "$tmp" "$LIBS"
    say "installed Kafka $KAFKA_VERSION in $LIBS ($(wc -l <"$SUMS") jars, sha256 ok)"
}

cmd_pin() {
    local tmp
    tmp="$(mktemp -d)"
    mvn_copy "$tmp/libs"
    (cd "$tmp/libs" && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | xargs sha256sum) >"$SUMS"
    rm -rf "$tmp"
    say "wrote ${SUMS#"$ROOT"/} ($(wc -l <"$SUMS") jars for Kafka $KAFKA_VERSION); review with git diff"
}

# Value of key $1 in the state file.
state_get() { sed -n "s/^$1=//p" "$STATE" 2>/dev/null | head -1; }

# Pid of the running broker, or nothing. Only trusts the state file when that
# pid is still our kafka.Kafka with our config (pids get reused).
running_pid() {
    [[ -f "$STATE" ]] || return 1
    local pid conf
    pid="$(state_get pid)"
    conf="$(state_get config)"
    [[ "$pid" =~ ^[0-9]+$ && -n "$conf" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$conf" || return 1
    echo "$pid"
}

# 0 when no TCP socket (any state, IPv4 or IPv6) uses local port $1.
port_unused() {
    local hex
    hex="$(printf '%04X' "$1")"
    ! awk -v p=":$hex" 'NR > 1 && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A port in 20000-32767 (below Linux's ephemeral range, so outgoing connections
# do not take it meanwhile) that no socket uses, other than $1.
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12768))
        [[ "$p" != "${1:-}" ]] && port_unused "$p" && {
            echo "$p"
            return 0
        }
    done
    die "no free port found in 20000-32767"
}

# 0 when 127.0.0.1:$1 answers a Kafka Metadata request (v4, no topics) with a
# broker list whose first entry is node 1: the broker is up and registered.
metadata_probe() {
    local hex
    # Request: size 23, api_key 3 (Metadata), version 4, correlation id 1,
    # client id "kafka.sh", topics: empty array, allow_auto_topic_creation false.
    # Response: size, correlation id, throttle_time_ms, brokers count, node_id.
    # shellcheck disable=SC2016 # expanded by the inner bash, port as $1
    hex="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x00\x00\x00\x17\x00\x03\x00\x04\x00\x00\x00\x01\x00\x08kafka.sh\x00\x00\x00\x00\x00" >&3
        head -c 20 <&3 | od -An -v -tx1 | tr -d " \n"
    ' _ "$1" 2>/dev/null)" || return 1
    [[ ${#hex} -eq 40 && "${hex:8:8}" == 00000001 && "${hex:24:8}" != 00000000 && "${hex:32:8}" == 00000001 ]]
}

random_cluster_id() {
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not
    # starting with '-' (as org.apache.kafka.common.Uuid.randomUuid()).
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    echo "$id"
}

write_config() {
    local dir="$1" port="$2" cport="$3"
    cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh: a throwaway single-node KRaft broker for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data

# One node: every internal topic with one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1

# Quick for tests: no wait for more members before the first rebalance.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions=1

# Few threads on a small machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4

# A deleted topic's files go after 1 s instead of 60: the benches delete the topics they are
# done with, so that the next round does not share the disk and page cache with their files.
log.segment.delete.delay.ms=1000
EOF
    cat >"$dir/log4j2.properties" <<'EOF'
# Kafka's INFO log is verbose but is what explains a failure; config dumps are cut.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

# The jars in the order of $SUMS, as a classpath: a fixed order (a wildcard
# expands in directory order), so the class-data archive matches it.
classpath() {
    awk -v d="$LIBS" '{ sub(/^\*/, "", $2); printf "%s%s/%s", (NR > 1 ? ":" : ""), d, $2 }' "$SUMS"
}

# Where the class-data archive for this java and these jars lives.
cds_archive() {
    local java key
    java="$(readlink -f "$(command -v "$JAVA")")"
    key="$( (echo "$java" && stat -c '%s %Y' "$java" "$(dirname "$java")"/../lib/server/libjvm.so 2>/dev/null &&
        cat "$SUMS") | sha256sum | cut -c1-16)"
    echo "$(dirname "$LIBS")/classes-$key.jsa"
}

# Launch once: 0 when up, 1 when it died early (e.g. lost a port race), 2 on timeout.
launch() {
    local dir="$1" port="$2" cport="$3"
    local cp log4j="-Dlog4j2.configurationFile=$dir/log4j2.properties" cds=()
    cp="$(classpath)"
    if [[ "${CHURNGUARD_KAFKA_CDS:-1}" != 0 ]]; then
        local jsa
        jsa="$(cds_archive)"
        if [[ -s "$jsa" ]]; then
            cds=(-XX:SharedArchiveFile="$jsa" '-Xlog:cds*=error')
        elif [[ "${CI:-}" != true ]]; then
            cds=(-XX:ArchiveClassesAtExit="$dir/classes.jsa" '-Xlog:cds*=error') # moved to $jsa by stop
        fi
    fi
    write_config "$dir" "$port" "$cport"
    rm -rf "$dir/data"
    # The storage tool maps the archive too, but never dumps one.
    local fmt_cds=()
    [[ "${cds[0]:-}" != -XX:SharedArchiveFile=* ]] || fmt_cds=("${cds[@]}")
    if ! "$JAVA" "${JVM_OPTS[@]}" "${fmt_cds[@]+"${fmt_cds[@]}"}" "$log4j" -cp "$cp" kafka.tools.StorageTool format \
        --cluster-id "$(random_cluster_id)" --config "$dir/server.properties" >"$LOG" 2>&1; then
        say "formatting the storage failed; log:"
        cat "$LOG" >&2
        exit 1
    fi
    # stdin/stdout/stderr all redirected, so callers' pipes never wait on the broker.
    nohup "$JAVA" "${JVM_OPTS[@]}" "${cds[@]+"${cds[@]}"}" "$log4j" -Dkafka.logs.dir="$dir" -cp "$cp" \
        kafka.Kafka "$dir/server.properties" </dev/null >>"$LOG" 2>&1 &
    local pid=$!
    local dumps=0
    [[ "${cds[0]:-}" != -XX:ArchiveClassesAtExit=* ]] || dumps=1
    printf 'pid=%s\nport=%s\ncontroller_port=%s\ndir=%s\nconfig=%s\nlog=%s\nversion=%s\ncds_dump=%s\n' \
        "$pid" "$port" "$cport" "$dir" "$dir/server.properties" "$LOG" "$KAFKA_VERSION" "$dumps" >"$STATE"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$STATE"
            return 1
        fi
        if metadata_probe "$port"; then
            return 0
        fi
        sleep 0.2
    done
    return 2
}

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        say "already running on 127.0.0.1:$(state_get port) (pid $pid, log $(state_get log))"
        return 0
    fi
    rm -f "$STATE"
    cmd_install
    local t0 attempts=3 port cport dir rc
    t0="$(date +%s%N)"
    [[ -z "${CHURNGUARD_KAFKA_PORT:-}" ]] || attempts=1
    for ((i = 1; i <= attempts; i++)); do
        port="${CHURNGUARD_KAFKA_PORT:-$(free_port)}"
        cport="$(free_port "$port")"
        dir="$(mktemp -d "${TMPDIR:-/tmp}/churnguard-kafka.XXXXXX")"
        rc=0
        launch "$dir" "$port" "$cport" || rc=$?
        if ((rc == 0)); then
            local ms=$((($(date +%s%N) - t0) / 1000000))
            say "Kafka $KAFKA_VERSION running on 127.0.0.1:$port (pid $(state_get pid), controller :$cport," \
                "up in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s); log: $LOG"
            return 0
        fi
        if ((rc == 2)); then
            say "Kafka did not answer on 127.0.0.1:$port within ${START_TIMEOUT_S}s; log tail ($LOG):"
            tail -n 40 "$LOG" >&2 || true
            cmd_stop >/dev/null 2>&1 || true
            exit 1
        fi
        say "Kafka exited during start on ports $port/$cport (attempt $i/$attempts); log tail ($LOG):"
        grep -E 'ERROR|Exception|Address already in use' "$LOG" | tail -n 20 >&2 || tail -n 20 "$LOG" >&2 || true
        rm -rf "$dir"
    done
    die "could not start Kafka (log: $LOG)"
}

cmd_stop() {
    local pid dir wait_s=10
    dir="$(state_get dir)"
    # Dumping the class-data archive at exit takes a while on a busy machine.
    [[ "$(state_get cds_dump)" != 1 ]] || wait_s=60
    if pid="$(running_pid)"; then
        kill -CONT "$pid" 2>/dev/null || true # a test may have left it frozen (SIGSTOP)
        kill -TERM "$pid" 2>/dev/null || true
        ((wait_s == 10)) || say "waiting for Kafka to exit and write its class-data archive (once)"
        for _ in $(seq $((wait_s * 10))); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "Kafka (pid $pid) ignored TERM for ${wait_s}s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        elif [[ -n "$dir" && -s "$dir/classes.jsa" ]]; then
            # Exited on TERM: the archive it dumped at exit is complete.
            local jsa
            jsa="$(cds_archive)"
            cp "$dir/classes.jsa" "$jsa.tmp.$$" && mv -f "$jsa.tmp.$$" "$jsa" &&
                say "saved the class-data archive for quicker starts: $jsa"
        fi
        say "stopped Kafka (pid $pid); log: $LOG"
    else
        say "not running"
    fi
    # Only ever remove a dir this script made.
    if [[ -n "$dir" && "$dir" == */churnguard-kafka.* && -d "$dir" ]]; then
        rm -rf "$dir"
    fi
    rm -f "$STATE"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running 127.0.0.1:$(state_get port) (pid $pid, Kafka $(state_get version), log $(state_get log))"
    else
        echo "not running"
        return 3
    fi
}

cmd_env() {
    local pid
    pid="$(running_pid)" || die "Kafka not running (scripts/kafka.sh start)"
    echo "export CHURNGUARD_KAFKA_BROKERS=127.0.0.1:$(state_get port)"
    echo "export CHURNGUARD_KAFKA_PID=$pid"
}

mkdir -p "$STATE_DIR"
case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
pin) cmd_pin ;;
*)
    echo "usage: $0 install|start|stop|status|env|pin" >&2
    exit 2
    ;;
esac
