#!/usr/bin/env python3
"""Black-box test of interactive inference over real HTTP: dynamic batching of
KServe requests, OpenAI completions and chat (streamed and not), a client that
goes away mid-stream or while it waits for a non-streamed answer, one that
stops reading a stream (its own server, http.io_timeout_ms 1 s), pipelined
requests behind a completion, speech (WAV, raw PCM, chunked streams), durable
speech jobs and their artifacts, generate jobs' data events, model
unload/load, the admin API (workers, queue, drain and resume), the per-model
metrics and the errors of the new routes. Polls with deadlines."""
import argparse
import concurrent.futures
import io
import json
import math
import os
import re
import socket
import struct
import sys
import tempfile
import time
import traceback
import wave

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import (Server, _assert, check_error, classifier_input, report,  # noqa: E402
                     run_case, wait_for, wait_job)

LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 1400
# Low temperature: the byte-level demo model then writes printable ASCII.
GEN = {"model": "tinylm", "prompt": "Once upon a time", "max_tokens": 48,
       "temperature": 0.5, "seed": 11}
CHAT = {"model": "tinylm", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Say hello."}],
        "max_tokens": 40, "temperature": 0.5, "seed": 5}
SPEECH_TEXT = "Hello there. This is a test of the speech route, in three phrases!"


# ------------------------------------------------------------------ helpers

def post_json(s, path, body, timeout=60, **kw):
    return requests.post(s.url + path, json=body, timeout=timeout, **kw)


def sse_data(resp, deadline_s=60):
    """The `data:` payloads of an SSE response, in order, until it ends."""
    out = []
    end = time.monotonic() + deadline_s
    for line in resp.iter_lines(decode_unicode=False):
        _assert(time.monotonic() < end, "stream did not end in time")
        if not line or line.startswith(b":"):
            continue
        _assert(line.startswith(b"data: "), f"not a data line: {line!r}")
        out.append(line[len(b"data: "):].decode("utf-8"))
    return out


def stream_json(s, path, body, deadline_s=60):
    """POSTs with "stream": true; returns (response headers, data payloads)."""
    with requests.post(s.url + path, json=body, stream=True, timeout=deadline_s) as r:
        _assert(r.status_code == 200, f"{path}: {r.status_code} {r.text}")
        _assert(r.headers["Content-Type"].startswith("text/event-stream"), r.headers)
        _assert("Content-Length" not in r.headers, r.headers)
        return r.headers, sse_data(r, deadline_s)


def chunks_of(data):
    """The JSON chunks before [DONE]; checks [DONE] comes last and once."""
    _assert(data and data[-1] == "[DONE]", f"stream does not end with [DONE]: {data[-3:]}")
    _assert(data.count("[DONE]") == 1, "[DONE] twice")
    return [json.loads(d) for d in data[:-1]]


def split_head(data):
    """(status, headers with lower-case names, where the body starts) of the
    response head at the start of `data`, which holds all of it."""
    header_end = data.index(b"\r\n\r\n")
    lines = data[:header_end].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, header_end + 4


def request_bytes(method, path, body=None, close=False):
    """An HTTP/1.1 request with a JSON body, as bytes for a plain socket."""
    payload = json.dumps(body).encode() if body is not None else b""
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode() + payload


def raw_http(port, method, path, body=None, deadline_s=60):
    """One request over a plain socket; reads until the server closes.
    Returns (status, headers with lower-case names, raw body bytes)."""
    end = time.monotonic() + deadline_s
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sock:
        sock.sendall(request_bytes(method, path, body, close=True))
        data = b""
        while True:
            _assert(time.monotonic() < end, "response did not end in time")
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    status, headers, body_at = split_head(data)
    return status, headers, data[body_at:]


