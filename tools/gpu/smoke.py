#!/usr/bin/env python3
"""GPU smoke test of `infergrid serve` (docs/gpu.md), standard library only.

Builds the demo models, writes two copies (every config.yaml set to
`device: cuda`, and to `device: cpu`), starts one server on each, and checks:
the log says "model classifier loaded on cuda:0"; KServe infer at B=1 and B=32,
a durable classifier job and a durable tinylm job on cuda agree with the CPU
server (tensors within 1e-4); both servers stop cleanly on SIGTERM. Reports the
warm-up first-call times from the logs and HTTP latency medians.

With --device cuda and a Python that imports torch, two more checks:
- CUDA out of memory: a TorchScript tensor model written here with torch.jit
  ("hog") asks the GPU for 4 TiB when a batch has 8 rows or more. Such a
  request must get 503 with code "oom" (retryable), and the next request of
  the same model, and the classifier, must still succeed on the same worker.
- Two workers sharing the GPU: a third server with --workers 2 serves
  concurrent requests; all must succeed and both workers must have served.
- RNN weights for cuDNN: a scripted torch.nn.GRU generate model saved on the
  CPU ("grulm") must be flattened at load, and no GRU call (its, or the
  demo tinylm's) may make cuDNN warn that it copies the weights per call.
  Greedy completion times of both are reported.

    smoke.py --binary build-cuda/tools/infergrid --work DIR --logs DIR
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

TOLERANCE = 1e-4


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    def decode(raw):
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return raw.decode(errors="replace")  # e.g. /metrics
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, decode(e.read())


class Server:
    def __init__(self, binary, work, name, models_dir, logs, workers=1):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(logs, f"serve-{name}.log")
        env = dict(os.environ, LOG_LEVEL="info")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", str(self.port), "--workers", str(workers),
             "--models-dir", models_dir, "--data-dir", os.path.join(work, f"data-{name}")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_ready(self, deadline_s=240):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: server exited with "
                                     f"{self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                status, _ = http("GET", self.url + "/v2/models/classifier/ready", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: not ready after {deadline_s}s:\n{self.text()[-3000:]}")

    def infer(self, body, model="classifier"):
        status, out = http("POST", f"{self.url}/v2/models/{model}/infer", body)
        if status != 200:
            raise AssertionError(f"{self.name}: infer -> {status} {out}")
        return out

    def job(self, model, payload, deadline_s=60):
        status, out = http("POST", self.url + "/v1/jobs", {"model": model, "input": payload})
        if status != 202:
            raise AssertionError(f"{self.name}: POST /v1/jobs -> {status} {out}")
        job_id = out["id"]
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            status, out = http("GET", f"{self.url}/v1/jobs/{job_id}")
            if status == 200 and out.get("state") in ("succeeded", "failed", "dead"):
                if out["state"] != "succeeded":
                    raise AssertionError(f"{self.name}: job {job_id} {out['state']}: {out.get('error')}")
                output = out["output"]
                return json.loads(output) if isinstance(output, str) else output
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: job {job_id} did not finish in {deadline_s}s")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "killed after 30 s"
        finally:
            self.log.close()


def flat(values):
    if isinstance(values, list):
        for v in values:
            yield from flat(v)
    else:
        yield values


def max_diff(a, b):
    """Largest |a - b| over the outputs of two KServe responses."""
    worst = 0.0
    oa, ob = a["outputs"], b["outputs"]
    assert len(oa) == len(ob), (oa, ob)
    for x, y in zip(oa, ob):
        assert x["name"] == y["name"] and x["shape"] == y["shape"], (x, y)
        xs, ys = list(flat(x["data"])), list(flat(y["data"]))
        assert len(xs) == len(ys)
        for u, v in zip(xs, ys):
            worst = max(worst, abs(float(u) - float(v)))
    return worst


def request(batch):
    data = [math.sin(0.37 * i) for i in range(batch * 16)]
    return {"inputs": [{"name": "x", "shape": [batch, 16], "datatype": "FP32", "data": data}]}


def latency(server, body, n=300):
    for _ in range(20):
        server.infer(body)
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        server.infer(body)
        ms.append((time.perf_counter() - t) * 1000.0)
    ms.sort()
    return statistics.median(ms), ms[int(0.9 * len(ms))]


def save_model(models_dir, name, module, config):
    """Writes models_dir/name: the scripted `module` as model.pt and the
    text `config` as config.yaml."""
    out = os.path.join(models_dir, name)
    os.makedirs(out, exist_ok=True)
    module.save(os.path.join(out, "model.pt"))
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(config)


def write_hog_model(models_dir):
    """Writes models_dir/hog: a tensor model (x [-1, 16] -> y [-1, 4]) that
    allocates 4 TiB on its device when a batch has 8 rows or more. Returns
    False when this Python has no torch."""
    try:
        import torch
    except ImportError:
        return False

    class Hog(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 4)

        def forward(self, x):
            if x.size(0) >= 8:
                big = torch.empty([1 << 40], dtype=torch.float32, device=x.device)
                x = x + big[:1]
            return torch.softmax(self.lin(x), dim=-1)

    save_model(models_dir, "hog", torch.jit.script(Hog()),
               "# Written by tools/gpu/smoke.py: 4 TiB for batches of 8 rows or more.\n"
               "kind: tensor\nmax_batch_size: 16\nmax_queue_delay_us: 0\n"
               "device: cuda\nmemory_mb: 1\npreload: true\n"
               "inputs:\n  - {name: x, dtype: float32, shape: [-1, 16]}\n"
               "outputs:\n  - {name: y, dtype: float32, shape: [-1, 4]}\n")
    return True


def write_grulm_model(models_dirs):
    """Writes DIR/grulm for each (DIR, device) of models_dirs: the same
    generate model (bytes -> 2-layer torch.nn.GRU -> logits), scripted and
    saved on the CPU, so its GRU weights are separate tensors until the
    runner flattens them for cuDNN. Returns False when this Python has no
    torch."""
    try:
        import torch
    except ImportError:
        return False
    from typing import Optional, Tuple

    class GruLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(256, 32)
            self.rnn = torch.nn.GRU(32, 64, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(64, 256)

        def forward(self, tokens: torch.Tensor,
                    state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
            out, h = self.rnn(self.embed(tokens), state)
            return self.head(out[:, -1]), h

    torch.manual_seed(7)
    module = torch.jit.script(GruLM().eval())
    for models_dir, device in models_dirs:
        save_model(models_dir, "grulm", module,
                   "# Written by tools/gpu/smoke.py: a scripted torch.nn.GRU saved on the CPU.\n"
                   f"kind: generate\nmax_batch_size: 8\nmax_queue_delay_us: 0\n"
                   f"device: {device}\nmemory_mb: 1\npreload: true\n"
                   "inputs:\n  - {name: tokens, dtype: int64, shape: [-1, -1]}\n"
                   "outputs:\n  - {name: logits, dtype: float32, shape: [-1, 256]}\n"
                   "  - {name: state, dtype: float32, shape: [2, -1, 64]}\n")
    return True


def completion_ms(server, model, tokens, n=5):
    """Median wall time of a greedy, non-streamed completion of `tokens`
    tokens (no stop string, so every one is generated)."""
    body = {"model": model, "prompt": "The ", "max_tokens": tokens, "temperature": 0}
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        status, out = http("POST", server.url + "/v1/completions", body)
        ms.append((time.perf_counter() - t) * 1000.0)
        if status != 200:
            raise AssertionError(f"{server.name}: completion of {model} -> {status} {out}")
    return statistics.median(ms)


def check_rnn_weights(gpu, cpu, check, report, grulm):
    """cuDNN gets every GRU's weights in one chunk: the demo tinylm's
    (saved as views into one buffer) and a scripted torch.nn.GRU saved on the
    CPU (flattened by the runner at load), so no GRU call copies them."""
    lm = {"prompt": "Once upon", "max_tokens": 24, "seed": 3}
    if grulm:
        check("model grulm: weights of 1 RNN module(s) flattened for cuDNN" in gpu.text(),
              "serve log: grulm's torch.nn.GRU weights flattened for cuDNN at load")
        out_gpu, out_cpu = gpu.job("grulm", lm), cpu.job("grulm", lm)
        check(out_gpu.get("tokens") == 24, "durable grulm job on cuda: 24 tokens")
        report["figures"]["grulm seeded text equal on cuda and cpu"] = \
            out_gpu.get("text") == out_cpu.get("text")
    for model in ("tinylm", "grulm") if grulm else ("tinylm",):
        for tokens in (32, 256):
            ms = completion_ms(gpu, model, tokens)
            report["figures"][f"{model} greedy completion of {tokens} tokens on cuda: median ms"] = \
                round(ms, 2)
    check("single contiguous chunk" not in gpu.text(),
          "serve log: no cuDNN 'weights are not part of single contiguous chunk' warning")


def metric_samples(text, name):
    """{labels: value} of one Prometheus series family."""
    out = {}
    for line in text.splitlines():
        m = re.match(re.escape(name) + r"\{([^}]*)\} (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def write_models(binary, work, device):
    out = os.path.join(work, f"models-{device}")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([binary, "make-models", "--out", out], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "config.yaml")
        with open(path) as f:
            text = f.read()
        text, n = re.subn(r"(?m)^device:.*$", f"device: {device}", text)
        assert n == 1, f"{path}: no device line"
        with open(path, "w") as f:
            f.write(text)
    return out


def check_oom(server, check, report):
    """A batch that asks the GPU for 4 TiB fails alone, as a retryable oom,
    and the worker goes on serving."""
    ok = server.infer(request(1), model="hog")
    check(ok["outputs"][0]["shape"] == [1, 4], "hog B=1 on cuda: 200 before the oom")
    t = time.perf_counter()
    status, out = http("POST", server.url + "/v2/models/hog/infer", request(8))
    report["figures"]["oom answer (ms)"] = round((time.perf_counter() - t) * 1000.0, 2)
    err = out.get("error", {}) if isinstance(out, dict) else {}
    print(f"hog B=8 on cuda: {status} {json.dumps(out)[:400]}")
    check(status == 503 and err.get("code") == "oom" and err.get("retryable") is True,
          f"hog B=8 on cuda: 503 oom retryable (got {status} {err.get('code')})")
    for attempt in range(2):
        ok = server.infer(request(1), model="hog")
        check(ok["outputs"][0]["shape"] == [1, 4], f"hog B=1 on cuda after the oom ({attempt + 1})")
    server.infer(request(32))
    check(True, "classifier B=32 on cuda after the oom")
    # Workers report metrics at most every 200 ms: poll.
    end = time.monotonic() + 5
    while True:
        _, metrics = http("GET", server.url + "/metrics")
        fails = metric_samples(metrics if isinstance(metrics, str) else "",
                               "infergrid_model_failures_total")
        oom = sum(v for k, v in fails.items() if 'model="hog"' in k and 'code="oom"' in k)
        if oom >= 1 or time.monotonic() > end:
            break
        time.sleep(0.05)
    check(oom == 1, f"metrics: one hog failure with code oom (got {oom:g})")
    log = server.text()
    check("out of memory" in log.lower(), "serve log names the out-of-memory cause")


def check_two_workers(server, check, report, threads=8, per_thread=50):
    """Two worker processes on one GPU serve concurrent requests."""
    import concurrent.futures
    body = request(1)

    def client(_):
        codes = []
        for _ in range(per_thread):
            status, _ = http("POST", server.url + "/v2/models/classifier/infer", body)
            codes.append(status)
        return codes

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        codes = [c for cs in pool.map(client, range(threads)) for c in cs]
    elapsed = time.perf_counter() - t
    report["figures"]["two workers, 8 clients: requests/s"] = round(len(codes) / elapsed, 1)
    check(all(c == 200 for c in codes),
          f"two workers on one GPU: {codes.count(200)}/{len(codes)} requests 200")
    _, metrics = http("GET", server.url + "/metrics")
    served = metric_samples(metrics if isinstance(metrics, str) else "",
                            "infergrid_model_requests_total")
    per_worker = {k: v for k, v in served.items() if 'model="classifier"' in k}
    print(f"two workers: classifier requests by worker {per_worker}")
    check(len([v for v in per_worker.values() if v > 0]) == 2,
          "two workers on one GPU: both served classifier requests")
    status, models = http("GET", server.url + "/v1/models")
    devices = sorted({w.get("device") for m in models.get("models", []) for w in m.get("workers", [])}) \
        if isinstance(models, dict) else []
    check(devices == ["cuda:0"], f"two workers: every model resident on cuda:0 (got {devices})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--device", default="cuda",
                    help="device of the first server's models (a CPU dry run: cpu)")
    args = ap.parse_args()
    expected = "cuda:0" if args.device == "cuda" else args.device
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.logs, exist_ok=True)
    report = {"checks": [], "figures": {}}
    failures = []

    def check(ok, what):
        report["checks"].append({"ok": bool(ok), "what": what})
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            failures.append(what)

    servers = {}
    try:
        hog = False
        dirs = {}
        for name, device in (("cuda", args.device), ("cpu", "cpu")):
            dirs[name] = write_models(args.binary, os.path.join(args.work, name), device)
        grulm = args.device.startswith("cuda") and \
            write_grulm_model([(dirs["cuda"], args.device), (dirs["cpu"], "cpu")])
        for name, device in (("cuda", args.device), ("cpu", "cpu")):
            models = dirs[name]
            if name == "cuda" and args.device.startswith("cuda"):
                hog = write_hog_model(models)
                if hog:  # the two-worker server shares this copy
                    servers["cuda2"] = Server(args.binary, args.work, "cuda2", models,
                                              args.logs, workers=2)
            servers[name] = Server(args.binary, args.work, name, models, args.logs)
        for s in servers.values():
            s.wait_ready()
        gpu, cpu = servers["cuda"], servers["cpu"]
        if not hog:
            print("skipped: out-of-memory and two-worker checks (no torch in this "
                  "Python, or not a cuda run)")

        log = gpu.text()
        check(f"model classifier loaded on {expected}" in log,
              f"serve log: 'model classifier loaded on {expected}'")
        for device, s in servers.items():
            for m in re.finditer(r"model (\w+) loaded on (\S+) \(first call ([\d.]+) ms\)", s.text()):
                report["figures"][f"warm-up first call {m.group(1)} on {m.group(2)} (ms)"] = float(m.group(3))
        for line in log.splitlines():
            if "inference:" in line:
                print("log: " + line.strip())

        for batch in (1, 32):
            body = request(batch)
            # The first request of each shape after the warm-up (done at B=1)
            # shows what re-specialisation of the profiling executor costs.
            t = time.perf_counter()
            out_gpu = gpu.infer(body)
            report["figures"][f"first HTTP infer B={batch} on cuda (ms)"] = round((time.perf_counter() - t) * 1000.0, 2)
            t = time.perf_counter()
            out_cpu = cpu.infer(body)
            report["figures"][f"first HTTP infer B={batch} on cpu (ms)"] = round((time.perf_counter() - t) * 1000.0, 2)
            d = max_diff(out_gpu, out_cpu)
            report["figures"][f"KServe infer B={batch} max |cuda-cpu|"] = d
            check(d <= TOLERANCE, f"KServe infer B={batch}: cuda vs cpu max diff {d:.3g} <= {TOLERANCE}")

        job_gpu = gpu.job("classifier", request(4))
        d = max_diff(job_gpu, cpu.infer(request(4)))
        check(d <= TOLERANCE, f"durable classifier job on cuda vs cpu KServe: max diff {d:.3g}")
        lm = {"prompt": "Once upon", "max_tokens": 24, "seed": 1}
        text_gpu = gpu.job("tinylm", lm)
        text_cpu = cpu.job("tinylm", lm)
        print(f"tinylm job on cuda: {text_gpu}")
        print(f"tinylm job on cpu:  {text_cpu}")
        check(text_gpu.get("tokens") == 24, "durable tinylm job on cuda: 24 tokens")
        report["figures"]["tinylm seeded text equal on cuda and cpu"] = text_gpu.get("text") == text_cpu.get("text")

        for batch in (1, 32):
            for device, s in servers.items():
                med, p90 = latency(s, request(batch))
                report["figures"][f"HTTP infer B={batch} on {device}: median ms"] = round(med, 3)
                report["figures"][f"HTTP infer B={batch} on {device}: p90 ms"] = round(p90, 3)

        if args.device.startswith("cuda"):
            check_rnn_weights(gpu, cpu, check, report, grulm)
        if hog:
            check_oom(gpu, check, report)
            check_two_workers(servers["cuda2"], check, report)

        status, metrics = http("GET", gpu.url + "/metrics")
        if isinstance(metrics, str):
            with open(os.path.join(args.logs, "metrics-cuda.txt"), "w") as f:
                f.write(metrics)
    except Exception as e:  # noqa: BLE001 - report and fail
        check(False, f"{type(e).__name__}: {e}")
    finally:
        for device, s in servers.items():
            rc = s.stop()
            check(rc == 0, f"{device} server stopped on SIGTERM with exit status {rc}")

    for k, v in report["figures"].items():
        print(f"figure: {k}: {v}")
    with open(os.path.join(args.logs, "smoke.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"smoke: {len(report['checks']) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
