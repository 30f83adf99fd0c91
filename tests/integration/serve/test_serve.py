#!/usr/bin/env python3
"""Black-box test of `infergrid serve`: real processes on loopback, real HTTP.

Runs the job round trip, the KServe path, every error case of the foundation,
metrics, durability across a restart with --workers 0, and SIGTERM/SIGINT
shutdown. Polls with deadlines; never sleeps blindly.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import (MAX_BODY, Server, _assert, check_error, classifier_input,  # noqa: E402
                     report, run_case, wait_job)

def job_counts(server):
    text = server.get("/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith('infergrid_jobs{state="'):
            state = line.split('"')[1]
            counts[state] = float(line.rsplit(" ", 1)[1])
    return counts


# ---------------------------------------------------------------- test cases

def test_health_and_readiness(s):
    r = s.get("/healthz")
    assert r.status_code == 200 and r.headers.get("X-Request-Id")
    r = s.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["workers_ready"] >= 1
    r = s.get("/healthz", headers={"X-Request-Id": "client-id-123"})
    assert r.headers["X-Request-Id"] == "client-id-123"


def test_job_round_trip(s):
    r = s.post("/v1/jobs", json={"model": "classifier", "input": classifier_input(1)})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"].startswith("j_") and body["state"] == "queued"
    assert isinstance(body["position"], int) and body["position"] >= 0
    job = wait_job(s, body["id"])
    assert job["attempts"] == 1 and job["error"] is None and job["worker"]
    assert job["created_at"] and job["started_at"] and job["finished_at"]
    out = job["output"]["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [1, 4], out
    assert abs(sum(out["data"]) - 1.0) < 1e-4, out
    return out["data"]


def test_kserve_matches_job(s):
    job_probs = test_job_round_trip(s)
    r = s.post("/v2/models/classifier/infer", json=classifier_input(1))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 4] and out["datatype"] == "FP32"
    assert all(abs(a - b) < 1e-5 for a, b in zip(out["data"], job_probs)), (out, job_probs)
    r = s.post("/v2/models/classifier/infer", json=classifier_input(3))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [3, 4]
    for row in range(3):
        assert abs(sum(out["data"][row * 4:(row + 1) * 4]) - 1.0) < 1e-4


def log_text(s):
    with open(s.log_path) as f:
        return f.read()


def test_local_link(s):
    # The worker process took the local link, and tensor requests (the
    # kserve cases above went over it) are answered through it.
    text = log_text(s)
    _assert("worker w1 ready with" in text and "its batches and streams take the local link" in text,
            f"no local link in the log:\n{s.tail()}")
    # The worker process gave its link reader the executor's lane.
    _assert("the local link's reader runs fast tensor batches itself" in text,
            f"no lane on the worker's link:\n{s.tail()}")
    r = s.post("/v2/models/classifier/infer", json=classifier_input(2))
    _assert(r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 4], r.text)


def test_kserve_metadata(s):
    r = s.get("/v2/models/classifier")
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["name"] == "classifier" and meta["inputs"][0]["name"] == "x"
    assert s.get("/v2/models/classifier/ready").status_code == 200
    r = s.get("/v1/models")
    names = {m["name"] for m in r.json()["models"]}
    assert {"classifier", "tinylm", "tinyspeech"} <= names, names


def test_generate_job(s):
    inp = {"prompt": "hello", "max_tokens": 12, "temperature": 0.8, "seed": 7}
    ids = []
    for _ in range(2):
        r = s.post("/v1/jobs", json={"model": "tinylm", "input": inp})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    a, b = (wait_job(s, i)["output"] for i in ids)
    assert a["finish_reason"] in ("length", "stop") and a["tokens"] <= 12
    assert a["text"] == b["text"], "same seed must give the same text"


def test_errors(s):
    before = job_counts(s)
    url = "/v1/jobs"
    check_error(s.post(url, data="{not json", headers={"Content-Type": "application/json"}),
                400, "invalid_input", "body")
    check_error(s.post(url, json={"input": classifier_input(1)}), 400, "invalid_input", "model")
    check_error(s.post(url, json={"model": "classifier"}), 400, "invalid_input", "input")
    check_error(s.post(url, json={"model": "classifier", "input": classifier_input(1),
                                  "priority": "high"}), 400, "invalid_input", "priority")
    bad_shape = classifier_input(1)
    bad_shape["inputs"][0]["shape"] = [1, 15]
    bad_shape["inputs"][0]["data"] = bad_shape["inputs"][0]["data"][:15]
    check_error(s.post(url, json={"model": "classifier", "input": bad_shape}),
                400, "invalid_input", "inputs[0].shape")
    bad_dtype = classifier_input(1)
    bad_dtype["inputs"][0]["datatype"] = "INT32"
    bad_dtype["inputs"][0]["data"] = [1] * 16
    check_error(s.post(url, json={"model": "classifier", "input": bad_dtype}),
                400, "invalid_input", "datatype")
    check_error(s.post(url, json={"model": "nosuch", "input": classifier_input(1)}),
                404, "not_found", "nosuch")
    check_error(s.post(url, json={"model": "tinylm", "input": {"max_tokens": 3}}),
                400, "invalid_input", "input.prompt")
    check_error(s.get("/v1/jobs/j_999999"), 404, "not_found")
    check_error(s.get("/v1/jobs/garbage"), 404, "not_found")
    check_error(s.get("/no/such/route"), 404, "not_found")
    big = {"model": "classifier", "input": classifier_input(1), "pad": "x" * (MAX_BODY + 10)}
    check_error(s.post(url, json=big), 413, "payload_too_large")
    # KServe path
    infer = "/v2/models/classifier/infer"
    check_error(s.post(infer, data="[1,", headers={"Content-Type": "application/json"}),
                400, "invalid_input", "body")
    check_error(s.post(infer, json={"inputs": [{"name": "x", "shape": [1, 16],
                                                "datatype": "FP32"}]}),
                400, "invalid_input", "inputs[0].data")
    check_error(s.post(infer, json=bad_shape), 400, "invalid_input", "inputs[0].shape")
    check_error(s.post(infer, json=bad_dtype), 400, "invalid_input", "datatype")
    check_error(s.post("/v2/models/nosuch/infer", json=classifier_input(1)), 404, "not_found")
    # Nothing was stored by any of these, and the server is still fine.
    assert job_counts(s) == before, (before, job_counts(s))
    assert s.get("/healthz").status_code == 200


def test_metrics(s):
    text = s.get("/metrics").text
    assert "infergrid_http_requests_total{" in text
    assert "infergrid_http_request_duration_seconds_bucket{" in text
    assert 'le="+Inf"' in text
    counts = job_counts(s)
    assert counts.get("succeeded", 0) >= 1, counts
    assert set(counts) == {"queued", "running", "succeeded", "failed", "dead", "cancelled"}
    assert 'code="400"' in text and 'code="404"' in text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="infergrid-it-") as root:
        # 1. A normal server with one worker.
        s = Server(args.binary, root, 1, "serve1.log")
        try:
            s.wait_healthy()
            s.wait_ready()
            for name, fn in [("health and readiness", test_health_and_readiness),
                             ("job round trip", test_job_round_trip),
                             ("kserve matches job", test_kserve_matches_job),
                             ("tensor batches take the local link", test_local_link),
                             ("kserve metadata", test_kserve_metadata),
                             ("generate job", test_generate_job),
                             ("errors", test_errors),
                             ("metrics", test_metrics)]:
                results.append(run_case(name, fn, s))
        except Exception:  # noqa: BLE001
            print(f"FAIL start-up\n{traceback.format_exc()}\n{s.tail()}", flush=True)
            results.append(False)
        rc = s.stop(signal.SIGTERM)
        results.append(run_case("SIGTERM exits 0", lambda: _assert(rc == 0, f"rc={rc}\n{s.tail()}")))

        # 2. No workers: accepted and queued, not ready; then a restart runs it.
        s0 = Server(args.binary, root, 0, "serve0.log")
        queued_id = None
        try:
            s0.wait_healthy()
            def no_workers():
                r = s0.get("/readyz")
                _assert(r.status_code == 503, r.text)
                _assert(r.json()["error"]["code"] == "unavailable", r.text)
                r = s0.post("/v1/jobs", json={"model": "classifier", "input": classifier_input(2)})
                _assert(r.status_code == 202, r.text)
                nonlocal queued_id
                queued_id = r.json()["id"]
                check_error(s0.post("/v2/models/classifier/infer", json=classifier_input(1)),
                            503, "unavailable")
                time.sleep(0.3)  # several queue ticks: it must stay queued
                _assert(s0.get(f"/v1/jobs/{queued_id}").json()["state"] == "queued", "not queued")
            results.append(run_case("workers 0 accepts and queues", no_workers))
        except Exception:  # noqa: BLE001
            print(f"FAIL start-up (workers 0)\n{traceback.format_exc()}\n{s0.tail()}", flush=True)
            results.append(False)
        rc = s0.stop(signal.SIGINT)
        results.append(run_case("SIGINT exits 0", lambda: _assert(rc == 0, f"rc={rc}\n{s0.tail()}")))

        # 3. A restart, with a setting of the workers in a --config file.
        config = os.path.join(root, "serve2.yaml")
        with open(config, "w") as f:
            f.write("workers:\n  stream_interval_ms: 1000\ncluster:\n  local_link: false\n"
                    "http:\n  threads: 3\n")
        s2 = Server(args.binary, root, 1, "serve2.log", args_extra=["--config", config])
        def survives_restart():
            s2.wait_healthy()
            _assert(queued_id is not None, "no job was queued")
            job = wait_job(s2, queued_id)
            _assert(job["output"]["outputs"][0]["shape"] == [2, 4], job)
        results.append(run_case("queued job survives a restart", survives_restart))
        def config_reaches_worker_processes():
            # stream_interval_ms 1000: the worker sends the first text at once
            # and the rest when the generation ends, so at most 2 events. With
            # the default (5 ms) that reaches a worker process which did not
            # get the setting, 1024 tokens take several intervals even on a
            # fast machine (about 70 ms here, so some 14 events). The bound
            # holds however slowly the machine runs, unlike a lower bound on
            # events, which the gateway's coalescing of writes makes timing
            # dependent.
            s2.wait_ready()
            body = {"model": "tinylm", "prompt": "Once upon a time", "max_tokens": 1024,
                    "temperature": 0, "stream": True}
            pieces, text = 0, ""
            with requests.post(s2.url + "/v1/completions", json=body, stream=True,
                               timeout=60) as r:
                _assert(r.status_code == 200, r.text)
                for line in r.iter_lines():
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[len(b"data: "):])
                        if chunk["choices"] and chunk["choices"][0]["text"]:
                            pieces += 1
                            text += chunk["choices"][0]["text"]
            _assert(len(text) >= 512, f"only {len(text)} characters generated")
            _assert(pieces <= 2, f"{pieces} pieces at stream_interval_ms 1000")
        results.append(run_case("a --config setting reaches the worker processes",
                                config_reaches_worker_processes))
        def without_local_link():
            # cluster.local_link: false: the same answers over the cluster
            # connection, and no link in the log.
            r = s2.post("/v2/models/classifier/infer", json=classifier_input(3))
            _assert(r.status_code == 200 and r.json()["outputs"][0]["shape"] == [3, 4], r.text)
            _assert("local link" not in log_text(s2), f"a local link:\n{s2.tail()}")
        results.append(run_case("cluster.local_link false keeps batches on BASP",
                                without_local_link))
        def connections_on_several_io_threads():
            # http.threads 3: each connection lives on one of three I/O
            # threads. Six keep-alive clients at once, one of them streaming
            # completions, must all get their own answers.
            _assert("with 3 thread(s)" in log_text(s2), f"not 3 I/O threads:\n{s2.tail()}")
            import concurrent.futures

            def infer_client(rows):
                with requests.Session() as c:
                    for _ in range(25):
                        r = c.post(s2.url + "/v2/models/classifier/infer",
                                   json=classifier_input(rows), timeout=30)
                        _assert(r.status_code == 200, r.text)
                        _assert(r.json()["outputs"][0]["shape"] == [rows, 4], r.text)
                return rows

            def stream_client():
                body = {"model": "tinylm", "prompt": "Hi", "max_tokens": 64,
                        "temperature": 0, "stream": True}
                with requests.Session() as c:
                    for _ in range(3):
                        done = False
                        with c.post(s2.url + "/v1/completions", json=body, stream=True,
                                    timeout=30) as r:
                            _assert(r.status_code == 200, r.text)
                            done = any(line == b"data: [DONE]" for line in r.iter_lines())
                        _assert(done, "a stream ended without [DONE]")
                return 0

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(infer_client, rows) for rows in (1, 2, 3, 4, 5)]
                futures.append(pool.submit(stream_client))
                _assert(sorted(f.result() for f in futures) == [0, 1, 2, 3, 4, 5], "results")
        results.append(run_case("connections spread over several http.threads",
                                connections_on_several_io_threads))
        rc = s2.stop(signal.SIGTERM)
        results.append(run_case("restart exits 0", lambda: _assert(rc == 0, f"rc={rc}\n{s2.tail()}")))

    return report(results)


if __name__ == "__main__":
    sys.exit(main())