def dechunk(raw):
    """Decodes an HTTP/1.1 chunked body strictly: (data, chunk count, trailer)."""
    out, count, pos = b"", 0, 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        out += raw[pos:pos + size]
        _assert(raw[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF")
        pos += size + 2
        count += 1
    trailer = {}
    while True:
        eol = raw.index(b"\r\n", pos)
        line = raw[pos:eol].decode("latin-1")
        pos = eol + 2
        if not line:
            break
        k, _, v = line.partition(":")
        trailer[k.strip().lower()] = v.strip()
    _assert(pos == len(raw), f"{len(raw) - pos} bytes after the last chunk")
    return out, count, trailer


def read_wav(data):
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes(), \
            w.readframes(w.getnframes())


def fix_stream_wav(data):
    """A streamed WAV announces unknown sizes (0xFFFFFFFF); put in the real ones."""
    _assert(data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16])
    _assert(data[36:40] == b"data", "data chunk not at 36")
    _assert(struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF, "sizes not 0xFFFFFFFF")
    n = len(data) - 44
    return data[:4] + struct.pack("<I", 36 + n) + data[8:40] + struct.pack("<I", n) + data[44:]


def metrics(s):
    r = s.get("/metrics")
    _assert(r.status_code == 200, r.text)
    return r.text


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {labels}, value)]; fails on a line that is no valid sample."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            _assert(line.startswith("# HELP ") or line.startswith("# TYPE "), line)
            continue
        m = SAMPLE.match(line)
        _assert(m, f"bad metrics line: {line!r}")
        labels = dict(LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric_sum(samples, name, **labels):
    return sum(v for n, ls, v in samples
               if n == name and all(ls.get(k) == v2 for k, v2 in labels.items()))


def model_entry(s, name):
    r = s.get("/v1/models")
    _assert(r.status_code == 200, r.text)
    for m in r.json()["models"]:
        if m["name"] == name:
            return m
    raise AssertionError(f"{name} not in /v1/models: {r.text}")


# ------------------------------------------------------------------- cases

def test_kserve_batching(s):
    def infer(rows):
        r = requests.post(f"{s.url}/v2/models/classifier/infer",
                          json=classifier_input(rows), timeout=60)
        return rows, r

    def burst():
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            results = list(ex.map(infer, [1 + i % 3 for i in range(16)]))
        for rows, r in results:
            _assert(r.status_code == 200, f"infer: {r.status_code} {r.text}")
            out = r.json()["outputs"][0]
            _assert(out["shape"] == [rows, 4], out["shape"])
            _assert(len(out["data"]) == rows * 4, len(out["data"]))
            for i in range(rows):
                row = out["data"][i * 4:(i + 1) * 4]
                _assert(abs(sum(row) - 1.0) < 1e-4, f"probabilities do not sum to 1: {row}")

    def batched():
        samples = parse_metrics(metrics(s))
        calls = metric_sum(samples, "infergrid_model_batch_size_count", model="classifier")
        singles = metric_sum(samples, "infergrid_model_batch_size_bucket",
                             model="classifier", le="1")
        return calls > singles  # some forward call ran more than one request

    for _ in range(10):  # concurrency on a loaded machine is not guaranteed
        burst()
        if batched():
            break
    _assert(batched(), "no classifier batch larger than 1 in /metrics")
    samples = parse_metrics(metrics(s))
    _assert(metric_sum(samples, "infergrid_model_requests_total", model="classifier") >= 16,
            "classifier requests not counted")


def test_completions(s):
    r = post_json(s, "/v1/completions", GEN)
    _assert(r.status_code == 200, r.text)
    _assert(r.headers["Content-Type"].startswith("application/json"), r.headers)
    body = r.json()
    _assert(body["id"].startswith("cmpl-") and body["object"] == "text_completion", body)
    _assert(body["model"] == "tinylm", body)
    _assert(abs(body["created"] - time.time()) < 120, body["created"])
    choice = body["choices"][0]
    text = choice["text"]
    _assert(isinstance(text, str) and text, body)
    _assert(choice["finish_reason"] in ("length", "stop"), choice)
    usage = body["usage"]
    _assert(usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage)
    _assert(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage)
    # Streamed with the same seed: the deltas make up the same text.
    _, data = stream_json(s, "/v1/completions", dict(GEN, stream=True))
    chunks = chunks_of(data)
    _assert(len(chunks) >= 2, f"too few chunks: {chunks}")
    ids = {c["id"] for c in chunks}
    _assert(len(ids) == 1 and ids.pop().startswith("cmpl-"), "chunk ids differ")
    _assert(all(c["object"] == "text_completion" for c in chunks), chunks[0])
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    _assert(streamed == text, f"streamed {streamed!r} != {text!r}")
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    _assert(finishes == [choice["finish_reason"]], finishes)
    _assert(all("usage" not in c or c["usage"] is None for c in chunks),
            "usage without include_usage")


def test_chat(s):
    r = post_json(s, "/v1/chat/completions", CHAT)
    _assert(r.status_code == 200, r.text)
    body = r.json()
    _assert(body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion", body)
    msg = body["choices"][0]["message"]
    _assert(msg["role"] == "assistant" and isinstance(msg["content"], str), msg)
    _, data = stream_json(s, "/v1/chat/completions", dict(CHAT, stream=True))
    chunks = chunks_of(data)
    _assert(all(c["object"] == "chat.completion.chunk" for c in chunks), chunks[0])
    _assert(chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0])
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])
    _assert(streamed == msg["content"], f"streamed {streamed!r} != {msg['content']!r}")
    _assert(chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"],
            chunks[-1])


def test_include_usage(s):
    plain = post_json(s, "/v1/completions", GEN).json()
    _, data = stream_json(s, "/v1/completions",
                          dict(GEN, stream=True, stream_options={"include_usage": True}))
    chunks = chunks_of(data)
    last = chunks[-1]
    _assert(last["choices"] == [] and last["usage"] == plain["usage"],
            f"usage chunk {last} vs {plain['usage']}")
    _assert(all(not c.get("usage") for c in chunks[:-1]), "usage before the last chunk")
    _, chat = stream_json(s, "/v1/chat/completions",
                          dict(CHAT, stream=True, stream_options={"include_usage": True}))
    usage = chunks_of(chat)[-1]["usage"]
    _assert(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage)


def settled_metrics(s):
    """/metrics once the workers' snapshots (sent a little after each change)
    have caught up: two reads half a second apart agree on the model series."""
    state = {"last": None}

    def stable():
        m = parse_metrics(metrics(s))
        key = sorted((n, sorted(ls.items()), v) for n, ls, v in m
                     if n in ("infergrid_model_requests_total",
                              "infergrid_model_generated_tokens_total"))
        same = key == state["last"]
        state["last"] = key
        if not same:
            time.sleep(0.5)
        return m if same else None
    return wait_for(stable, 30, "settled metrics")


