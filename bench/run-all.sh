#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md in one command: builds release,
# measures the machine's baselines (H: argon2id/s on one core, C: durable
# commits/s), runs the criterion micro-benchmarks briefly, seeds PostgreSQL
# and SQLite, starts `twofold serve` processes, runs every load scenario
# (1 process, then 3 on one PostgreSQL), times rebuild and verify, and
# prints the table. About 10-12 minutes on 2 cores once the build is warm.
#
#   bench/run-all.sh                      # 100k users / 1M events on PostgreSQL
#   SCALE=full bench/run-all.sh           # 1M users / 10M events (12-14 min in all)
#   SCALE_USERS=20000 SCALE_EVENTS=200000 bench/run-all.sh
#
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres); makes and
# drops databases named twofold_bench*. Results: target/bench/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${PG:-postgres://postgres@127.0.0.1:5432}
if [[ "${SCALE:-}" == full ]]; then
    SCALE_USERS=${SCALE_USERS:-1000000}
    SCALE_EVENTS=${SCALE_EVENTS:-10000000}
fi
SCALE_USERS=${SCALE_USERS:-100000}
SCALE_EVENTS=${SCALE_EVENTS:-1000000}
DURATION=${DURATION:-15}
CONCURRENCY=${CONCURRENCY:-16}
POOL=${POOL:-1500}
PORT=${PORT:-28080}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release
OUT=${OUT:-$TARGET_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)}
RESULTS=$OUT/results.jsonl
mkdir -p "$OUT"
started_at=$(date +%s)

log() { printf '\n== %s (%ds)\n' "$*" "$(($(date +%s) - started_at))"; }

SERVERS=()
stop_servers() {
    for pid in "${SERVERS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVERS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    SERVERS=()
}
trap stop_servers EXIT

port_taken() { ss -Htln "sport = :$1" | grep -q .; }

# start_server NAME DATABASE_URL PORT: starts one `twofold serve`, waits
# until it answers, and appends its pid to SERVERS.
start_server() {
    local name=$1 url=$2 port=$3
    if port_taken "$port"; then
        echo "port $port is taken by another process; set PORT=... to another base" >&2
        return 1
    fi
    "$BIN/twofold" serve --database-url "$url" --listen "127.0.0.1:$port" \
        --master-key-file "$OUT/master.key" --mail-dir "$OUT/mail" \
        --login-rate-per-ip 1000000000 >"$OUT/$name.log" 2>&1 &
    local pid=$!
    SERVERS+=("$pid")
    for _ in $(seq 1 600); do
        if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
            # Ours, not something that took the port meanwhile.
            kill -0 "$pid" 2>/dev/null && return 0
            cat "$OUT/$name.log" >&2
            return 1
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$OUT/$name.log" >&2; return 1; }
        sleep 0.1
    done
    echo "server $name did not become ready" >&2
    return 1
}

fresh_db() {
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $1" >/dev/null
    psql "$PG/postgres" -qc "CREATE DATABASE $1" >/dev/null
}

load() { "$BIN/twofold-load" "$@"; }

# SECTIONS="baseline criterion pg rebuild scaleout sqlite" (default: all).
SECTIONS=${SECTIONS:-baseline criterion pg rebuild scaleout sqlite}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

log "build (release)"
cargo build --release -q -p twofold -p twofold-bench
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "postgres: $(psql "$PG/postgres" -Atc 'show server_version') (shared_buffers $(psql "$PG/postgres" -Atc 'show shared_buffers'))"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)"
} | tee "$OUT/machine.txt"

if want baseline; then
log "baselines: H (argon2id on one core) and C (durable commits)"
fresh_db twofold_bench_base
load baseline --postgres-url "$PG/twofold_bench_base" --dir "$OUT" --out "$RESULTS"

fi

if want criterion; then
log "criterion micro-benchmarks (short measurement)"
cargo bench -q -p twofold-bench --bench domain -- \
    --warm-up-time 0.3 --measurement-time 1 --noplot 2>/dev/null | tee "$OUT/criterion.txt" |
    grep -E 'time:' -B1 | grep -v '^--$' || true

fi

if want pg; then
log "seed PostgreSQL: $SCALE_USERS users / $SCALE_EVENTS events"
fresh_db twofold_bench
BENCH_DB=$PG/twofold_bench
load seed --database-url "$BENCH_DB" --users "$SCALE_USERS" --events "$SCALE_EVENTS" \
    --defer-indexes --verify --out "$RESULTS"

log "one server on PostgreSQL at scale"
start_server pg "$BENCH_DB" "$PORT"
PID=${SERVERS[0]}
URL=http://127.0.0.1:$PORT
# Twice the pool: totp-verify takes half of it, and the full sign-ins that
# follow within the same 30-s step need as many fresh codes again.
COMMON=(--url "$URL" --server-pid "$PID" --database-url "$BENCH_DB" --users "$SCALE_USERS"
    --pool "$OUT/pool-pg.json" --pool-size "$((POOL * 2))" --out "$RESULTS" --label pg)
