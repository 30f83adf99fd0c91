#!/usr/bin/env python3
"""Black-box test of the cluster: `infergrid gateway` with `infergrid worker`
processes joining it over CAF on loopback, and `infergrid serve --workers N`
with its supervised worker processes.

One gateway with three workers (w1, w2 open the SQLite file, w3 claims through
the queue actor) runs jobs and interactive requests; refuses workers with a
wrong secret or a foreign database; loses a SIGKILLed worker mid-job (one of
each claim path) without losing or doubling a job; answers a completion whose
worker is SIGKILLed at once; is itself SIGKILLed and restarted on the same
ports while the workers rejoin on their own. Then the SQLite file is read
(read-only): every accepted job has exactly one success. Last, `serve
--workers 2` restarts a SIGKILLed worker process. Polls with deadlines; never
sleeps blindly. Prints timings of the restarts and rejoins (figures, not
assertions).
"""
import argparse
import datetime
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import (Server, _assert, classifier_input, free_port, report, worker_pid,  # noqa: E402
                     run_case, wait_for)

FINAL = {"succeeded", "failed", "dead", "cancelled"}
# A lease short enough that jobs orphaned by a gateway crash come back within
# seconds (renewed every lease/3), long enough for a loaded two-core machine.
LEASE_MS = 5000
PEER_TIMEOUT_MS = 2000


def clean_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INFERGRID_") and k != "CONFIG_PATH"}
    env["LOG_LEVEL"] = "info"
    env.update(extra)
    return env


def log_time(line):
    """The wall-clock time of an infergrid log line (text format), or None."""
    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ", line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f") if m else None


class Proc:
    """One infergrid process; stdout and stderr go to its own log file."""

    def __init__(self, binary, args, env, log_path):
        self.args = [binary] + args
        self.env = env
        self.log_path = log_path
        self.log = None
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, deadline_s=30):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=deadline_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def wait_exit(self, deadline_s):
        try:
            return self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args[1:4]} still running after {deadline_s}s:\n"
                                 f"{self.tail()}") from None

    def lines(self):
        if self.log is not None and not self.log.closed:
            self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read().splitlines()

    def tail(self, n=30):
        return "\n".join(self.lines()[-n:])


class Gateway(Proc):
    """`infergrid gateway` on fixed ports, so that a restart keeps them."""

    def __init__(self, binary, root, secret):
        self.http_port = free_port()
        self.cluster_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.data_dir = os.path.join(root, "data")
        self.models_dir = os.path.join(root, "models")
        self.db_path = os.path.join(self.data_dir, "infergrid.db")
        self.http = requests.Session()
        env = clean_env({"INFERGRID_CLUSTER__SECRET": secret,
                         "INFERGRID_CLUSTER__HEARTBEAT_MS": "500",
                         "INFERGRID_CLUSTER__PEER_TIMEOUT_MS": str(PEER_TIMEOUT_MS),
                         "INFERGRID_QUEUE__TICK_MS": "100",
                         "INFERGRID_QUEUE__LEASE_MS": str(LEASE_MS)})
        super().__init__(binary, ["gateway", "--port", str(self.http_port),
                                  "--cluster-port", str(self.cluster_port),
                                  "--data-dir", self.data_dir,
                                  "--models-dir", self.models_dir],
                         env, os.path.join(root, "gateway.log"))

    def get(self, path, **kw):
        return self.http.get(self.url + path, timeout=10, **kw)

    def post(self, path, **kw):
        return self.http.post(self.url + path, timeout=10, **kw)

    def wait_healthy(self, deadline_s=120):
        def healthy():
            if not self.alive():
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n"
                                     f"{self.tail()}")
            return self.get("/healthz").status_code == 200
        wait_for(healthy, deadline_s, "gateway /healthz")


def worker_args(g, wid, db=True, models_dir=None):
    args = ["worker", "--join", f"127.0.0.1:{g.cluster_port}", "--id", wid,
            "--models-dir", models_dir or g.models_dir]
    if db is True:
        args += ["--db", g.db_path]
    elif db:
        args += ["--db", db]
    return args


