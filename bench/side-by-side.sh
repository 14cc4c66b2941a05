#!/usr/bin/env bash
# Builds of twofold measured one after the other on this machine, each
# with its own load driver, on freshly seeded stores (PostgreSQL, then
# SQLite): password sign-in, enrollment, TOTP verify, full sign-in and
# commands at c=16, as docs/benchmarks.md's round-three table. Each store
# runs the builds in order and then in reverse (before, after, after,
# before), so that a drift of the machine during the run shows as a
# difference between the two runs of one build.
#
#   bench/side-by-side.sh before=DIR after=DIR [more=DIR ...]
#
# Each directory holds `twofold` and `twofold-load` (a `target/release`);
# STORES="pg sqlite" picks the stores.
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres); makes and
# drops databases named twofold_sbs_*. Results: target/bench/sbs-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A BUILDS
NAMES=()
for named in "$@"; do
    NAMES+=("${named%%=*}")
    BUILDS[${named%%=*}]=$(realpath "${named#*=}")
done
ORDER=("${NAMES[@]}")
for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do ORDER+=("${NAMES[i]}"); done
STORES=${STORES:-pg sqlite}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
USERS=${USERS:-20000}
EVENTS=${EVENTS:-200000}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-16}
POOL=${POOL:-1200}
PORT=${PORT:-28180}
OUT=${OUT:-target/bench/sbs-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
RESULTS=$OUT/results.jsonl
started_at=$(date +%s)

log() { printf '\n== %s (%ds)\n' "$*" "$(($(date +%s) - started_at))"; }

SERVER=
stop_server() {
    if [[ -n "$SERVER" ]]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=
    fi
}
trap stop_server EXIT

# measure LABEL BIN_DIR DATABASE_URL
measure() {
    local label=$1 bin=$2 url=$3 dir=$OUT/$1
    mkdir -p "$dir"
    if [[ $url == postgres* ]]; then
        local name=${url##*/}
        psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $name" >/dev/null
        psql "$PG/postgres" -qc "CREATE DATABASE $name" >/dev/null
    else
        rm -f "${url#sqlite://}"*
    fi
    log "$label: seed $USERS users / $EVENTS events"
    "$bin/twofold-load" seed --database-url "$url" --users "$USERS" --events "$EVENTS" \
        --out "$dir/seed.jsonl" >/dev/null
    "$bin/twofold" serve --database-url "$url" --listen "127.0.0.1:$PORT" \
        --master-key-file "$dir/master.key" --mail-dir "$dir/mail" \
        --login-rate-per-ip 1000000000 >"$dir/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
        kill -0 "$SERVER" 2>/dev/null || { cat "$dir/server.log" >&2; return 1; }
        sleep 0.1
    done
    local common=(--url "http://127.0.0.1:$PORT" --server-pid "$SERVER" --database-url "$url"
        --users "$USERS" --pool "$dir/pool.json" --pool-size "$((POOL * 2))"
        --out "$RESULTS" --label "$label")
    log "$label: load"
    "$bin/twofold-load" run --scenario password --duration "$DURATION" --concurrency "$CONCURRENCY" "${common[@]}"
    "$bin/twofold-load" run --scenario enroll --concurrency 8 "${common[@]}"
    "$bin/twofold-load" run --scenario totp-verify --concurrency "$CONCURRENCY" "${common[@]}"
    "$bin/twofold-load" run --scenario full-signin --duration "$DURATION" --concurrency "$CONCURRENCY" "${common[@]}"
    "$bin/twofold-load" run --scenario commands --duration "$DURATION" --concurrency "$CONCURRENCY" "${common[@]}"
    stop_server
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(uname -sr); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    for name in "${NAMES[@]}"; do echo "$name: ${BUILDS[$name]}"; done
} | tee "$OUT/machine.txt"

for store in $STORES; do
    run=0
    for side in "${ORDER[@]}"; do
        run=$((run + 1))
        bin=${BUILDS[$side]}
        if [[ $store == pg ]]; then
            url=$PG/twofold_sbs_$side$run
        else
            url=sqlite://$OUT/$side$run.db
        fi
        measure "$store-$side-$run" "$bin" "$url"
    done
done

log "results ($RESULTS)"
"${BUILDS[${NAMES[-1]}]}/twofold-load" report "$RESULTS" | tee "$OUT/table.md"
echo "finished in $(($(date +%s) - started_at)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