def test_disconnect_frees_worker(s):
    before = settled_metrics(s)
    req0 = metric_sum(before, "infergrid_model_requests_total", model="tinylm")
    tok0 = metric_sum(before, "infergrid_model_generated_tokens_total", model="tinylm")
    body = {"model": "tinylm", "prompt": LONG_PROMPT, "max_tokens": 4096, "stream": True,
            "temperature": 0.5, "seed": 1}
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
        sock.sendall(request_bytes("POST", "/v1/completions", body))
        got = b""
        end = time.monotonic() + 60
        while got.count(b"data: ") < 2:  # the stream runs
            _assert(time.monotonic() < end, f"no chunks: {got[:300]!r}")
            piece = sock.recv(4096)
            _assert(piece, f"closed early: {got[:300]!r}")
            got += piece
        _assert(got.startswith(b"HTTP/1.1 200"), got[:100])
    # Gone. The worker stops within a token; a short request runs at once.
    t0 = time.monotonic()
    quick = post_json(s, "/v1/completions",
                      {"model": "tinylm", "prompt": "hi", "max_tokens": 4, "seed": 2},
                      timeout=30)
    took = time.monotonic() - t0
    _assert(quick.status_code == 200, quick.text)
    _assert(took < 10, f"the next request took {took:.1f}s")
    quick_tokens = quick.json()["usage"]["completion_tokens"]

    def counted():
        m = parse_metrics(metrics(s))
        return m if metric_sum(m, "infergrid_model_requests_total",
                               model="tinylm") >= req0 + 2 else None
    after = wait_for(counted, 30, "both requests in the tinylm metrics")
    tokens = metric_sum(after, "infergrid_model_generated_tokens_total", model="tinylm")
    cut = tokens - tok0 - quick_tokens
    _assert(cut < 4096, f"the abandoned generation made {cut} tokens: it was not stopped")
    print(f"  the abandoned generation stopped after {cut:.0f} of 4096 tokens", flush=True)


def test_nonstream_disconnect_frees_worker(s):
    before = settled_metrics(s)
    req0 = metric_sum(before, "infergrid_model_requests_total", model="tinylm")
    tok0 = metric_sum(before, "infergrid_model_generated_tokens_total", model="tinylm")
    body = {"model": "tinylm", "prompt": LONG_PROMPT, "max_tokens": 4096,
            "temperature": 0.5, "seed": 1}
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
        sock.sendall(request_bytes("POST", "/v1/completions", body))
        time.sleep(0.1)
        # Nothing may have come yet: the answer is one body at the end.
        sock.setblocking(False)
        try:
            early = sock.recv(4096)
        except BlockingIOError:
            early = b""
        _assert(early == b"", f"an answer within 100 ms: {early[:200]!r}")
    # Gone. The worker stops within a token; a short request runs at once.
    t0 = time.monotonic()
    quick = post_json(s, "/v1/completions",
                      {"model": "tinylm", "prompt": "hi", "max_tokens": 4, "seed": 2},
                      timeout=30)
    took = time.monotonic() - t0
    _assert(quick.status_code == 200, quick.text)
    _assert(took < 10, f"the next request took {took:.1f}s")
    quick_tokens = quick.json()["usage"]["completion_tokens"]

    def counted():
        m = parse_metrics(metrics(s))
        return m if metric_sum(m, "infergrid_model_requests_total",
                               model="tinylm") >= req0 + 2 else None
    after = wait_for(counted, 30, "both requests in the tinylm metrics")
    tokens = metric_sum(after, "infergrid_model_generated_tokens_total", model="tinylm")
    cut = tokens - tok0 - quick_tokens
    _assert(cut < 4096, f"the abandoned generation made {cut} tokens: it was not stopped")
    print(f"  the abandoned generation stopped after {cut:.0f} of 4096 tokens", flush=True)
    # The HTTP layer saw the client go (not only the worker's end of it).
    def logged():
        with open(s.log_path, errors="replace") as f:
            return "completion stopped" in f.read()
    wait_for(logged, 10, "the log line of the abandoned completion")


def test_client_not_reading(binary):
    """A client that stops reading a streamed synthesis: its write stalls for
    http.io_timeout_ms (1 s here, its own server), the connection closes and
    the log says why, not "client closed"; the server keeps serving."""
    with tempfile.TemporaryDirectory(prefix="infergrid-io-timeout-") as root:
        srv = Server(binary, root, 1, "io.log",
                     env_extra={"INFERGRID_HTTP__IO_TIMEOUT_MS": "1000"})
        try:
            srv.wait_healthy()
            srv.wait_ready()
            # About 14,000 characters (the limit is 16,384), some 13 MB of PCM:
            # far more than the socket buffers hold.
            text = " ".join(f"This is sentence number {i}." for i in range(500))
            request = request_bytes("POST", "/v1/audio/speech",
                                    {"model": "tinyspeech", "input": text, "stream": True,
                                     "response_format": "pcm"})
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                sock.settimeout(60)
                sock.connect(("127.0.0.1", srv.port))
                sock.sendall(request)
                got = sock.recv(4096)
                _assert(got.startswith(b"HTTP/1.1 200"), got[:200])
                # Then nothing more is read while the server writes.

                def logged():
                    with open(srv.log_path, errors="replace") as f:
                        for line in f:
                            if "speech stream ended" in line:
                                return line
                    return None
                line = wait_for(logged, 60, "the end of the unread stream in the log")
                _assert("client not reading" in line, f"logged as: {line.strip()}")
            finally:
                sock.close()
            # The server still answers.
            r = requests.post(srv.url + "/v1/audio/speech", timeout=30,
                              json={"model": "tinyspeech", "input": SPEECH_TEXT})
            _assert(r.status_code == 200, r.text[:300])
        finally:
            rc = srv.stop()
        _assert(rc == 0, f"rc={rc}\n{srv.tail()}")