load mem --server-pid "$PID" --label "idle, $SCALE_USERS users" --out "$RESULTS"
load run --scenario password --duration "$DURATION" --concurrency "$CONCURRENCY" "${COMMON[@]}"
load run --scenario enroll --concurrency 8 "${COMMON[@]}"
load run --scenario totp-verify --concurrency "$CONCURRENCY" "${COMMON[@]}"
load run --scenario full-signin --duration "$DURATION" --concurrency "$CONCURRENCY" --commit-stats "${COMMON[@]}"
load run --scenario commands --duration 10 --concurrency "$CONCURRENCY" --commit-stats "${COMMON[@]}"
load run --scenario history --history-commands 200 "${COMMON[@]}"
load run --scenario reads --duration 5 --concurrency 4 "${COMMON[@]}"
load mem --server-pid "$PID" --label "after load, $SCALE_USERS users" --out "$RESULTS"
load run --scenario overload --duration 10 --max-in-flight 256 "${COMMON[@]}"
stop_servers

fi

if want rebuild; then
# A live database: read models built and analysed, then rebuilt from scratch.
log "rebuild and verify (PostgreSQL, 20,000 users / 60,000 events)"
fresh_db twofold_bench_rebuild
load seed --database-url "$PG/twofold_bench_rebuild" --users 20000 --events 60000 \
    --no-history-users --out "$RESULTS"
load rebuild --twofold-bin "$BIN/twofold" --database-url "$PG/twofold_bench_rebuild" \
    --label pg --out "$RESULTS"

fi

if want scaleout; then
log "scale out: 1 then 3 servers on one PostgreSQL"
fresh_db twofold_bench_scale
SCALE_DB=$PG/twofold_bench_scale
load seed --database-url "$SCALE_DB" --users 5000 --no-history-users --out "$RESULTS"
start_server scale1 "$SCALE_DB" $((PORT + 1))
load mem --server-pid "${SERVERS[0]}" --label "idle, 5000 users" --out "$RESULTS"
SCALE_COMMON=(--database-url "$SCALE_DB" --users 5000 --pool "$OUT/pool-scale.json"
    --pool-size "$POOL" --out "$RESULTS")
load run --scenario enroll --concurrency 8 --url "http://127.0.0.1:$((PORT + 1))" "${SCALE_COMMON[@]}" --label scale-1
load run --scenario full-signin --duration "$DURATION" --concurrency "$CONCURRENCY" \
    --url "http://127.0.0.1:$((PORT + 1))" --server-pid "${SERVERS[0]}" "${SCALE_COMMON[@]}" --label scale-1
stop_servers
for n in 1 2 3; do
    start_server "scale3-$n" "$SCALE_DB" $((PORT + n))
done
load run --scenario full-signin --duration "$DURATION" --concurrency "$CONCURRENCY" \
    --url "http://127.0.0.1:$((PORT + 1))" --url "http://127.0.0.1:$((PORT + 2))" --url "http://127.0.0.1:$((PORT + 3))" \
    --server-pid "${SERVERS[0]}" --server-pid "${SERVERS[1]}" --server-pid "${SERVERS[2]}" \
    --commit-stats "${SCALE_COMMON[@]}" --label scale-3
stop_servers

fi

if want sqlite; then
log "SQLite: 20,000 users / 200,000 events"
SQLITE_DB=sqlite://$OUT/bench.db
load seed --database-url "$SQLITE_DB" --users 20000 --events 200000 --out "$RESULTS"
start_server sqlite "$SQLITE_DB" "$PORT"
SQLITE_COMMON=(--url "http://127.0.0.1:$PORT" --server-pid "${SERVERS[0]}" --database-url "$SQLITE_DB" --users 20000
    --pool "$OUT/pool-sqlite.json" --pool-size 600 --out "$RESULTS" --label sqlite)
load run --scenario password --duration 10 --concurrency "$CONCURRENCY" "${SQLITE_COMMON[@]}"
load run --scenario enroll --concurrency 8 "${SQLITE_COMMON[@]}"
load run --scenario totp-verify --concurrency "$CONCURRENCY" "${SQLITE_COMMON[@]}"
load run --scenario commands --duration 10 --concurrency "$CONCURRENCY" "${SQLITE_COMMON[@]}"
load run --scenario history --history-commands 100 "${SQLITE_COMMON[@]}"
stop_servers

fi

log "results ($RESULTS)"
load report "$RESULTS" | tee "$OUT/table.md"
echo
echo "criterion (time per iteration):"
grep -E 'time:' -B1 "$OUT/criterion.txt" | grep -v '^--$' || true
echo
echo "finished in $(($(date +%s) - started_at)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