def start_worker(binary, root, g, wid, secret, db=True):
    return Proc(binary, worker_args(g, wid, db),
                clean_env({"INFERGRID_CLUSTER__SECRET": secret}),
                os.path.join(root, f"worker-{wid}.log")).start()


def workers(s):
    """{id: worker} from /admin/api/workers; falls back to /v1/models
    (per-worker model states) while the admin route is missing."""
    r = s.get("/admin/api/workers")
    if r.status_code == 200:
        return {w["id"]: w for w in r.json()["workers"]}
    _assert(r.status_code == 404, f"/admin/api/workers: {r.status_code} {r.text}")
    out = {}
    for m in s.get("/v1/models").json()["models"]:
        for w in m.get("workers", []):
            ready = w.get("state") == "READY"
            out.setdefault(w["worker"], {"id": w["worker"], "state": "IDLE" if ready
                                         else "LOADING"})
    return out


def wait_workers(s, ids, deadline_s=90, procs=()):
    """Waits until every id in `ids` is listed and ready (IDLE or BUSY)."""
    def ready():
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.args[1:6]} exited {p.proc.returncode}:\n{p.tail()}")
        ws = workers(s)
        return ws if all(ws.get(i, {}).get("state") in ("IDLE", "BUSY") for i in ids) else None
    return wait_for(ready, deadline_s, f"workers {sorted(ids)} ready")


def submit(s, body):
    r = s.post("/v1/jobs", json=body)
    _assert(r.status_code == 202, f"POST /v1/jobs: {r.status_code} {r.text}")
    return r.json()["id"]


def tinylm(max_tokens, seed, prompt="Once upon a time"):
    return {"model": "tinylm", "input": {"prompt": prompt, "max_tokens": max_tokens,
                                         "temperature": 0.8, "seed": seed}}


def listed_jobs(s):
    """Every job (newest first), paging through GET /v1/jobs."""
    out, after = {}, None
    while True:
        r = s.get("/v1/jobs?limit=1000" + (f"&after={after}" if after else ""))
        _assert(r.status_code == 200, r.text)
        body = r.json()
        for j in body["jobs"]:
            out[j["id"]] = j
        after = body["next"]
        if after is None:
            return out


def wait_jobs(s, ids, deadline_s):
    """Waits until every job in `ids` ended; fails on any end but succeeded."""
    ids = set(ids)

    def done():
        jobs = listed_jobs(s)
        missing = ids - set(jobs)
        _assert(not missing, f"jobs not listed: {sorted(missing)[:5]}")
        bad = [jobs[i] for i in ids if jobs[i]["state"] in FINAL - {"succeeded"}]
        if bad:
            raise AssertionError(f"{len(bad)} job(s) did not succeed, e.g. {bad[0]}")
        left = [i for i in ids if jobs[i]["state"] != "succeeded"]
        return {i: jobs[i] for i in ids} if not left else None
    return wait_for(done, deadline_s, f"{len(ids)} jobs to succeed")


def model_requests(s, model):
    """{worker: infergrid_model_requests_total} of `model` from /metrics."""
    out = {}
    pat = re.compile(r'^infergrid_model_requests_total\{model="([^"]+)",worker="([^"]+)"\} (\S+)$')
    for line in s.get("/metrics").text.splitlines():
        m = pat.match(line)
        if m and m.group(1) == model:
            out[m.group(2)] = float(m.group(3))
    return out


def sse_data(resp):
    out = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            out.append(line[5:].strip())
    return out


# ------------------------------------------------------------ the cluster