def read_responses(sock, count, deadline_s=60):
    """Reads `count` HTTP/1.1 responses with Content-Length from `sock`, in order;
    returns [(status, headers, body)] and the bytes after them."""
    return read_responses_after(sock, b"", count, deadline_s)


def read_responses_after(sock, data, count, deadline_s=60):
    """read_responses when `data` was already read from `sock`."""
    out = []
    end = time.monotonic() + deadline_s
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            _assert(time.monotonic() < end, f"responses did not come: {data[:300]!r}")
            piece = sock.recv(65536)
            _assert(piece, f"closed after {len(out)} responses: {data[:300]!r}")
            data += piece
        status, headers, body_at = split_head(data)
        length = int(headers["content-length"])
        while len(data) < body_at + length:
            _assert(time.monotonic() < end, "body did not come")
            piece = sock.recv(65536)
            _assert(piece, "closed inside a body")
            data += piece
        out.append((status, headers, data[body_at:body_at + length]))
        data = data[body_at + length:]
    return out, data


def read_chunked_response(sock, data=b"", deadline_s=60):
    """Reads one chunked HTTP/1.1 response from `sock` (`data`: bytes already
    read). Returns (status, headers, decoded body, chunk count, bytes after)."""
    end = time.monotonic() + deadline_s

    def more(data):
        _assert(time.monotonic() < end, f"response did not end in time: {data[-200:]!r}")
        piece = sock.recv(65536)
        _assert(piece, f"closed inside a response: {data[-200:]!r}")
        return data + piece

    while b"\r\n\r\n" not in data:
        data = more(data)
    status, headers, pos = split_head(data)
    _assert(headers.get("transfer-encoding") == "chunked", headers)
    body, count = b"", 0
    while True:
        while b"\r\n" not in data[pos:]:
            data = more(data)
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        while len(data) < pos + size + 2:
            data = more(data)
        body += data[pos:pos + size]
        _assert(data[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF")
        pos += size + 2
        count += 1
    while True:  # the trailer ends with an empty line
        while b"\r\n" not in data[pos:]:
            data = more(data)
        eol = data.index(b"\r\n", pos)
        line, pos = data[pos:eol], eol + 2
        if not line:
            break
    return status, headers, body, count, data[pos:]


def sse_payloads(body):
    return [line[len(b"data: "):].decode() for line in body.split(b"\n")
            if line.startswith(b"data: ")]


def test_stream_keeps_the_connection(s):
    """A streamed completion is a chunked body on HTTP/1.1: the connection
    stays open, a request pipelined while it streams is answered after it,
    and the next stream on the same connection gives the same text. An
    HTTP/1.0 client gets a body that ends with the connection."""
    stream = request_bytes("POST", "/v1/completions",
                           dict(GEN, stream=True, temperature=0, max_tokens=64))
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: after-stream\r\n\r\n"
    texts = []
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
        sock.sendall(stream + health)  # pipelined behind the stream
        status, headers, body, count, rest = read_chunked_response(sock)
        _assert(status == 200, body[:300])
        _assert(headers["content-type"].startswith("text/event-stream"), headers)
        _assert(headers.get("connection", "").lower() != "close", headers)
        _assert(count >= 1, "no chunks")
        data = sse_payloads(body)
        texts.append("".join(c["choices"][0]["text"] for c in chunks_of(data)
                             if c["choices"]))
        [(st2, h2, b2)], rest = read_responses_after(sock, rest, 1)
        _assert(st2 == 200 and h2["x-request-id"] == "after-stream", (st2, h2))
        _assert(json.loads(b2) == {"status": "ok"}, b2)
        _assert(rest == b"", f"bytes after the answers: {rest[:100]!r}")
        sock.sendall(stream)  # a second stream on the same connection
        status, _, body, _, rest = read_chunked_response(sock)
        _assert(status == 200 and rest == b"", (status, rest[:100]))
        texts.append("".join(c["choices"][0]["text"]
                             for c in chunks_of(sse_payloads(body)) if c["choices"]))
    _assert(texts[0] and texts[0] == texts[1], texts)
    # HTTP/1.0: no chunks, the body ends with the connection.
    old = stream.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
        sock.sendall(old)
        data, end = b"", time.monotonic() + 60
        while True:
            _assert(time.monotonic() < end, "HTTP/1.0 stream did not end")
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    _assert(b"transfer-encoding" not in head.lower(), head)
    _assert("".join(c["choices"][0]["text"] for c in chunks_of(sse_payloads(body))
                    if c["choices"]) == texts[0], body[-300:])


def test_pipelined_after_completion(s):
    """Requests sent behind a non-streamed completion (HTTP pipelining) are
    read while it runs, kept, and answered after it, in order; a client that
    half-closes after them still gets every answer."""
    payload = json.dumps(dict(GEN, max_tokens=256)).encode()
    first = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: pipe-1\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
             ).encode() + payload
    second = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: pipe-2\r\n\r\n"
    third = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: pipe-3\r\n\r\n"
    for half_close in (False, True):
        with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
            sock.sendall(first)
            time.sleep(0.05)  # the completion runs; the next requests come apart
            sock.sendall(second + third)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            answers, rest = read_responses(sock, 3)
            _assert(rest == b"", f"bytes after the answers: {rest[:100]!r}")
            (st1, h1, b1), (st2, h2, b2), (st3, h3, b3) = answers
            _assert(st1 == 200 and h1["x-request-id"] == "pipe-1", (st1, h1, b1[:200]))
            _assert(json.loads(b1)["choices"][0]["text"], b1[:200])
            _assert(st2 == 200 and h2["x-request-id"] == "pipe-2", (st2, h2))
            _assert(json.loads(b2) == {"status": "ok"}, b2)
            _assert(st3 == 200 and h3["x-request-id"] == "pipe-3", (st3, h3))
            _assert(json.loads(b3) == {"live": True}, b3)
            if not half_close:
                # Still open for more (keep-alive).
                sock.sendall(second)
                [(st4, h4, _)], _ = read_responses(sock, 1)
                _assert(st4 == 200 and h4["x-request-id"] == "pipe-2", (st4, h4))


def test_speech(s):
    entry = model_entry(s, "tinyspeech")
    rate = entry.get("sample_rate")
    _assert(rate == 24000, f"sample_rate in /v1/models: {entry}")
    r = post_json(s, "/v1/audio/speech", {"model": "tinyspeech", "input": SPEECH_TEXT})
    _assert(r.status_code == 200, r.text)
    _assert(r.headers["Content-Type"] == "audio/wav", r.headers)
    _assert(r.headers.get("X-Worker"), r.headers)
    rtf = float(r.headers["X-Real-Time-Factor"])
    _assert(rtf > 0 and math.isfinite(rtf), rtf)
    framerate, channels, width, frames, pcm = read_wav(r.content)
    _assert((framerate, channels, width) == (rate, 1, 2), (framerate, channels, width))
    _assert(frames > 0, "no audio")
    _assert(any(b != 0 for b in pcm[:20000]), "silence")
    raw = post_json(s, "/v1/audio/speech",
                    {"model": "tinyspeech", "input": SPEECH_TEXT, "response_format": "pcm"})
    _assert(raw.status_code == 200 and raw.headers["Content-Type"] == "audio/pcm", raw.headers)
    _assert(raw.headers["X-Sample-Rate"] == str(rate), raw.headers)
    _assert(raw.content == pcm, "pcm differs from the wav's frames")

    # Streamed over a raw socket, so that the chunked framing itself is checked.
    status, headers, body = raw_http(s.port, "POST", "/v1/audio/speech",
                                     {"model": "tinyspeech", "input": SPEECH_TEXT,
                                      "stream": True})
    _assert(status == 200, body[:300])
    _assert(headers.get("transfer-encoding") == "chunked", headers)
    _assert("content-length" not in headers, headers)
    _assert(headers.get("content-type") == "audio/wav", headers)
    data, count, trailer = dechunk(body)
    _assert(count >= 1, "no chunks")
    _assert(trailer.get("x-worker"), f"trailer: {trailer}")
    framerate, channels, width, frames2, pcm2 = read_wav(fix_stream_wav(data))
    _assert((framerate, channels, width) == (rate, 1, 2), (framerate, channels, width))
    _assert(pcm2 == pcm, f"streamed audio differs ({len(pcm2)} vs {len(pcm)} bytes)")
    # The same through requests (chunked decoding of a common client), raw PCM.
    with requests.post(s.url + "/v1/audio/speech", stream=True, timeout=60,
                       json={"model": "tinyspeech", "input": SPEECH_TEXT, "stream": True,
                             "response_format": "pcm"}) as r2:
        _assert(r2.status_code == 200, r2.text)
        _assert(r2.headers["Content-Type"] == "audio/pcm", r2.headers)
        _assert(r2.headers["X-Sample-Rate"] == str(rate), r2.headers)
        streamed = b"".join(r2.iter_content(8192))
    _assert(streamed == pcm, "streamed pcm differs")


def test_speech_job_and_artifacts(s):
    r = s.post("/v1/jobs", json={"model": "tinyspeech", "input": {"text": SPEECH_TEXT}})
    _assert(r.status_code == 202, r.text)
    job = wait_job(s, r.json()["id"], deadline_s=60)
    out = job["output"]
    _assert(isinstance(out, dict) and out.get("artifact"), f"output: {out}")
    _assert(out.get("content_type") == "audio/wav", out)
    a = s.get(f"/v1/jobs/{job['id']}/artifacts/{out['artifact']}")
    _assert(a.status_code == 200, a.text)
    _assert(a.headers["Content-Type"] == "audio/wav", a.headers)
    _assert(int(a.headers["Content-Length"]) == len(a.content), a.headers)
    framerate, channels, width, frames, _ = read_wav(a.content)
    _assert(framerate == out["sample_rate"] and channels == 1 and width == 2,
            (framerate, channels, width, out))
    _assert(frames > 0 and frames == out["samples"], (frames, out))
    check_error(s.get(f"/v1/jobs/{job['id']}/artifacts/nope.wav"), 404, "not_found")
    check_error(s.get(f"/v1/jobs/{job['id']}/artifacts/..%2F..%2Finfergrid.db"), 404,
                "not_found")
    check_error(s.get("/v1/jobs/j_99999999/artifacts/x.wav"), 404, "not_found")
    check_error(s.post(f"/v1/jobs/{job['id']}/artifacts/x.wav"), 405, "invalid_input")


def test_generate_job_events(s):
    inp = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0.5, "seed": 3}
    r = s.post("/v1/jobs", json={"model": "tinylm", "input": inp})
    _assert(r.status_code == 202, r.text)
    job = wait_job(s, r.json()["id"], deadline_s=60)
    events = []
    with requests.get(f"{s.url}/v1/jobs/{job['id']}/events", stream=True, timeout=30) as ev:
        _assert(ev.status_code == 200, ev.text)
        current = {}
        for line in ev.iter_lines(decode_unicode=True):
            if line == "":
                if "data" in current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            current[k] = v[1:] if v.startswith(" ") else v
    deltas = [json.loads(e["data"]).get("delta", "") for e in events
              if e.get("event") == "data"]
    _assert(deltas, f"no data events: {events}")
    _assert("".join(deltas) == job["output"]["text"],
            f"{''.join(deltas)!r} != {job['output']['text']!r}")


