#!/usr/bin/env python3
"""What a session saves a conversation: turn times over WebSocket
(GET /v1/sessions, the model's state kept on the worker) beside the same
conversation sent again in full with every turn (POST /v1/completions, what
a client without sessions does), measured in the same run on the same server.

    session_turns.py BINARY [TURNS=24] [TOKENS=128]

For each mode (worker process, then workers.in_process) it starts
`serve --workers 1` on a free port with fresh demo models, and runs the
conversation twice with greedy decoding (temperature 0): once as a session
of TURNS turns, once as TURNS completions whose prompt is the conversation
so far. Both must produce the same text turn by turn (the check that the
session's kept state equals a run over the whole conversation); the script
fails otherwise. It prints, per turn, the conversation's length and the
wall time from sending the turn to its end on each side, and the medians of
the first and last quarter of the turns. Needs Debian's python3-websockets.
"""
import asyncio, http.client, json, os, signal, socket, statistics, subprocess, sys
import tempfile, time

import websockets

binary = sys.argv[1]
turns = int(sys.argv[2]) if len(sys.argv) > 2 else 24
tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128
MODEL = "tinylm"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def turn_text(i):
    return f"\nUser {i}: and then what happened?\nBot:"


def wait_ready(port, proc, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"serve exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("serve did not become ready")


async def run_session(port):
    out = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/sessions",
                                  max_size=None) as ws:
        async def until(kind):
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if f["type"] == "error":
                    sys.exit(f"session error: {f}")
                if f["type"] == kind:
                    return f
        await ws.send(json.dumps({"type": "session.start", "model": MODEL,
                                  "max_tokens": tokens, "temperature": 0}))
        await until("session.started")
        await until("state")
        for i in range(turns):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "input.text", "text": turn_text(i)}))
            text = ""
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if f["type"] == "output.text":
                    text += f["delta"]
                elif f["type"] == "turn.end":
                    break
                elif f["type"] == "error":
                    sys.exit(f"turn error: {f}")
            out.append((time.perf_counter() - t0, text))
            await until("state")  # LISTENING
        await ws.send(json.dumps({"type": "control", "action": "stop"}))
        await until("session.end")
    return out


def run_resend(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conversation = ""
    out = []
    for i in range(turns):
        conversation += turn_text(i)
        body = json.dumps({"model": MODEL, "prompt": conversation,
                           "max_tokens": tokens, "temperature": 0})
        t0 = time.perf_counter()
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        took = time.perf_counter() - t0
        if r.status != 200:
            sys.exit(f"completion {i}: {r.status} {data[:300]!r}")
        text = json.loads(data)["choices"][0]["text"]
        out.append((took, text, len(conversation)))
        conversation += text
    return out


def measure(mode, env_extra):
    with tempfile.TemporaryDirectory(prefix="infergrid-session-bench-") as root:
        port = free_port()
        env = dict(os.environ, **env_extra)
        log = open(os.path.join(root, "serve.log"), "w")
        proc = subprocess.Popen(
            [binary, "serve", "--workers", "1", "--port", str(port),
             "--data-dir", os.path.join(root, "data"),
             "--models-dir", os.path.join(root, "models")],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(port, proc)
            # One short conversation each, not counted (first calls are slow).
            global turns
            kept, turns = turns, 2
            asyncio.run(run_session(port))
            run_resend(port)
            turns = kept
            session = asyncio.run(run_session(port))
            resend = run_resend(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
    print(f"\n{mode}: {turns} turns of {tokens} tokens, greedy")
    print(f"{'turn':>4} {'conversation':>12} {'session ms':>11} {'resend ms':>10}")
    for i, ((ts, s_text), (tr, r_text, n)) in enumerate(zip(session, resend)):
        if s_text != r_text:
            sys.exit(f"turn {i}: the session said {s_text!r}, the full conversation "
                     f"{r_text!r}")
        print(f"{i:>4} {n:>11}B {ts * 1000:>11.2f} {tr * 1000:>10.2f}")
    q = max(turns // 4, 1)
    med = lambda xs: statistics.median(xs) * 1000
    first_s, last_s = med([t for t, _ in session[:q]]), med([t for t, _ in session[-q:]])
    first_r, last_r = med([t for t, _, _ in resend[:q]]), med([t for t, _, _ in resend[-q:]])
    print(f"median of the first {q} turns: session {first_s:.2f} ms, resend {first_r:.2f} ms")
    print(f"median of the last {q} turns:  session {last_s:.2f} ms, resend {last_r:.2f} ms"
          f" (resend / session {last_r / last_s:.2f})")
    print("texts: identical turn by turn")


measure("worker process", {})
measure("in-process", {"INFERGRID_WORKERS__IN_PROCESS": "true"})
