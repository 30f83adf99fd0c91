#!/usr/bin/env python3
"""Per-thread CPU time and context switches of `infergrid serve` and its worker
processes while it streams completions, or while it answers classifier
requests one at a time (standard library only).

    thread_cpu.py BINARY [STREAMS=8] [TOKENS=512]
    thread_cpu.py BINARY --infer [REQUESTS=3000]

--infer: the classifier at max_batch_size 1, 200 requests not counted, then
REQUESTS over one keep-alive connection; per-request CPU and switches.

Thread names: CAF 0.17 names its scheduler threads "caf.multiplexer", like
the middleman's thread (the scheduler's start first: lower tids); the
executor is "caf.actor"; Beast's HTTP thread keeps the binary's name; the
local link's readers are "ig.link.hub" (serve) and "ig.link.worker".

For each mode (worker process, then workers.in_process) it builds the demo
models, starts `serve --workers 1` on a free port, streams two completions
that are not counted, then STREAMS completions of TOKENS tokens of tinylm
one after another, and prints each thread's CPU time and switches per token
(/proc/<pid>/task/*/stat and status, before and after). Clock ticks are
10 ms, so use enough tokens for the figures to mean something. A diagnostic
beside `bench infer` (docs/benchmarks.md), not a benchmark with a baseline.
"""
import http.client, json, os, socket, subprocess, sys, time, signal, tempfile

binary = sys.argv[1]
infer_mode = len(sys.argv) > 2 and sys.argv[2] == "--infer"
args = sys.argv[3:] if infer_mode else sys.argv[2:]
streams = int(args[0]) if args else (3000 if infer_mode else 8)
tokens = int(args[1]) if len(args) > 1 else 512

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def threads(pid):
    out = {}
    def walk(p, depth=0):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    comm = open(f"/proc/{p}/task/{tid}/comm").read().strip()
                    st = open(f"/proc/{p}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                    cpu = (int(st[11]) + int(st[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
                    sw = 0
                    for line in open(f"/proc/{p}/task/{tid}/status"):
                        if "ctxt_switches" in line: sw += int(line.split()[1])
                    out[(p, int(tid))] = (f"{'worker' if depth else 'serve'}:{comm}", cpu, sw)
                except OSError: pass
                try:
                    for c in open(f"/proc/{p}/task/{tid}/children").read().split():
                        if depth < 2: walk(int(c), depth + 1)
                except OSError: pass
        except OSError: pass
    walk(pid); return out

def infer_many(port, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                   "data": [0.5] * 16}]})
    for _ in range(n):
        c.request("POST", "/v2/models/classifier/infer", body,
                  {"Content-Type": "application/json"})
        r = c.getresponse(); text = r.read()
        if r.status != 200: raise RuntimeError(f"infer: {r.status} {text[:300]!r}")
    c.close()

def report(rows, per, unit):
    rows.sort(reverse=True)
    for cpu, sw, name, k in rows[:14]:
        print(f"   {name:28s} pid {k[0]:6d} tid {k[1]:6d}  {cpu:8.0f} ms  "
              f"{cpu*1000/per:7.1f} us/{unit}  {sw/per:6.2f} sw/{unit}")

def deltas(a, b):
    rows = []
    for k, (name, cpu, sw) in b.items():
        cpu0, sw0 = (a[k][1], a[k][2]) if k in a else (0, 0)
        if cpu - cpu0 > 0 or sw - sw0 > 0: rows.append((cpu - cpu0, sw - sw0, name, k))
    return rows

def stream(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"model": "tinylm", "prompt": "Once upon a time", "max_tokens": tokens,
                       "temperature": 0, "seed": 7, "stream": True})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse(); first = None; n = 0
    while True:
        line = r.fp.readline()
        if not line: break
        if line.startswith(b"data: ") and first is None: first = time.perf_counter() - t0
        if line.startswith(b"data: [DONE]"): break
    c.close()
    return first, time.perf_counter() - t0

def measure(p, port):
    if infer_mode:
        infer_many(port, 200)
        a = threads(p.pid); t0 = time.perf_counter()
        infer_many(port, streams)
        wall = time.perf_counter() - t0; rows = deltas(a, threads(p.pid))
        tot = sum(r[0] for r in rows); tsw = sum(r[1] for r in rows)
        print(f"== {mode}: {streams} classifier requests (batch 1) in {wall:.3f} s; "
              f"CPU {tot * 1000 / streams:.1f} us/request; switches {tsw / streams:.2f}/request")
        return report(rows, streams, "r")
    for _ in range(2): stream(port)
    a = threads(p.pid); t0 = time.perf_counter()
    res = [stream(port) for _ in range(streams)]
    wall = time.perf_counter() - t0; rows = deltas(a, threads(p.pid))
    n = streams * tokens
    print(f"== {mode}: {streams} streams x {tokens} tokens in {wall:.3f} s = {n / wall:,.0f} tokens/s; "
          f"ttft p50 {sorted(r[0] for r in res)[len(res)//2]*1000:.2f} ms")
    tot = sum(r[0] for r in rows); tsw = sum(r[1] for r in rows)
    print(f"   CPU {tot:.0f} ms = {tot * 1000 / n:.1f} us/token; switches {tsw / n:.2f}/token")
    report(rows, n, "t")

for mode in ("processes", "in-process"):
    work = tempfile.mkdtemp()
    subprocess.run([binary, "make-models", "--out", work + "/m"], check=True, capture_output=True)
    if infer_mode:
        cf = work + "/m/classifier/config.yaml"
        text = open(cf).read()
        open(cf, "w").write(text.replace("max_batch_size: 32", "max_batch_size: 1"))
    port = free_port()
    env = dict(os.environ, LOG_LEVEL="warn")
    if mode == "in-process": env["INFERGRID_WORKERS__IN_PROCESS"] = "true"
    log = open(work + "/serve.log", "w")
    p = subprocess.Popen([binary, "serve", "--port", str(port), "--workers", "1", "--models-dir",
                          work + "/m", "--data-dir", work + "/d"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ready = "classifier" if infer_mode else "tinylm"
        end = time.time() + 60
        while time.time() < end:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", f"/v2/models/{ready}/ready")
                if c.getresponse().status == 200: break
            except OSError: pass
            time.sleep(0.1)
        measure(p, port)
    finally:
        p.send_signal(signal.SIGTERM); t = time.time()
        try: rc = p.wait(30)
        except subprocess.TimeoutExpired: p.kill(); rc = "killed"
        print(f"   serve exit {rc} {time.time() - t:.2f} s after SIGTERM")