class Cluster:
    def __init__(self, binary, root):
        self.binary = binary
        self.root = root
        self.secret = secrets.token_hex(16)
        self.g = Gateway(binary, root, self.secret)
        self.workers = {}
        self.jobs = set()  # every job id that got a 202

    def start_worker(self, wid, db=True):
        self.workers[wid] = start_worker(self.binary, self.root, self.g, wid, self.secret, db)
        return self.workers[wid]

    def stop(self):
        for w in self.workers.values():
            w.kill(signal.SIGTERM, deadline_s=10)
        return self.g.kill(signal.SIGTERM, deadline_s=30)


def test_jobs_and_inference(c):
    g = c.g
    ws = workers(g)
    paths = {i: ws[i].get("claim_path") for i in ("w1", "w2", "w3")}
    _assert(paths == {"w1": "direct", "w2": "direct", "w3": "queue"}, paths)
    lm = [submit(g, tinylm(200, seed)) for seed in range(20)]
    cls = [submit(g, {"model": "classifier", "input": classifier_input(1)})
           for _ in range(200)]
    c.jobs.update(lm + cls)
    jobs = wait_jobs(g, lm + cls, 120)
    for i in cls:
        out = jobs[i]["output"]["outputs"][0]
        _assert(out["shape"] == [1, 4] and abs(sum(out["data"]) - 1) < 1e-4, jobs[i])
    for i in lm:
        out = jobs[i]["output"]
        _assert(out["finish_reason"] in ("length", "stop") and 0 < out["tokens"] <= 200, out)
    by_worker = {}
    for j in jobs.values():
        by_worker[j["worker"]] = by_worker.get(j["worker"], 0) + 1
    print(f"  jobs per worker: {dict(sorted(by_worker.items()))}", flush=True)
    _assert({"w1", "w2", "w3"} <= set(by_worker), f"not every worker ran jobs: {by_worker}")

    # Interactive work goes to the worker processes as well. The workers'
    # counters reach /metrics within a status interval: wait for the jobs'.
    before = wait_for(lambda: (lambda m: m if sum(m.values()) >= len(cls) else None)(
        model_requests(g, "classifier")), 20, "the jobs in the workers' metrics")
    n = 6
    for k in range(n):
        r = g.post("/v2/models/classifier/infer", json=classifier_input(2))
        _assert(r.status_code == 200, f"infer {k}: {r.status_code} {r.text}")
        out = r.json()["outputs"][0]
        _assert(out["shape"] == [2, 4], out)

    def counted():
        after = model_requests(g, "classifier")
        delta = {w: after.get(w, 0) - before.get(w, 0) for w in after}
        return delta if sum(delta.values()) >= n else None
    delta = wait_for(counted, 20, "the infer requests in the workers' metrics")
    print(f"  interactive classifier requests per worker: {delta}", flush=True)
    # cluster.routing queue_depth (the default) spreads idle-time requests.
    _assert(sum(1 for d in delta.values() if d > 0) >= 2, f"one worker took them all: {delta}")
    body = {"model": "tinylm", "prompt": "Once upon a time", "max_tokens": 32,
            "temperature": 0.5, "seed": 3}
    r = g.post("/v1/completions", json=body)
    _assert(r.status_code == 200, f"completions: {r.status_code} {r.text}")
    text = r.json()["choices"][0]["text"]
    _assert(isinstance(text, str) and text, r.text)
    with g.http.post(g.url + "/v1/completions", json=dict(body, stream=True), stream=True,
                     timeout=30) as r:
        _assert(r.status_code == 200, f"streamed completions: {r.status_code} {r.text}")
        data = sse_data(r)
    _assert(data and data[-1] == "[DONE]", data[-3:])
    streamed = "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1]
                       if json.loads(d)["choices"])
    _assert(streamed == text, f"streamed {streamed!r} != {text!r}")


