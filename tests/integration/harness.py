"""Shared harness of the black-box tests: start `infergrid serve` on a free
loopback port with a temporary directory, poll with deadlines, check errors."""
import os
import signal
import socket
import subprocess
import time
import traceback

import requests

MAX_BODY = 65536


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, deadline_s, what):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what} (last: {last!r})")


class Server:
    def __init__(self, binary, root, workers, log_name, env_extra=None, args_extra=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["INFERGRID_HTTP__MAX_BODY_BYTES"] = str(MAX_BODY)
        env["INFERGRID_QUEUE__TICK_MS"] = "100"
        env["LOG_LEVEL"] = "info"
        env.update(env_extra or {})
        self.log_path = os.path.join(root, log_name)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", str(self.port), "--workers", str(workers),
             "--data-dir", os.path.join(root, "data"),
             "--models-dir", os.path.join(root, "models")] + list(args_extra or []),
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path, **kw):
        return requests.post(self.url + path, timeout=10, **kw)

    def wait_healthy(self):
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.tail()}")
            return self.get("/healthz").status_code == 200
        wait_for(healthy, 180, "/healthz")

    def wait_ready(self):
        wait_for(lambda: self.get("/readyz").status_code == 200, 180, "/readyz")

    def stop(self, sig=signal.SIGTERM, deadline_s=30):
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=deadline_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()
        return rc

    def tail(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-30:])




def worker_pid(parent, wid):
    """The pid of the worker process `wid` whose parent is `parent`, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"worker" in argv and b"--id" in argv:
            i = argv.index(b"--id")
            if i + 1 < len(argv) and argv[i + 1] == wid.encode():
                return int(entry)
    return None


def classifier_input(rows):
    values = [((i * 7) % 13) / 13.0 - 0.5 for i in range(rows * 16)]
    return {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32", "data": values}]}


def check_error(resp, status, code, field=None):
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("X-Request-Id"), "missing X-Request-Id"
    body = resp.json()
    err = body["error"]
    assert err["code"] == code, f"expected code {code}, got {body}"
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["retryable"], bool), body
    if field is not None:
        assert field in err["message"], f"message should name {field!r}: {err['message']}"
    return err


def wait_job(server, job_id, states=("succeeded",), deadline_s=60):
    def done():
        r = server.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["state"] in ("failed", "dead", "cancelled") and job["state"] not in states:
            raise AssertionError(f"job ended {job['state']}: {job}")
        return job if job["state"] in states else None
    return wait_for(done, deadline_s, f"job {job_id} to reach {states}")


def run_case(name, fn, *args):
    try:
        fn(*args)
        print(f"PASS {name}", flush=True)
        return True
    except Exception:  # noqa: BLE001 - report every failure and go on
        print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return False


def _assert(cond, msg):
    if not cond:
        raise AssertionError(msg)


def report(results):
    """Prints the closing line CI reads and returns the exit code."""
    passed = sum(results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1
