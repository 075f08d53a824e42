"""The Python side of celeriac's interop fixture: a Celery app with the same
tasks, under the same names and with the same behaviour, as the Rust worker
in `celery_worker.rs` beside this file.

Run a Python worker on it:

    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 celery -A tasks worker -Q celery

and call the tasks from Python (`tasks.add.delay(2, 3).get()`) or from Rust,
whichever worker, Python or Rust, picks them up.

Environment:

    CELERY_BROKER_URL          broker URL (default redis://127.0.0.1:6379/0)
    CELERY_RESULT_BACKEND      result backend URL (default: the broker URL)
    CELERY_VISIBILITY_TIMEOUT  broker visibility timeout in seconds (kombu default 3600)
    CELERY_PRIORITY_STEPS      kombu priority steps, e.g. 0,5,9 (default 0,3,6,9)
    CELERY_SEP                 kombu priority separator (default "\x06\x16")
    CELERY_RESULT_COMPRESSION  result compression, e.g. gzip (Celery 5.7+ only)
    CELERIAC_READY_FILE        a worker creates this file once it is ready
"""

import os
import time

from celery import Celery
from celery.signals import worker_ready

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", BROKER_URL)

app = Celery("tasks", broker=BROKER_URL, backend=RESULT_BACKEND)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=4,
    result_expires=86400,
)
_transport = {}
if os.environ.get("CELERY_VISIBILITY_TIMEOUT"):
    _transport["visibility_timeout"] = float(os.environ["CELERY_VISIBILITY_TIMEOUT"])
if os.environ.get("CELERY_PRIORITY_STEPS"):
    _transport["priority_steps"] = [
        int(s) for s in os.environ["CELERY_PRIORITY_STEPS"].split(",")
    ]
if os.environ.get("CELERY_SEP"):
    _transport["sep"] = os.environ["CELERY_SEP"]
if _transport:
    app.conf.broker_transport_options = _transport
if os.environ.get("CELERY_RESULT_COMPRESSION"):
    app.conf.result_compression = os.environ["CELERY_RESULT_COMPRESSION"]


class CustomError(Exception):
    """Raised by `tasks.fail_custom`; Python clients that import this module
    get this class back from `AsyncResult.get()`."""


@app.task(name="tasks.add")
def add(x, y):
    """Returns x + y."""
    return x + y


@app.task(name="tasks.echo")
def echo(*args, **kwargs):
    """Returns its arguments as `[args, kwargs]`."""
    return [list(args), kwargs]


@app.task(name="tasks.fail")
def fail(message, *more):
    """Raises `ValueError(message, *more)`."""
    raise ValueError(message, *more)


@app.task(name="tasks.fail_custom")
def fail_custom(message):
    """Raises `tasks.CustomError(message)`."""
    raise CustomError(message)


@app.task(name="tasks.flaky", bind=True, max_retries=10)
def flaky(self, failures):
    """Retries itself (countdown 0.1 s) until it has failed `failures`
    times, then returns its retry count."""
    if self.request.retries < failures:
        raise self.retry(
            countdown=0.1, exc=RuntimeError("try %d" % self.request.retries)
        )
    return self.request.retries


@app.task(name="tasks.sleep")
def sleep(seconds):
    """Sleeps, then returns `seconds`."""
    time.sleep(seconds)
    return seconds


@app.task(name="tasks.sleep_started", track_started=True)
def sleep_started(seconds):
    """`tasks.sleep` with `track_started`: STARTED is stored before it runs."""
    time.sleep(seconds)
    return seconds


_redis = {}


def _client(url):
    import redis

    if url not in _redis:
        _redis[url] = redis.Redis.from_url(url)
    return _redis[url]


@app.task(name="tasks.track")
def track(url, key, member, seconds=0.0):
    """Records an execution in Redis at `url`: `HINCRBY <key>:started
    <member>` first, then sleeps `seconds`, then `HINCRBY <key> <member>`
    and `HINCRBY <key>:by py`. Returns the new count for `member`, so a
    task that ran twice is seen."""
    r = _client(url)
    r.hincrby(key + ":started", member, 1)
    if seconds:
        time.sleep(seconds)
    n = r.hincrby(key, member, 1)
    r.hincrby(key + ":by", "py", 1)
    return n


@worker_ready.connect
def _ready(**_kwargs):
    path = os.environ.get("CELERIAC_READY_FILE")
    if path:
        with open(path, "w") as f:
            f.write("ready")