def test_unload_and_load(s):
    r = s.post("/v1/models/tinylm/unload")
    _assert(r.status_code == 200, r.text)
    body = r.json()
    _assert(body["model"] == "tinylm" and body["workers"], body)
    _assert(all(w["state"] == "UNLOADED" and w["worker"] for w in body["workers"]), body)
    entry = model_entry(s, "tinylm")
    _assert(entry["state"] == "UNLOADED", entry)
    _assert(all(w["state"] == "UNLOADED" for w in entry["workers"]), entry)
    _assert(s.get("/v2/models/tinylm/ready").status_code == 200, "not ready while unloaded")
    # Loaded on demand.
    r = post_json(s, "/v1/completions", {"model": "tinylm", "prompt": "a", "max_tokens": 3})
    _assert(r.status_code == 200, r.text)
    wait_for(lambda: model_entry(s, "tinylm")["state"] == "READY", 30, "tinylm READY")
    entry = model_entry(s, "tinylm")
    w = entry["workers"][0]
    _assert(w["memory_mb"] >= 0 and w["last_used"], entry)
    # Explicit unload and load.
    _assert(s.post("/v1/models/tinylm/unload").status_code == 200, "unload")
    r = s.post("/v1/models/tinylm/load")
    _assert(r.status_code == 200, r.text)
    _assert(all(w["state"] == "READY" for w in r.json()["workers"]), r.text)
    _assert(model_entry(s, "tinylm")["state"] == "READY", "not READY after load")
    check_error(s.post("/v1/models/nope/unload"), 404, "not_found")
    check_error(s.post("/v1/models/nope/load"), 404, "not_found")
    check_error(s.get("/v1/models/tinylm/load"), 405, "invalid_input")


ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WORKER_KEYS = ["id", "state", "device", "host", "claim_path", "last_seen", "running_jobs",
               "session", "memory_budget_mb", "models"]


