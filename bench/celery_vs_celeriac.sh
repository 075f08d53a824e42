#!/usr/bin/env bash
# Python Celery vs celeriac on one Redis: the same `tasks.add(i, i)` workload
# enqueued and drained by each, side by side, with the ratio (issue 3).
#
#   bench/celery_vs_celeriac.sh [--db N] [--tasks N] [--results]
#                               [--pools "prefork threads"] [--concurrency C]
#                               [--rust-concurrency C] [--redis redis://HOST:PORT]
#                               [--no-build] [--out FILE]
#
# It FLUSHES Redis database N (default 15; only 12 to 15 are accepted, so
# databases 0-11 are never touched) several times. Databases 10-15 belong to
# the interop tests, so it takes that database with their lease
# (`celeriac-interop:lease`, the protocol of
# crates/celeriac-interop/src/harness/db.rs): it never flushes a database an
# interop test is using, and the tests skip it while the bench holds it. They
# lease the lowest free number first, which is why the default is 15.
#
# Phases, each on a freshly flushed database:
#   1. Celery's producer sends N tasks: a loop of `add.delay`, kept as a
#      snapshot (DUMP), then a loop of `apply_async` on one held producer;
#   2. the snapshot is restored before each drain, so every worker drains
#      byte-identical Python-sent messages: a real `celery worker` (prefork,
#      then `-P threads`; -c = cores, -O fair), then celeriac's worker for
#      the same fixture (crates/celeriac-interop/examples/celery_worker.rs,
#      release build): only the worker differs;
#   3. celeriac's producer (crates/celeriac-bench/examples/enqueue.rs) sends
#      N tasks one by one, then with 64 concurrent loops, then in batches
#      of 1 000; celeriac's worker drains the batch-sent ones;
#   4. `celeriac bench --tasks N` (its own no-op tasks, one process).
# Results are ignored (every message says `ignore_result`) unless --results.
#
# Needs: Redis, python3 (the Celery venv is made by
# crates/celeriac-interop/python/setup.sh when missing), cargo, jq.
# About 1.5-3 minutes for 20 000 tasks on a 2-core machine, after the build.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
db=15
tasks=20000
results=0
pools="prefork threads"
concurrency="$(nproc)"
rust_concurrency=64
redis_base="redis://127.0.0.1:6379"
build=1
out=""

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --db) db="$2"; shift 2 ;;
        --tasks|-n) tasks="$2"; shift 2 ;;
        --results) results=1; shift ;;
        --pools) pools="$2"; shift 2 ;;
        --concurrency|-c) concurrency="$2"; shift 2 ;;
        --rust-concurrency) rust_concurrency="$2"; shift 2 ;;
        --redis) redis_base="${2%/}"; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

die() { echo "celery_vs_celeriac.sh: $*" >&2; exit 1; }
[[ "$db" =~ ^[0-9]+$ ]] && (( db >= 12 && db <= 15 )) \
    || die "--db must be 12 to 15 (databases 0-11 are never touched); got '$db'"
[[ "$tasks" =~ ^[1-9][0-9]*$ ]] || die "--tasks must be a positive number; got '$tasks'"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
url="$redis_base/$db"

cat >&2 <<EOF
################################################################################
#  WARNING: this benchmark runs FLUSHDB on Redis database $db at $redis_base
#  (several times). Nothing else on that database survives. Databases 0-11
#  are never touched. Choose another with --db 12..15.
################################################################################
EOF

venv="${CELERIAC_INTEROP_DIR:-$root/target/interop}/celery-5.7.0"
if [[ ! -x "$venv/bin/celery" ]]; then
    bash "$root/crates/celeriac-interop/python/setup.sh" >&2
fi
py="$venv/bin/python"
side="$root/bench/celery_side.py"

# What the celeriac binaries were built from, for the report.
if (( build )); then
    built_from="commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
    [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]] \
        && built_from+=" plus uncommitted changes in the working tree"
    echo "building the celeriac binaries (release)..." >&2
    (cd "$root" && cargo build --release --quiet -p celeriac-cli --bin celeriac)
    (cd "$root" && cargo build --release --quiet -p celeriac-interop --example celery_worker)
    (cd "$root" && cargo build --release --quiet -p celeriac-bench --example enqueue)
fi
rel="${CARGO_TARGET_DIR:-$root/target}/release"
for bin in "$rel/celeriac" "$rel/examples/celery_worker" "$rel/examples/enqueue"; do
    [[ -x "$bin" ]] || die "missing $bin (run without --no-build)"
done
(( build )) || built_from="binaries not rebuilt (--no-build; celery_worker built $(date -u -r "$rel/examples/celery_worker" '+%Y-%m-%d %H:%M UTC'))"

export CELERY_BROKER_URL="$url"
export CELERY_RESULT_BACKEND="$url"
export CELERIAC_BENCH_RESULTS="$results"
export PYTHONPATH="$root/bench${PYTHONPATH:+:$PYTHONPATH}"
rs_results=()
(( results )) && rs_results=(--results)

