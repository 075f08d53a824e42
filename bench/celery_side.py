"""The Python half of bench/celery_vs_celeriac.sh.

It is also the Celery app the Python worker runs (`celery -A celery_side
worker`): the interop fixture's app (crates/celeriac-interop/examples/
tasks.py), with results ignored unless CELERIAC_BENCH_RESULTS=1, so the
producer marks every message `ignore_result` and neither worker stores a
result. The broker comes from CELERY_BROKER_URL, as for the fixture.

Commands (each prints one JSON line on stdout):

    celery_side.py lease acquire TOKEN [--wait S]
        Takes the database from the interop tests' lease protocol
        (`celeriac-interop:lease`, SET NX EX), waiting up to S seconds,
        then FLUSHDB and re-takes it in one MULTI.
    celery_side.py lease flush TOKEN     FLUSHDB again, if the lease is ours.
    celery_side.py lease release TOKEN   Deletes the lease, if it is ours.
    celery_side.py snapshot save|load FILE
        Saves every key of the database but the lease (DUMP) to FILE, or
        restores them (RESTORE), so several workers drain byte-identical
        messages without sending them again.
    celery_side.py enqueue N --mode delay|producer
        Sends N `tasks.add(i, i)`: a loop of `add.delay(i, i)`, or of
        `add.apply_async((i, i), producer=p)` on one held producer.
    celery_side.py drain N [--timeout S] [--log FILE] -- CMD ARGS...
        With N messages waiting in `celery`, starts CMD (a worker), times
        from its first fetch until the queue and kombu's `unacked` hash
        are empty (and, with results on, N results are stored), measures the
        CPU the worker's process tree used over that window, then stops it
        with SIGTERM (SIGKILL after 30 s).
    celery_side.py report FILE
        Prints the Markdown tables of a run from FILE, whose lines are
        `LABEL<TAB>LOADAVG<TAB>JSON` as the shell script writes them.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "crates", "celeriac-interop", "examples"))

import tasks  # noqa: E402  (the interop fixture; after the path is set)

RESULTS = os.environ.get("CELERIAC_BENCH_RESULTS") == "1"

app = tasks.app
if not RESULTS:
    app.conf.task_ignore_result = True

QUEUE = "celery"
LEASE_KEY = "celeriac-interop:lease"
LEASE_TTL = 600


def redis_client():
    import redis

    return redis.Redis.from_url(tasks.BROKER_URL)


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(msg):
    sys.stderr.write("celery_side.py: %s\n" % msg)
    sys.exit(1)


# ---------------------------------------------------------------------------
# The database lease (shared with the interop tests' harness, db.rs)


def lease(action, token, wait):
    r = redis_client()
    if action == "acquire":
        deadline = time.monotonic() + wait
        told = False
        while not r.set(LEASE_KEY, token, nx=True, ex=LEASE_TTL):
            if not told:
                sys.stderr.write(
                    "celery_side.py: the database is leased (an interop test?); "
                    "waiting up to %.0f s\n" % wait
                )
                told = True
            if time.monotonic() > deadline:
                fail(
                    "database is leased by someone else (%s) for %.0f s; "
                    "pick another with --db" % (r.get(LEASE_KEY), wait)
                )
            time.sleep(0.2)
        flush(r, token)
        out({"lease": "acquired"})
    elif action == "flush":
        flush(r, token)
        out({"lease": "flushed"})
    elif action == "release":
        script = (
            "if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) else return 0 end"
        )
        out({"lease": "released", "deleted": r.eval(script, 1, LEASE_KEY, token)})
    else:
        fail("unknown lease action %r" % action)


def flush(r, token):
    with r.pipeline() as p:
        p.watch(LEASE_KEY)
        if p.get(LEASE_KEY) != token.encode():
            fail("the lease on this database is not ours any more")
        p.multi()
        p.flushdb()
        p.set(LEASE_KEY, token, ex=LEASE_TTL)
        p.execute()


def snapshot(action, path):
    r = redis_client()
    if action == "save":
        keys = [k for k in r.scan_iter(count=1000) if k != LEASE_KEY.encode()]
        with r.pipeline(transaction=False) as p:
            for k in keys:
                p.dump(k)
            dumps = p.execute()
        with open(path, "wb") as f:
            pickle.dump(dict(zip(keys, dumps)), f)
        out({"snapshot": "saved", "keys": len(keys)})
    elif action == "load":
        with open(path, "rb") as f:
            dumps = pickle.load(f)
        with r.pipeline(transaction=False) as p:
            for k, v in dumps.items():
                p.restore(k, 0, v, replace=True)
            p.execute()
        out({"snapshot": "loaded", "keys": len(dumps)})
    else:
        fail("unknown snapshot action %r" % action)


# ---------------------------------------------------------------------------
# Producer


def enqueue(n, mode):
    add = tasks.add
    started = time.perf_counter()
    if mode == "delay":
        for i in range(n):
            add.delay(i, i)
    elif mode == "producer":
        with app.producer_or_acquire() as producer:
            for i in range(n):
                add.apply_async((i, i), producer=producer)
    else:
        fail("unknown enqueue mode %r" % mode)
    secs = time.perf_counter() - started
    waiting = redis_client().llen(QUEUE)
    if waiting != n:
        fail("sent %d tasks but %d are waiting in %r" % (n, waiting, QUEUE))
    out({"mode": mode, "tasks": n, "seconds": round(secs, 3), "per_s": round(n / secs)})


# ---------------------------------------------------------------------------
# Drain


def tree_cpu_seconds(pid):
    """User + system CPU of `pid` and all its descendants, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for tid in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # exited while we looked
    return total / tick