def check_worker(w):
    _assert(list(w.keys()) == WORKER_KEYS, f"worker keys: {list(w.keys())}")
    _assert(isinstance(w["id"], str) and w["id"], w)
    _assert(w["state"] in ("LOADING", "IDLE", "BUSY", "SESSION_ACTIVE", "SESSION_PAUSED",
                           "ERROR", "DRAINING"), w)
    _assert(w["session"] is None or w["state"] in ("SESSION_ACTIVE", "SESSION_PAUSED",
                                                   "DRAINING"), w)
    _assert(w["device"] == "cpu" or w["device"].startswith("cuda"), w)
    _assert(isinstance(w["host"], str), w)
    _assert(w["claim_path"] in ("in-process", "direct", "queue"), w)
    _assert(w["last_seen"] is None or ISO_TIME.match(w["last_seen"]), w)
    _assert(isinstance(w["running_jobs"], int) and w["running_jobs"] >= 0, w)
    _assert(isinstance(w["memory_budget_mb"], int) and w["memory_budget_mb"] >= 0, w)
    for m in w["models"]:
        _assert(set(m) <= {"name", "state", "error", "memory_mb", "last_used"}, m)
        _assert(m["state"] in ("READY", "LOADING", "UNLOADED", "FAILED"), m)
        _assert(isinstance(m["memory_mb"], int), m)
        _assert(m["last_used"] is None or ISO_TIME.match(m["last_used"]), m)
        _assert(("error" in m) == (m["state"] == "FAILED"), m)