work="$(mktemp -d "${TMPDIR:-/tmp}/celery-vs-celeriac.XXXXXX")"
rows="$work/rows.tsv"
token="bench-$$-$RANDOM$RANDOM"
"$py" "$side" lease acquire "$token" --wait 60 >/dev/null
cleanup() { "$py" "$side" lease release "$token" >/dev/null 2>&1 || true; }
trap cleanup EXIT

load() { cut -d' ' -f1 /proc/loadavg; }
flush() { "$py" "$side" lease flush "$token" >/dev/null; }
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$rows"; }
# record LABEL CMD...: runs CMD (printing one JSON line), stores it with the load.
record() {
    local label="$1" l json; shift
    l="$(load)"
    json="$("$@")"
    row "$label" "$l" "$json"
    echo "  $label: $json" >&2
}
# drain LABEL WORKER-DESCRIPTION SOURCE CMD...: drains the full queue with CMD.
drain() {
    local label="$1" worker="$2" source="$3" l json summary; shift 3
    l="$(load)"
    json="$("$py" "$side" drain "$tasks" --timeout 150 --log "$work/$label.log" -- "$@")"
    # celeriac's worker logs `worker summary ok=N failed=N ...` when it stops.
    summary="$(sed 's/\x1b\[[0-9;]*m//g' "$work/$label.log" | grep -a -o 'worker summary.*' | tail -1 || true)"
    json="$(jq -c --arg w "$worker" --arg s "$source" --arg sum "${summary#worker summary }" \
        '. + {worker: $w, source: $s} + (if $sum == "" then {} else {summary: $sum} end)' <<<"$json")"
    row "$label" "$l" "$json"
    echo "  $label: $json" >&2
}

started_at="$(date -u '+%Y-%m-%d %H:%M UTC')"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
t0=$SECONDS
celery=("$venv/bin/celery" -A celery_side worker -Q celery -c "$concurrency" -O fair
        --loglevel WARNING --without-gossip --without-mingle --without-heartbeat)

# 1. Celery's producer, two ways; the first fill is kept as a snapshot.
echo "Celery enqueue" >&2
flush
record py.delay "$py" "$side" enqueue "$tasks" --mode delay
"$py" "$side" snapshot save "$work/python-messages.pickle" >/dev/null
flush
record py.producer "$py" "$side" enqueue "$tasks" --mode producer

# 2. Celery's workers, then celeriac's, each on the same Python-sent messages.
restore() { flush; "$py" "$side" snapshot load "$work/python-messages.pickle" >/dev/null; }
for pool in $pools; do
    echo "Celery worker -P $pool" >&2
    restore
    drain "drain.celery.$pool" "celery worker -P $pool -c $concurrency -O fair" \
        "Celery \`add.delay\`" "${celery[@]}" -P "$pool"
done
echo "celeriac worker on the same messages" >&2
restore
drain drain.celeriac.py "celeriac celery_worker -c $rust_concurrency" "Celery \`add.delay\`" \
    "$rel/examples/celery_worker" worker --broker "$url" -Q celery -c "$rust_concurrency" -l info

# 3. celeriac's producer, three ways; celeriac's worker on the batch-sent messages.
echo "celeriac enqueue" >&2
for mode in sequential concurrent batch; do
    flush
    record "rs.$mode" "$rel/examples/enqueue" --broker "$url" --tasks "$tasks" --mode "$mode" "${rs_results[@]}"
done
drain drain.celeriac.rs "celeriac celery_worker -c $rust_concurrency" "celeriac \`App::publish\` batches" \
    "$rel/examples/celery_worker" worker --broker "$url" -Q celery -c "$rust_concurrency" -l info

# 4. celeriac's own bench (no-op tasks, worker in the same process).
echo "celeriac bench" >&2
flush
l="$(load)"
bench_args=(--broker "$url" bench --tasks "$tasks" --json)
(( results )) && bench_args+=(--results)
bench_json="$("$rel/celeriac" "${bench_args[@]}" 2>"$work/bench.log" | tail -1)"
echo "  bench: $bench_json" >&2
row bench.single "$l" "$(jq -c '{per_s: .enqueue_per_s}' <<<"$bench_json")"
row bench.batch "$l" "$(jq -c '{per_s: .enqueue_batch_per_s}' <<<"$bench_json")"
row bench.drain "$l" "$(jq -c '{per_s: .drain_per_s}' <<<"$bench_json")"
flush

# The report.
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
versions="$("$py" -c 'import sys, celery, kombu, redis; print("Python %d.%d.%d, Celery %s, kombu %s, redis-py %s" % (sys.version_info[:3] + (celery.__version__, kombu.__version__, redis.__version__)))')"
redis_version="$(redis-cli -u "$url" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')"
{
    echo "Run $started_at; celeriac from $built_from;"
    echo "$tasks tasks, results $([[ $results == 1 ]] && echo on || echo 'off (every message ignore_result)'),"
    echo "Redis ${redis_version:-?} at $redis_base db $db; $versions; took $((SECONDS - t0)) s."
    echo "Machine: $(nproc) CPUs ($cpu), load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after."
    echo "Celery workers: \`${celery[*]:1} -P POOL\`."
    echo
    "$py" "$side" report "$rows"
    echo
    echo "celeriac bench: $bench_json"
} | tee "${out:-/dev/null}"
rm -rf "$work"