def test_refused_workers(c):
    g = c.g
    bad = Proc(c.binary, worker_args(g, "wbad"),
               clean_env({"INFERGRID_CLUSTER__SECRET": "not-" + c.secret}),
               os.path.join(c.root, "worker-wbad.log")).start()
    other_db = os.path.join(c.root, "elsewhere", "infergrid.db")
    foreign = Proc(c.binary, worker_args(g, "wdb", db=other_db),
                   clean_env({"INFERGRID_CLUSTER__SECRET": c.secret}),
                   os.path.join(c.root, "worker-wdb.log")).start()
    try:
        rc_bad = bad.wait_exit(60)
        rc_foreign = foreign.wait_exit(60)
    finally:
        bad.kill()
        foreign.kill()
    _assert(rc_bad == 2, f"wrong secret: exit {rc_bad}\n{bad.tail()}")
    _assert(rc_foreign == 2, f"foreign --db: exit {rc_foreign}\n{foreign.tail()}")
    _assert(not os.path.exists(other_db), "the refused worker created the other database")
    log = "\n".join(g.lines())
    _assert(re.search(r"refused worker 'wbad'.*wrong or missing cluster secret", log),
            f"no refusal of wbad in the gateway log:\n{g.tail()}")
    _assert(re.search(r"refused worker 'wdb'.*not this node's", log),
            f"no refusal of wdb in the gateway log:\n{g.tail()}")
    _assert("wbad" not in workers(g) and "wdb" not in workers(g), workers(g))
    _assert(any("refused the join" in line for line in bad.lines()), bad.tail())

    # A second node under a live worker's id is refused; the first goes on.
    twin = Proc(c.binary, worker_args(g, "w2"),
                clean_env({"INFERGRID_CLUSTER__SECRET": c.secret}),
                os.path.join(c.root, "worker-w2-twin.log")).start()
    try:
        rc_twin = twin.wait_exit(60)
    finally:
        twin.kill()
    _assert(rc_twin == 2, f"duplicate id: exit {rc_twin}\n{twin.tail()}")
    _assert(re.search(r"refused worker 'w2'.*already has this id", "\n".join(g.lines())),
            f"no refusal of the second w2 in the gateway log:\n{g.tail()}")
    _assert(c.workers["w2"].alive(), c.workers["w2"].tail())
    wait_workers(g, ["w2"], 10, [c.workers["w2"]])
    job = submit(g, {"model": "classifier", "input": classifier_input(1)})
    c.jobs.add(job)
    wait_jobs(g, [job], 30)


def test_worker_killed_mid_job(c, victim):
    """SIGKILLs `victim` while it runs a long job, then starts it again."""
    g = c.g
    direct = victim != "w3"
    # A longer prompt keeps each job running long enough to be caught.
    prompt = "the quick brown fox jumps over the lazy dog " * 100
    ids = [submit(g, tinylm(4000, 100 + k, prompt)) for k in range(12)]
    c.jobs.update(ids)

    def victim_running():
        jobs = listed_jobs(g)
        running = [jobs[i] for i in ids
                   if jobs[i]["state"] == "running" and jobs[i]["worker"] == victim]
        return running or None
    wait_for(victim_running, 60, f"{victim} to run one of the long jobs")
    killed_at = time.monotonic()
    rc = c.workers[victim].kill(signal.SIGKILL)
    _assert(rc == -signal.SIGKILL, f"{victim} exit {rc}")
    jobs = wait_jobs(g, ids, 120)
    print(f"  all long jobs succeeded {time.monotonic() - killed_at:.1f} s after the kill",
          flush=True)
    # The victim's job(s): put back by the queue when the worker went down.
    lost = [i for i in ids if any("worker_lost" in e for e in status_events(g.db_path, i))]
    _assert(lost, "no job was taken from the killed worker (it held none?)")
    for i in lost:
        j = jobs[i]
        _assert(j["attempts"] > 1 or j["worker"] != victim, f"victim's job {j}")
    _assert(any(f"worker {victim} went down" in line for line in g.lines()), g.tail())
    # The same id joins again, with a fresh process.
    t0 = time.monotonic()
    c.start_worker(victim, db=direct)
    wait_workers(g, [victim], 60, [c.workers[victim]])
    print(f"  {victim} rejoined and ready {time.monotonic() - t0:.1f} s after its restart",
          flush=True)