def count_results(r):
    return sum(1 for _ in r.scan_iter(match="celery-task-meta-*", count=1000))


def drain(n, timeout, log, cmd):
    r = redis_client()
    waiting = r.llen(QUEUE)
    if waiting != n:
        fail("expected %d waiting messages in %r, found %d" % (n, QUEUE, waiting))
    logf = open(log, "ab") if log else subprocess.DEVNULL
    spawned = time.perf_counter()
    worker = subprocess.Popen(cmd, stdout=logf, stderr=logf)
    first = cpu0 = None
    ok = False
    deadline = spawned + timeout
    try:
        while time.perf_counter() < deadline:
            if worker.poll() is not None:
                fail("the worker exited early with status %s (log: %s)" % (worker.returncode, log))
            with r.pipeline(transaction=False) as p:
                left, unacked = p.llen(QUEUE).hlen("unacked").execute()
            now = time.perf_counter()
            if first is None and left < n:
                first = now
                cpu0 = tree_cpu_seconds(worker.pid)
            if left == 0 and unacked == 0 and (not RESULTS or count_results(r) >= n):
                ok = True
                break
            time.sleep(0.005)
        done = time.perf_counter()
        cpu = tree_cpu_seconds(worker.pid) - (cpu0 or 0.0)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if log:
            logf.close()
    if not ok:
        with r.pipeline(transaction=False) as p:
            left, unacked = p.llen(QUEUE).hlen("unacked").execute()
        fail("drain timed out after %.0f s: %d waiting, %d unacked" % (timeout, left, unacked))
    secs = done - first
    out(
        {
            "tasks": n,
            "startup_s": round(first - spawned, 3),
            "seconds": round(secs, 3),
            "per_s": round(n / secs),
            "cpu_s": round(cpu, 2),
            "cpu_us_per_task": round(cpu * 1e6 / n, 1),
            "results": RESULTS,
        }
    )


# ---------------------------------------------------------------------------
# Report


def fmt_rate(v):
    return "{:,}".format(int(v)) if v is not None else "n/a"


