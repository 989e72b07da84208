"""No code execution through the job queue: jobs are JSON and the workers run
only pricepipe's job functions (issue 16). The attacker here can write to
Redis, as any local process could, and plants jobs the way rq's own client
would: a pickle that runs a shell command when unpickled (in the job's data
and in its meta), and a JSON job naming ``os.system``. The real ``pricepipe
jobs worker --burst`` runs them: no command runs, each fails cleanly, and the
worker goes on to run the legitimate job queued behind them."""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from pricepipe.keys import Keys
from pricepipe.workers import jobqueue, jobs


class _Touch:
    """Unpickling this runs ``touch PATH`` (what an attacker's pickle does)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


def _evil_pickle(path: Path) -> bytes:
    # A job tuple (func, instance, args, kwargs) as rq pickles it, with the
    # payload as an argument: it runs as soon as the tuple is unpickled.
    return pickle.dumps(("pricepipe.workers.jobs.maintain_partitions", None, (_Touch(path),), {}))


def test_a_crafted_pickle_is_real_but_never_runs_in_the_worker(
        tmp_path: Path, r: Any, keys: Keys, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # The payload works: unpickled here, it creates its file.
    control = tmp_path / "control"
    pickle.loads(_evil_pickle(control))  # noqa: S301 - the point of the test
    assert control.exists()

    name = keys.rq_queue(jobs.MAINTENANCE)
    markers = {what: tmp_path / what for what in ("data", "meta", "json")}
    attacker = Queue(name, connection=r)  # rq's default: pickle
    # 1. A pickle as the job's data.
    by_data = attacker.enqueue("pricepipe.workers.jobs.maintain_partitions")
    r.hset(by_data.key, "data", zlib.compress(_evil_pickle(markers["data"])))
    # 2. A harmless JSON job whose meta is a pickle (rq reads meta on every fetch).
    by_meta = Queue(name, connection=r, serializer=JSONSerializer).enqueue(
        "pricepipe.workers.jobs.maintain_partitions")
    r.hset(by_meta.key, "meta", pickle.dumps({"x": _Touch(markers["meta"])}))
    # 3. JSON naming a callable that is not one of pricepipe's jobs.
    by_json = Queue(name, connection=r, serializer=JSONSerializer).enqueue(
        "os.system", f"touch {shlex.quote(str(markers['json']))}")
    # Then a legitimate job, queued behind them.
    legit = jobs.enqueue(r, name, "pricepipe.workers.jobs.maintain_partitions",
                         kwargs={"days_ahead": 1})

    worker = spawn(["jobs", "worker", "--burst", "--queue", jobs.MAINTENANCE], env=pipeline_env)
    out = worker.communicate(timeout=120)[0].decode(errors="replace")
    assert worker.returncode == 0, out

    assert [what for what, path in markers.items() if path.exists()] == []

    def fetch(job: Job) -> Job:
        return jobqueue.PricepipeJob.fetch(job.id, connection=r, serializer=jobqueue.SERIALIZER)

    failed_data = fetch(by_data)
    assert failed_data.get_status() == "failed"
    result = failed_data.latest_result()
    assert result is not None and "DeserializationError" in (result.exc_string or "")
    refused = fetch(by_json)
    assert refused.get_status() == "failed"
    result = refused.latest_result()
    assert result is not None and "JobRefusedError" in (result.exc_string or "")
    assert "'os.system' is not one of pricepipe's jobs" in (result.exc_string or "")
    # The job with the pickled meta ran (its data was fine); its meta was not unpickled.
    assert fetch(by_meta).get_status() == "finished"
    done = fetch(legit)
    returned = done.return_value()
    assert done.get_status() == "finished" and isinstance(returned, dict)
    assert returned["days_ahead"] == 1 and isinstance(returned["created"], int)


def test_enqueue_writes_json_and_refuses_other_arguments(r: Any, keys: Keys) -> None:
    from datetime import date

    name = keys.rq_queue(jobs.MAINTENANCE)
    with pytest.raises(jobqueue.JobRefusedError, match="'os.system' is not one"):
        jobqueue.check_allowed("os.system")
    with pytest.raises(TypeError, match="not JSON serializable"):
        jobs.enqueue(r, name, "pricepipe.workers.jobs.apply_retention",
                     kwargs={"retention_days": date(2026, 1, 1)})
    assert r.llen(f"rq:queue:{name}") == 0
    # What is stored is JSON: a reader without pickle sees the call.
    job = jobs.enqueue(r, name, "pricepipe.workers.jobs.rebuild_bars",
                       kwargs={"start_us": 1, "end_us": 2, "symbol": None})
    raw = r.hget(job.key, "data")
    assert isinstance(raw, bytes)
    assert JSONSerializer.loads(zlib.decompress(raw)) == [
        "pricepipe.workers.jobs.rebuild_bars", None, [], {"start_us": 1, "end_us": 2,
                                                          "symbol": None}]


def test_every_scheduled_and_listed_job_is_allowed_and_nothing_else() -> None:
    from pricepipe.workers.schedule import SCHEDULE

    allowed = jobqueue.allowed_functions()
    assert {s.func for s in jobs.JOBS.values()} | {e.func for e in SCHEDULE} <= allowed
    assert jobqueue.DISPATCHER in allowed
    assert all(name.startswith("pricepipe.") for name in allowed)


def test_planted_callbacks_instances_and_webhooks_are_never_used(r: Any) -> None:
    job = jobqueue.PricepipeJob.create("pricepipe.workers.jobs.verify_bars", connection=r,
                                       serializer=jobqueue.SERIALIZER)
    # What a planted job hash could name: rq would import and call these.
    job._success_callback_name = "os.system"
    job._failure_callback_name = "os.system"
    job._stopped_callback_name = "os.system"
    assert (job.success_callback, job.failure_callback, job.stopped_callback) == (None,) * 3
    assert job.func is jobs.verify_bars
    method = jobqueue.PricepipeJob.create("pricepipe.workers.jobs.verify_bars", connection=r,
                                          serializer=jobqueue.SERIALIZER)
    method.instance = "a serialized instance"
    with pytest.raises(jobqueue.JobRefusedError, match="instances are refused"):
        _ = method.func