def test_interactive_on_killed_worker(c):
    """A completion running on a worker that is SIGKILLed fails at once with
    a retryable 503, not at its timeout (10 min for generations)."""
    g = c.g
    prompt = "the quick brown fox jumps over the lazy dog " * 1400
    body = {"model": "tinylm", "prompt": prompt, "max_tokens": 4000, "seed": 9}
    result = {}

    def call():
        t0 = time.monotonic()
        try:
            r = requests.post(g.url + "/v1/completions", json=body, timeout=60)
            result["r"] = (r.status_code, r.text, time.monotonic() - t0)
        except requests.RequestException as e:
            result["r"] = ("no answer", repr(e), time.monotonic() - t0)
    t = threading.Thread(target=call)
    t.start()
    try:
        busy = wait_for(lambda: [i for i, w in workers(g).items() if w["state"] == "BUSY"]
                        or None, 30, "a worker to run the completion")
        killed_at = time.monotonic()
        c.workers[busy[0]].kill(signal.SIGKILL)
    finally:
        t.join(70)
    status, text, _ = result["r"]
    answered = time.monotonic() - killed_at
    print(f"  completion on {busy[0]} answered {status} {answered:.1f} s after the kill", flush=True)
    c.start_worker(busy[0], db=busy[0] != "w3")
    if status != 200:  # 200: it finished before the kill landed; nothing to check
        _assert(status == 503, f"{status}: {text[:300]}")
        _assert(json.loads(text)["error"]["retryable"] is True, text)
        _assert(answered < 10, f"answered {answered:.1f} s after the kill")
    wait_workers(g, [busy[0]], 60, [c.workers[busy[0]]])


def test_frozen_worker(c):
    """A worker that stops answering (SIGSTOP: its TCP connection stays open)
    is dropped after cluster.peer_timeout_ms and its completion fails with a
    retryable 503; once it runs again it rejoins."""
    g = c.g
    prompt = "the quick brown fox jumps over the lazy dog " * 1400
    body = {"model": "tinylm", "prompt": prompt, "max_tokens": 4000, "seed": 11}
    result = {}

    def call():
        try:
            r = requests.post(g.url + "/v1/completions", json=body, timeout=60)
            result["r"] = (r.status_code, r.text)
        except requests.RequestException as e:
            result["r"] = ("no answer", repr(e))
    t = threading.Thread(target=call)
    t.start()
    frozen = None
    try:
        busy = wait_for(lambda: [i for i, w in workers(g).items() if w["state"] == "BUSY"]
                        or None, 30, "a worker to run the completion")
        frozen = busy[0]
        c.workers[frozen].proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: frozen not in workers(g) or None, 30,
                 f"the gateway to drop the frozen {frozen}")
        dropped = time.monotonic() - stopped_at
        t.join(30)
    finally:
        if frozen:
            c.workers[frozen].proc.send_signal(signal.SIGCONT)
        t.join(70)
    print(f"  {frozen} frozen: dropped after {dropped:.1f} s "
          f"(cluster.peer_timeout_ms {PEER_TIMEOUT_MS})", flush=True)
    _assert(dropped < PEER_TIMEOUT_MS / 1000 + 5, f"dropped after {dropped:.1f} s")
    _assert(any(f"worker {frozen} went down" in line for line in g.lines()), g.tail())
    status, text = result["r"]
    if status != 200:  # 200: it finished before the signal landed
        _assert(status == 503, f"{status}: {text[:300]}")
        _assert(json.loads(text)["error"]["retryable"] is True, text)
    # Thawed, it finds its connection gone and joins again.
    wait_workers(g, [frozen], 60, [c.workers[frozen]])
    _assert(any("lost the control node" in line for line in c.workers[frozen].lines()),
            c.workers[frozen].tail())


