"""A Python Celery client for celeriac's interop tests, driven by JSON.

It imports the fixture `tasks` (examples/tasks.py), so exceptions such as
`tasks.CustomError` are rebuilt as Python would rebuild them for a user.

Modes:

    client.py serve
        Reads one JSON request per line on stdin, writes one JSON reply per
        line on stdout (the interop tests drive it this way).
    client.py call TASK [ARGS_JSON [KWARGS_JSON [OPTIONS_JSON]]] [--timeout S]
        Sends a task, waits for its result, prints the reply of `call`.
    client.py raw KEY
        Prints the raw value of a result-backend key (a `celery-task-meta-*`).

Requests (`op` selects):

    {"op": "send", "task": T, "args": [...], "kwargs": {...}, "options": {...}}
        -> {"id": ID}; options go to `app.send_task` (queue, countdown,
        expires, priority, task_id, ignore_result, time_limit,
        soft_time_limit, compression, ...).
    {"op": "get", "id": ID, "timeout": S}          -> an outcome (below)
    {"op": "call", ... as send ..., "timeout": S}  -> an outcome
    {"op": "state", "id": ID}                      -> {"state": S, "info": ...}
    {"op": "send_many", "task": T, "calls": [{"args", "kwargs"}...],
     "options": {...}, "interval": S}              -> {"ids": [...]}
    {"op": "get_many", "ids": [...], "timeout": S} -> {"outcomes": [...]}
    {"op": "raw", "key": K}                        -> {"value": text or null}
    {"op": "quit"}

An outcome is {"id", "state", "ok": true, "value": V} or {"id", "state",
"ok": false, "exc_type", "exc_module", "exc_args", "traceback"}; a bad
request gets {"error": text}.

Values that JSON cannot carry travel as {"$py": KIND, "value": ...}: KIND is
float (nan, inf, -inf), datetime, date, time, decimal, uuid, bytes (base64),
tuple; `repeat` ({"$py": "repeat", "value": S, "n": N}) builds S * N on input
so large arguments need not cross the pipe. Other objects come out as
{"$py": "repr", "type": NAME, "value": repr(obj)}.
"""

import base64
import datetime
import decimal
import json
import math
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import tasks  # noqa: E402  (the fixture; after the path is set)

app = tasks.app

# Every AsyncResult stays referenced: Celery 5.4's `AsyncResult.__del__`
# unsubscribes on the result connection, and when the garbage collector runs
# it in the middle of another SUBSCRIBE on that connection the client
# deadlocks (seen on 5.4.0 + redis-py 5.3).
_keep = []


def decode(v):
    """Turns the JSON form of a value into the Python value."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if isinstance(v, dict):
        kind = v.get("$py")
        if kind is None:
            return {k: decode(x) for k, x in v.items()}
        value = v.get("value")
        if kind == "float":
            return float(value)
        if kind == "datetime":
            return datetime.datetime.fromisoformat(value)
        if kind == "date":
            return datetime.date.fromisoformat(value)
        if kind == "time":
            return datetime.time.fromisoformat(value)
        if kind == "decimal":
            return decimal.Decimal(value)
        if kind == "uuid":
            return uuid.UUID(value)
        if kind == "bytes":
            return base64.b64decode(value)
        if kind == "tuple":
            return tuple(decode(x) for x in value)
        if kind == "repeat":
            return value * int(v["n"])
        raise ValueError("unknown $py kind %r" % kind)
    return v


def encode(v):
    """Turns a Python value into JSON that a strict parser reads."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return {"$py": "float", "value": repr(v)}
        return v
    if isinstance(v, tuple):
        return {"$py": "tuple", "value": [encode(x) for x in v]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    if isinstance(v, datetime.datetime):
        return {"$py": "datetime", "value": v.isoformat()}
    if isinstance(v, datetime.date):
        return {"$py": "date", "value": v.isoformat()}
    if isinstance(v, datetime.time):
        return {"$py": "time", "value": v.isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"$py": "decimal", "value": str(v)}
    if isinstance(v, uuid.UUID):
        return {"$py": "uuid", "value": str(v)}
    if isinstance(v, (bytes, bytearray)):
        return {"$py": "bytes", "value": base64.b64encode(bytes(v)).decode()}
    return {"$py": "repr", "type": type(v).__name__, "value": repr(v)}


def send(req):
    options = {k: decode(x) for k, x in (req.get("options") or {}).items()}
    r = app.send_task(
        req["task"],
        args=decode(req.get("args") or []),
        kwargs=decode(req.get("kwargs") or {}),
        **options
    )
    _keep.append(r)
    return r


def outcome(result, timeout):
    _keep.append(result)
    try:
        value = result.get(timeout=timeout, propagate=True)
        return {"id": result.id, "state": result.state, "ok": True, "value": encode(value)}
    except Exception as e:  # every failure is a reply, never a crash
        return {
            "id": result.id,
            "state": result.state,
            "ok": False,
            "exc_type": type(e).__name__,
            "exc_module": type(e).__module__,
            "exc_args": encode(list(e.args)),
            "traceback": result.traceback,
        }


def handle(req):
    op = req.get("op")
    timeout = float(req.get("timeout", 10))
    if op == "send":
        return {"id": send(req).id}
    if op == "get":
        return outcome(app.AsyncResult(req["id"]), timeout)
    if op == "call":
        return outcome(send(req), timeout)
    if op == "state":
        r = app.AsyncResult(req["id"])
        _keep.append(r)
        return {"id": r.id, "state": r.state, "info": encode(r.info)}
    if op == "send_many":
        ids = []
        interval = float(req.get("interval", 0))
        for call in req["calls"]:
            ids.append(send(dict(req, args=call.get("args"), kwargs=call.get("kwargs"))).id)
            if interval:
                time.sleep(interval)
        return {"ids": ids}
    if op == "get_many":
        return {"outcomes": [outcome(app.AsyncResult(i), timeout) for i in req["ids"]]}
    if op == "raw":
        value = app.backend.client.get(req["key"])
        return {"value": value.decode("utf-8", "replace") if value is not None else None}
    raise ValueError("unknown op %r" % op)


def serve():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            reply = handle(req)
        except Exception as e:
            reply = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(reply, allow_nan=False) + "\n")
        sys.stdout.flush()


def main(argv):
    timeout = 10.0
    if "--timeout" in argv:
        i = argv.index("--timeout")
        timeout = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    if len(argv) >= 1 and argv[0] == "serve":
        serve()
        return 0
    if len(argv) >= 2 and argv[0] == "call":
        req = {
            "op": "call",
            "task": argv[1],
            "args": json.loads(argv[2]) if len(argv) > 2 else [],
            "kwargs": json.loads(argv[3]) if len(argv) > 3 else {},
            "options": json.loads(argv[4]) if len(argv) > 4 else {},
            "timeout": timeout,
        }
        reply = handle(req)
        print(json.dumps(reply, allow_nan=False))
        return 0 if reply.get("ok") else 1
    if len(argv) == 2 and argv[0] == "raw":
        print(json.dumps(handle({"op": "raw", "key": argv[1]})))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
