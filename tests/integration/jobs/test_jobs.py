#!/usr/bin/env python3
"""Black-box test of the durable job life cycle over real HTTP: event streams
(SSE) with resume, cancel of queued and running jobs, idempotency keys, delayed
jobs, listing with filters and cursors, capacity. Polls with deadlines."""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import (Server, _assert, check_error, classifier_input, report,  # noqa: E402
                     run_case, wait_for, wait_job)

FINAL = {"succeeded", "failed", "dead", "cancelled"}


def submit(s, body, status=202):
    r = s.post("/v1/jobs", json=body)
    _assert(r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}")
    return r.json()


def read_sse(s, job_id, last_event_id=None, deadline_s=30):
    """Reads a job's event stream until the server ends it; returns events."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    events, current = [], {}
    with requests.get(f"{s.url}/v1/jobs/{job_id}/events", headers=headers, stream=True,
                      timeout=deadline_s) as r:
        _assert(r.status_code == 200, f"events: {r.status_code} {r.text}")
        _assert(r.headers["Content-Type"].startswith("text/event-stream"), r.headers)
        end = time.monotonic() + deadline_s
        for line in r.iter_lines(decode_unicode=True):
            _assert(time.monotonic() < end, "stream did not end in time")
            if line is None:
                continue
            if line == "":
                if "data" in current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            current[key] = value[1:] if value.startswith(" ") else value
    return events


def states_of(events):
    return [json.loads(e["data"])["state"] for e in events if e.get("event") == "status"]


# ------------------------------------------------------------- one worker

def test_sse_watch_and_resume(s):
    job = submit(s, {"model": "classifier", "input": classifier_input(1)})
    events = read_sse(s, job["id"])
    states = states_of(events)
    _assert(states[0] == "queued" and states[-1] == "succeeded", states)
    _assert("running" in states, states)
    ids = [int(e["id"]) for e in events]
    _assert(ids == sorted(ids) and len(set(ids)) == len(ids), ids)
    # Resume after the first event: the rest again, nothing before it.
    again = read_sse(s, job["id"], last_event_id=ids[0])
    _assert([int(e["id"]) for e in again] == ids[1:], (again, ids))
    check_error(s.get("/v1/jobs/j_99999999/events"), 404, "not_found")


def test_cancel_queued(s):
    job = submit(s, {"model": "classifier", "input": classifier_input(1), "delay_ms": 60000})
    r = s.post(f"/v1/jobs/{job['id']}/cancel")
    _assert(r.status_code == 200, r.text)
    _assert(r.json()["state"] == "cancelled", r.text)
    check_error(s.post(f"/v1/jobs/{job['id']}/cancel"), 409, "conflict")
    check_error(s.post("/v1/jobs/j_99999999/cancel"), 404, "not_found")


def test_cancel_running(s):
    # A long prompt keeps the byte-level model busy for a while.
    prompt = "the quick brown fox jumps over the lazy dog " * 1400
    job = submit(s, {"model": "tinylm", "input": {"prompt": prompt, "max_tokens": 4096}})
    wait_for(lambda: s.get(f"/v1/jobs/{job['id']}").json()["state"] == "running", 30,
             "the long job to run")
    r = s.post(f"/v1/jobs/{job['id']}/cancel")
    _assert(r.status_code == 200, r.text)
    body = r.json()
    _assert(body["state"] == "cancelled" or body["cancel_requested"] is True, body)
    final = wait_job(s, job["id"], states=("cancelled",), deadline_s=60)
    _assert(final["output"] is None, final)
    _assert(states_of(read_sse(s, job["id"]))[-1] == "cancelled", "last event not cancelled")


def test_timeout(s):
    prompt = "the quick brown fox jumps over the lazy dog " * 1400
    job = submit(s, {"model": "tinylm", "max_attempts": 1, "timeout_ms": 100,
                     "input": {"prompt": prompt, "max_tokens": 4096}})
    final = wait_job(s, job["id"], states=("dead",), deadline_s=60)
    _assert(final["error"]["code"] == "timeout", final)
    _assert(final["error"]["retryable"] is True, final)
    _assert(final["attempts"] == 1, final)
    # The worker is free again: a short job still runs.
    quick = submit(s, {"model": "classifier", "input": classifier_input(1)})
    wait_job(s, quick["id"], deadline_s=30)


def test_idempotency(s):
    body = {"model": "classifier", "input": classifier_input(1), "idempotency_key": "order-42"}
    first = submit(s, body, 202)
    second = submit(s, body, 200)
    _assert(first["id"] == second["id"], (first, second))
    other = dict(body, input=classifier_input(2))
    check_error(s.post("/v1/jobs", json=other), 409, "conflict", "order-42")


def test_delayed_job(s):
    job = submit(s, {"model": "classifier", "input": classifier_input(1), "delay_ms": 1200})
    time.sleep(0.4)  # several queue ticks: a delayed job must not start early
    _assert(s.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued", "started early")
    done = wait_job(s, job["id"], deadline_s=30)
    _assert(done["run_at"] is not None, done)


# ------------------------------------------------------------- no workers

def test_listing(s):
    ids = [submit(s, {"model": "classifier", "input": classifier_input(1)})["id"]
           for _ in range(25)]
    lm = [submit(s, {"model": "tinylm", "input": {"prompt": "x"}})["id"] for _ in range(3)]
    pages, after = [], None
    while True:
        q = "/v1/jobs?limit=10&model=classifier" + (f"&after={after}" if after else "")
        r = s.get(q)
        _assert(r.status_code == 200, r.text)
        body = r.json()
        pages.append([j["id"] for j in body["jobs"]])
        after = body["next"]
        if after is None:
            break
    _assert([len(p) for p in pages] == [10, 10, 5], pages)
    flat = [i for p in pages for i in p]
    _assert(flat == list(reversed(ids)), "not newest first, or jobs missing")
    r = s.get("/v1/jobs?state=queued&model=tinylm")
    _assert([j["id"] for j in r.json()["jobs"]] == list(reversed(lm)), r.text)
    check_error(s.get("/v1/jobs?state=finished"), 400, "invalid_input", "state")
    check_error(s.get("/v1/jobs?limit=0"), 400, "invalid_input", "limit")
    check_error(s.get("/v1/jobs?after=xyz"), 400, "invalid_input", "after")
    positions = [s.get(f"/v1/jobs/{i}").json()["position"] for i in ids[:3]]
    _assert(positions == [0, 1, 2], positions)


def test_capacity(s):
    listed = lambda: len(s.get("/v1/jobs?state=queued&limit=1000").json()["jobs"])  # noqa: E731
    while listed() < 30:
        submit(s, {"model": "classifier", "input": classifier_input(1)})
    before = listed()
    r = s.post("/v1/jobs", json={"model": "classifier", "input": classifier_input(1)})
    err = check_error(r, 429, "queue_full")
    _assert(err["retryable"] is True, err)
    _assert(r.headers.get("Retry-After"), "no Retry-After")
    _assert(listed() == before, "a refused job was written")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="infergrid-jobs-") as root:
        s = Server(args.binary, root, 1, "jobs1.log")
        try:
            s.wait_healthy()
            s.wait_ready()
            for name, fn in [("sse watch and resume", test_sse_watch_and_resume),
                             ("cancel queued", test_cancel_queued),
                             ("cancel running", test_cancel_running),
                             ("timeout", test_timeout),
                             ("idempotency", test_idempotency),
                             ("delayed job", test_delayed_job)]:
                results.append(run_case(name, fn, s))
        except Exception:  # noqa: BLE001
            print(f"FAIL start-up\n{traceback.format_exc()}\n{s.tail()}", flush=True)
            results.append(False)
        rc = s.stop()
        results.append(run_case("exit 0", lambda: _assert(rc == 0, f"rc={rc}\n{s.tail()}")))

        os.makedirs(os.path.join(root, "b"), exist_ok=True)
        b = Server(args.binary, os.path.join(root, "b"), 0, "jobs0.log",
                   {"INFERGRID_QUEUE__MAX_QUEUED": "30"})
        try:
            b.wait_healthy()
            for name, fn in [("listing", test_listing), ("capacity", test_capacity)]:
                results.append(run_case(name, fn, b))
        except Exception:  # noqa: BLE001
            print(f"FAIL start-up (no workers)\n{traceback.format_exc()}\n{b.tail()}", flush=True)
            results.append(False)
        b.stop()
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