def only_worker(s):
    r = s.get("/admin/api/workers")
    _assert(r.status_code == 200, r.text)
    _assert(r.headers["Content-Type"].startswith("application/json"), r.headers)
    workers = r.json()["workers"]
    _assert(len(workers) == 1, f"one worker expected: {workers}")
    check_worker(workers[0])
    return workers[0]


def test_admin_workers_and_queue(s):
    w = only_worker(s)
    names = {m["name"] for m in w["models"]}
    _assert({"classifier", "tinylm", "tinyspeech"} <= names, f"models: {names}")
    _assert(w["state"] in ("IDLE", "BUSY"), w)
    # `serve` runs its worker in the process or as a child process on this
    # host (which opens the SQLite file itself).
    _assert(w["claim_path"] in ("in-process", "direct"), w)
    # The models list and the workers list tell the same story.
    entry = model_entry(s, "classifier")
    _assert([x["worker"] for x in entry["workers"]] == [w["id"]], entry)
    # A worker is seen again while it works: last_seen moves forward.
    seen0 = w["last_seen"]
    _assert(seen0 is not None, w)
    time.sleep(0.01)
    _assert(post_json(s, "/v2/models/classifier/infer", classifier_input(1)).status_code
            == 200, "infer")
    wait_for(lambda: only_worker(s)["last_seen"] > seen0, 30, "last_seen to move")
    q = s.get("/admin/api/queue")
    _assert(q.status_code == 200, q.text)
    body = q.json()
    _assert(list(body.keys()) == ["jobs_by_state", "interactive_waiting", "sessions_active",
                                  "sessions_waiting", "workers_total", "workers_ready",
                                  "workers_busy"], body)
    _assert(list(body["jobs_by_state"].keys())[:6]
            == ["queued", "running", "succeeded", "failed", "dead", "cancelled"], body)
    _assert(body["workers_total"] == 1 and body["workers_busy"] in (0, 1), body)
    _assert(body["interactive_waiting"] >= 0, body)
    # The counts follow the jobs: earlier cases left succeeded jobs behind.
    listed = s.get("/v1/jobs?state=succeeded&limit=1000").json()["jobs"]
    _assert(body["jobs_by_state"]["succeeded"] == len(listed), (body, len(listed)))
    r = s.post("/admin/api/workers")
    check_error(r, 405, "invalid_input")
    _assert(r.headers.get("Allow") == "GET", r.headers)
    check_error(s.get(f"/admin/api/workers/{w['id']}/drain"), 405, "invalid_input")
    check_error(s.post("/admin/api/workers/nope/drain"), 404, "not_found")
    check_error(s.post("/admin/api/workers/nope/resume"), 404, "not_found")
    check_error(s.get("/admin/api/nothing"), 404, "not_found")


def test_drain_and_resume(s):
    wid = only_worker(s)["id"]
    r = s.post(f"/admin/api/workers/{wid}/drain")
    _assert(r.status_code == 200, r.text)
    drained = r.json()
    check_worker(drained)
    _assert(drained["id"] == wid and drained["state"] == "DRAINING", drained)
    _assert(only_worker(s)["state"] == "DRAINING", "the list does not show DRAINING")
    # Draining twice is no error and changes nothing.
    again = s.post(f"/admin/api/workers/{wid}/drain")
    _assert(again.status_code == 200 and again.json()["state"] == "DRAINING", again.text)
    try:
        # The only worker takes no new work: a request for a model no other
        # worker serves is refused at once (503), not queued.
        t0 = time.monotonic()
        r = post_json(s, "/v2/models/classifier/infer", classifier_input(2), timeout=30)
        took = time.monotonic() - t0
        check_error(r, 503, "unavailable")
        _assert(took < 5, f"refusal took {took:.1f}s")
        check_error(post_json(s, "/v1/completions", dict(GEN, max_tokens=4)), 503,
                    "unavailable")
        _assert(s.get("/v2/models/classifier/ready").status_code == 503,
                "ready while its only worker drains")
        # A durable job is accepted and waits.
        job = s.post("/v1/jobs", json={"model": "classifier", "input": classifier_input(1)})
        _assert(job.status_code == 202, job.text)
        jid = job.json()["id"]
        time.sleep(1.0)
        _assert(s.get(f"/v1/jobs/{jid}").json()["state"] == "queued",
                "a draining worker claimed a job")
    finally:
        r = s.post(f"/admin/api/workers/{wid}/resume")
    _assert(r.status_code == 200, r.text)
    resumed = r.json()
    check_worker(resumed)
    _assert(resumed["id"] == wid and resumed["state"] in ("IDLE", "BUSY"), resumed)
    r = post_json(s, "/v2/models/classifier/infer", classifier_input(2), timeout=30)
    _assert(r.status_code == 200, r.text)
    wait_job(s, jid, deadline_s=60)
    _assert(s.get("/v2/models/classifier/ready").status_code == 200, "not ready after resume")