def test_gateway_restart(c):
    g = c.g
    ids = [submit(g, tinylm(1500, 200 + k)) for k in range(24)]
    ids += [submit(g, {"model": "classifier", "input": classifier_input(1)})
            for _ in range(30)]
    c.jobs.update(ids)

    def some_running():
        jobs = listed_jobs(g)
        states = [jobs[i]["state"] for i in ids]
        return states if "running" in states and "queued" in states else None
    wait_for(some_running, 60, "jobs running and queued")
    g.kill(signal.SIGKILL)
    # More jobs after the kill could not be accepted; the workers stay up.
    for wid, w in c.workers.items():
        _assert(w.alive(), f"{wid} exited with the gateway:\n{w.tail()}")
    t0 = time.monotonic()
    g.start()
    g.wait_healthy()
    t_up = time.monotonic() - t0
    wait_workers(g, list(c.workers), 60, list(c.workers.values()))
    t_joined = time.monotonic() - t0
    wait_jobs(g, ids, 60)
    print(f"  gateway healthy {t_up:.1f} s after its restart, all workers back after "
          f"{t_joined:.1f} s, all {len(ids)} jobs succeeded after {time.monotonic() - t0:.1f} s",
          flush=True)
    back = [line.split("queue: ")[-1] for line in g.lines() if "earlier life" in line]
    print(f"  jobs orphaned by the crash came back when their workers rejoined: {back}",
          flush=True)
    _assert(back, f"no orphaned job put back on rejoin:\n{g.tail()}")
    for wid, w in c.workers.items():
        _assert(any("lost the control node" in line for line in w.lines()), w.tail())