def report(path):
    rows = {}
    order = []
    with open(path) as f:
        for line in f:
            label, load, data = line.rstrip("\n").split("\t", 2)
            rows[label] = dict(json.loads(data), load=load)
            order.append(label)

    def get(label, key="per_s"):
        return rows.get(label, {}).get(key)

    producers = [
        ("py.delay", "Celery", "loop of `add.delay(i, i)`"),
        ("py.producer", "Celery", "loop of `add.apply_async((i, i), producer=p)` on one held producer"),
        ("rs.sequential", "celeriac", "loop of `send_task(\"tasks.add\")...send().await`"),
        ("rs.concurrent", "celeriac", "64 concurrent sending loops"),
        ("rs.batch", "celeriac", "`App::publish` of 1 000 messages at a time"),
        ("bench.single", "celeriac bench", "`bench.noop`, 64 concurrent senders"),
        ("bench.batch", "celeriac bench", "`bench.noop`, batches of 1 000"),
    ]
    print("Enqueue (`tasks.add(i, i)` unless noted; nothing consuming):")
    print()
    print("| producer | how | tasks/s | load avg (1 min) |")
    print("|---|---|---:|---:|")
    for label, who, how in producers:
        if label in rows:
            print("| %s | %s | %s | %s |" % (who, how, fmt_rate(get(label)), rows[label]["load"]))
    print()
    workers = [l for l in order if l.startswith("drain.")]
    print("Drain (the queue full when the worker starts; timed from its first fetch until the")
    print("queue and `unacked` are empty; CPU = the worker's process tree over that window):")
    print()
    print("| worker | messages from | tasks/s | CPU µs/task | start-up s | load avg (1 min) |")
    print("|---|---|---:|---:|---:|---:|")
    for label in workers:
        r = rows[label]
        print(
            "| %s | %s | %s | %s | %s | %s |"
            % (r.get("worker"), r.get("source"), fmt_rate(r["per_s"]),
               r.get("cpu_us_per_task", "n/a"), r.get("startup_s", "n/a"), r["load"])
        )
    if "bench.drain" in rows:
        b = rows["bench.drain"]
        print(
            "| celeriac bench (in-process worker, -c 64) | `bench.noop` from the bench | %s | n/a | n/a | %s |"
            % (fmt_rate(b["per_s"]), b["load"])
        )
    print()
    for label in workers:
        if rows[label].get("summary"):
            print("celeriac's own count (%s, messages from %s): `%s`"
                  % (rows[label]["worker"], rows[label]["source"], rows[label]["summary"]))
            print()

    def ratio(a, b):
        return "%.1f×" % (a / b) if a and b else "n/a"

    py_drains = [rows[l]["per_s"] for l in workers if l.startswith("drain.celery")]
    rs_same = get("drain.celeriac.py")
    py_cpu = [rows[l]["cpu_us_per_task"] for l in workers if l.startswith("drain.celery")]
    rs_cpu = get("drain.celeriac.py", "cpu_us_per_task")
    best_py_enq = max([v for v in (get("py.delay"), get("py.producer")) if v] or [0])
    best_rs_enq = max([v for v in (get("rs.sequential"), get("rs.concurrent"), get("rs.batch")) if v] or [0])
    print("Ratios, celeriac / Celery:")
    print()
    print("| what | Celery | celeriac | ratio |")
    print("|---|---:|---:|---:|")
    print("| enqueue, one loop sending one by one | %s | %s | %s |"
          % (fmt_rate(get("py.delay")), fmt_rate(get("rs.sequential")),
             ratio(get("rs.sequential"), get("py.delay"))))
    print("| enqueue, best way of each | %s | %s | %s |"
          % (fmt_rate(best_py_enq), fmt_rate(best_rs_enq), ratio(best_rs_enq, best_py_enq)))
    if py_drains and rs_same:
        print("| drain of the same Python-sent messages, best Celery pool | %s | %s | %s |"
              % (fmt_rate(max(py_drains)), fmt_rate(rs_same), ratio(rs_same, max(py_drains))))
    if py_cpu and rs_cpu:
        print("| worker CPU per task (µs, lower is better; ratio = Celery / celeriac) | %s | %s | %s |"
              % (min(py_cpu), rs_cpu, ratio(min(py_cpu), rs_cpu)))


def main(argv):
    if len(argv) >= 3 and argv[0] == "lease":
        wait = float(argv[argv.index("--wait") + 1]) if "--wait" in argv else 60.0
        lease(argv[1], argv[2], wait)
    elif len(argv) == 3 and argv[0] == "snapshot":
        snapshot(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "enqueue":
        mode = argv[argv.index("--mode") + 1] if "--mode" in argv else "delay"
        enqueue(int(argv[1]), mode)
    elif len(argv) >= 2 and argv[0] == "drain" and "--" in argv:
        sep = argv.index("--")
        opts, cmd = argv[2:sep], argv[sep + 1:]
        timeout = float(opts[opts.index("--timeout") + 1]) if "--timeout" in opts else 120.0
        log = opts[opts.index("--log") + 1] if "--log" in opts else None
        drain(int(argv[1]), timeout, log, cmd)
    elif len(argv) == 2 and argv[0] == "report":
        report(argv[1])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