def test_errors(s):
    check_error(post_json(s, "/v1/completions", {"model": "nope", "prompt": "x"}),
                404, "not_found")
    check_error(post_json(s, "/v1/completions", {"model": "nope", "prompt": "x",
                                                  "stream": True}), 404, "not_found")
    check_error(post_json(s, "/v1/completions", {"model": "classifier", "prompt": "x"}),
                400, "invalid_input")
    check_error(post_json(s, "/v1/chat/completions",
                          {"model": "tinyspeech", "messages": [{"role": "user",
                                                                "content": "x"}]}),
                400, "invalid_input")
    check_error(post_json(s, "/v1/completions",
                          {"model": "tinylm", "prompt": "x", "max_tokens": 0}),
                400, "invalid_input", "max_tokens")
    check_error(post_json(s, "/v1/completions",
                          {"model": "tinylm", "prompt": "x", "n": 2}),
                400, "invalid_input", "n")
    check_error(post_json(s, "/v1/chat/completions", {"model": "tinylm", "messages": []}),
                400, "invalid_input", "messages")
    check_error(post_json(s, "/v1/completions", {"model": "tinylm", "prompt": "x",
                                                  "bogus": 1}),
                400, "invalid_input", "bogus")
    check_error(s.post("/v1/completions", data="{not json"), 400, "invalid_input")
    check_error(post_json(s, "/v1/audio/speech", {"model": "nope", "input": "x"}),
                404, "not_found")
    check_error(post_json(s, "/v1/audio/speech", {"model": "tinylm", "input": "x"}),
                400, "invalid_input")
    check_error(post_json(s, "/v1/audio/speech", {"model": "tinyspeech", "input": "x",
                                                   "stream": True, "response_format": "mp3"}),
                400, "invalid_input", "response_format")
    check_error(post_json(s, "/v1/audio/speech", {"model": "tinyspeech", "input": ""}),
                400, "invalid_input", "input")
    r = s.get("/v1/completions")
    check_error(r, 405, "invalid_input")
    _assert(r.headers.get("Allow") == "POST", r.headers)
    check_error(s.get("/v1/audio/speech"), 405, "invalid_input")


def test_metrics(s):
    text = metrics(s)
    samples = parse_metrics(text)
    names = {n for n, _, _ in samples}
    for name in ["infergrid_model_requests_total", "infergrid_model_queue_seconds_bucket",
                 "infergrid_model_compute_seconds_sum", "infergrid_model_batch_size_count",
                 "infergrid_model_generated_tokens_total",
                 "infergrid_model_generate_seconds_total",
                 "infergrid_model_tokens_per_second", "infergrid_model_audio_seconds_total",
                 "infergrid_model_synthesis_seconds_total",
                 "infergrid_model_real_time_factor", "infergrid_model_resident",
                 "infergrid_model_memory_mb", "infergrid_worker_state"]:
        _assert(name in names, f"{name} missing from /metrics")
    for n, labels, _ in samples:
        if n.startswith("infergrid_model_"):
            _assert(labels.get("model") and labels.get("worker"), (n, labels))
    _assert(metric_sum(samples, "infergrid_model_tokens_per_second", model="tinylm") > 0,
            "tokens per second")
    _assert(metric_sum(samples, "infergrid_model_real_time_factor", model="tinyspeech") > 0,
            "real-time factor")
    _assert(metric_sum(samples, "infergrid_model_resident", model="classifier") >= 1,
            "classifier not resident")
    _assert(metric_sum(samples, "infergrid_worker_state") == 1, "one worker, one state")
    # Every family's TYPE comes once, before its samples.
    seen_types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    _assert(len(seen_types) == len(set(seen_types)), "a TYPE twice")
    _assert(metric_sum(samples, "infergrid_http_requests_total",
                       route="/v1/completions", method="POST", code="200") >= 1,
            "completions not counted per route")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="infergrid-inference-") as root:
        s = Server(args.binary, root, 1, "inference.log")
        try:
            s.wait_healthy()
            s.wait_ready()
            for name, fn in [("kserve batching", test_kserve_batching),
                             ("completions", test_completions),
                             ("chat completions", test_chat),
                             ("include_usage", test_include_usage),
                             ("disconnect frees the worker", test_disconnect_frees_worker),
                             ("non-streamed disconnect frees the worker",
                              test_nonstream_disconnect_frees_worker),
                             ("pipelined requests after a completion",
                              test_pipelined_after_completion),
                             ("streams keep the connection", test_stream_keeps_the_connection),
                             ("speech", test_speech),
                             ("speech job and artifacts", test_speech_job_and_artifacts),
                             ("generate job data events", test_generate_job_events),
                             ("unload and load", test_unload_and_load),
                             ("admin workers and queue", test_admin_workers_and_queue),
                             ("drain and resume", test_drain_and_resume),
                             ("errors", test_errors),
                             ("metrics", test_metrics)]:
                ok = run_case(name, fn, s)
                if not ok:
                    print(s.tail(), flush=True)
                results.append(ok)
        except Exception:  # noqa: BLE001
            print(f"FAIL start-up\n{traceback.format_exc()}\n{s.tail()}", flush=True)
            results.append(False)
        rc = s.stop()
        results.append(run_case("exit 0", lambda: _assert(rc == 0, f"rc={rc}\n{s.tail()}")))
    results.append(run_case("a client that stops reading", test_client_not_reading,
                            args.binary))
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