def status_events(db_path, job_id):
    """The data of the job's status events, read-only."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT data FROM job_events WHERE job_id = ? AND kind = 'status' "
                           "ORDER BY seq", (int(job_id[2:]),)).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def test_one_success_per_job(c):
    con = sqlite3.connect(f"file:{c.g.db_path}?mode=ro", uri=True, timeout=10)
    try:
        jobs = {row[0]: row[1:] for row in
                con.execute("SELECT id, state, attempts, worker FROM jobs")}
        successes = {}
        for job_id, data in con.execute(
                "SELECT job_id, data FROM job_events WHERE kind = 'status'"):
            if json.loads(data)["state"] == "succeeded":
                successes[job_id] = successes.get(job_id, 0) + 1
    finally:
        con.close()
    accepted = {int(i[2:]) for i in c.jobs}
    _assert(accepted <= set(jobs), f"accepted jobs missing from the file: "
                                   f"{sorted(accepted - set(jobs))[:5]}")
    not_ok = {i: jobs[i] for i in accepted if jobs[i][0] != "succeeded"}
    _assert(not not_ok, f"jobs not succeeded in the file: {list(not_ok.items())[:5]}")
    doubled = {i: n for i, n in successes.items() if n != 1}
    _assert(not doubled, f"jobs with more than one success: {doubled}")
    missing = [i for i in accepted if successes.get(i, 0) != 1]
    _assert(not missing, f"jobs without their success event: {missing[:5]}")
    retried = sum(1 for i in accepted if jobs[i][1] > 1)
    print(f"  {len(accepted)} jobs, each one success event; {retried} ran more than once",
          flush=True)


# ------------------------------------------------------------ serve --workers 2



def test_serve_restarts_worker(s):
    wait_for(lambda: s.get("/readyz").json().get("workers_ready") == 2, 90,
             "/readyz workers_ready 2")
    pid = wait_for(lambda: worker_pid(s.proc.pid, "w1"), 10, "the process of w1")
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()

    def ready_lines():
        return [line for line in s.tail_lines() if "queue: worker w1 ready" in line]
    wait_for(lambda: len(ready_lines()) >= 2, 60, "w1 to be ready again")
    ready_s = time.monotonic() - t0
    wait_for(lambda: s.get("/readyz").json().get("workers_ready") == 2, 30,
             "/readyz workers_ready back to 2")
    ws = workers(s)
    _assert(ws.get("w1", {}).get("state") in ("IDLE", "BUSY"), ws)
    new_pid = worker_pid(s.proc.pid, "w1")
    _assert(new_pid and new_pid != pid, (pid, new_pid))
    lines = s.tail_lines()
    started = [line for line in lines if re.search(r"supervisor: started w1 \(pid \d+\) "
                                                   r"\(restart 1\)", line)]
    _assert(started, "no 'supervisor: started w1 ... (restart 1)' in the serve log")
    # Timings from the log: kill seen, restarted, joined, ready.
    ended = next(line for line in lines if re.search(r"supervisor: w1 \(pid \d+\) ended", line))
    joined = [line for line in lines if "cluster: worker 'w1'" in line and "joined" in line]
    t_end, t_start, t_join, t_ready = (log_time(x) for x in
                                       (ended, started[0], joined[-1], ready_lines()[-1]))
    print(f"  w1 SIGKILLed: restarted {(t_start - t_end).total_seconds():.2f} s after the "
          f"supervisor saw it end, joined {(t_join - t_start).total_seconds():.2f} s and ready "
          f"{(t_ready - t_start).total_seconds():.2f} s after its start "
          f"({ready_s:.1f} s from the kill)", flush=True)
    job = submit(s, {"model": "classifier", "input": classifier_input(1)})
    wait_jobs(s, [job], 30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infergrid-cluster-") as root:
        c = Cluster(binary, os.path.join(root, "a"))
        os.makedirs(c.root)
        try:
            c.g.start()
            c.g.wait_healthy()
            c.start_worker("w1", db=True)
            c.start_worker("w2", db=True)
            c.start_worker("w3", db=False)
            wait_workers(c.g, ["w1", "w2", "w3"], 120, list(c.workers.values()))
            print(f"  gateway and 3 workers ready after {time.monotonic() - started:.1f} s",
                  flush=True)
            for name, fn in [("gateway + 3 worker processes: jobs and inference",
                              test_jobs_and_inference),
                             ("wrong secret or foreign --db: exit 2", test_refused_workers),
                             ("worker w1 (direct) SIGKILLed mid-job",
                              lambda c: test_worker_killed_mid_job(c, "w1")),
                             ("worker w3 (claims through the queue) SIGKILLed mid-job",
                              lambda c: test_worker_killed_mid_job(c, "w3")),
                             ("completion on a SIGKILLed worker fails at once",
                              test_interactive_on_killed_worker),
                             ("a frozen (SIGSTOPped) worker is dropped and rejoins",
                              test_frozen_worker),
                             ("gateway SIGKILLed and restarted", test_gateway_restart),
                             ("one success per job in the file", test_one_success_per_job)]:
                results.append(run_case(name, fn, c))
        except Exception:  # noqa: BLE001
            print(f"FAIL cluster start-up\n{traceback.format_exc()}\n{c.g.tail()}", flush=True)
            results.append(False)
        finally:
            rc = c.stop()
        results.append(run_case("gateway SIGTERM exits 0",
                                lambda: _assert(rc == 0, f"rc={rc}\n{c.g.tail()}")))

        sroot = os.path.join(root, "s")
        os.makedirs(sroot)
        s = Server(binary, sroot, 2, "serve.log")
        s.tail_lines = lambda: open(s.log_path, errors="replace").read().splitlines()
        try:
            s.wait_healthy()
            results.append(run_case("serve --workers 2 restarts a SIGKILLed worker",
                                    test_serve_restarts_worker, s))
        except Exception:  # noqa: BLE001
            print(f"FAIL serve start-up\n{traceback.format_exc()}\n{s.tail()}", flush=True)
            results.append(False)
        finally:
            rc = s.stop(signal.SIGTERM)
        results.append(run_case("serve SIGTERM exits 0",
                                lambda: _assert(rc == 0, f"rc={rc}\n{s.tail()}")))
    print(f"  whole file: {time.monotonic() - started:.1f} s", flush=True)
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
