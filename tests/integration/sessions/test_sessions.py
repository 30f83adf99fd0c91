#!/usr/bin/env python3
"""Black-box test of WebSocket sessions (GET /v1/sessions) over real sockets:
turn-by-turn chat on the generate model with its state kept between turns,
determinism against /v1/completions, pause and resume, the pause and idle
timeouts, a worker reserved per session with the others waiting in FIFO order
(queue.position), barge-in, bad frames and bad starts, a speech model's audio,
clients that go away, and a killed worker process (worker_lost). Runs against
`serve --in-process --workers 1` and against `serve --workers 1` (a worker
process). Every wait has a deadline; never sleeps blindly."""
import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
import traceback

import requests
import websockets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import (Server, _assert, report, run_case, wait_for,  # noqa: E402
                     worker_pid)

LM = "tinylm"
SPEECH = "tinyspeech"
TENSOR = "classifier"
TURN1 = "Once upon a time"
TURN2 = " and then the little dog said"
# Low temperature: the byte-level demo model then writes printable ASCII.
CHAT = {"max_tokens": 16, "temperature": 0.5, "seed": 11}
SPEECH_TEXT = "Hello there. This is a session speaking, in two phrases!"
SESSION_ID = re.compile(r"^s-[0-9a-fA-F]{16}$")

FRAME_S = 10.0    # one expected frame
TURN_S = 60.0     # one whole turn (4096 tokens on a slow machine included)
CASE_S = 240.0    # one whole case
PAUSE_TIMEOUT_MS = 300
IDLE_TIMEOUT_MS = 2000


# ------------------------------------------------------------------ helpers

def ws_url(s):
    return f"ws://127.0.0.1:{s.port}/v1/sessions"


def describe(frame):
    if isinstance(frame, bytes):
        return f"<binary, {len(frame)} bytes>"
    return json.dumps(frame)


def workers(s):
    r = s.get("/admin/api/workers")
    _assert(r.status_code == 200, f"/admin/api/workers: {r.status_code} {r.text}")
    return r.json()["workers"]


def only_worker(s):
    ws = workers(s)
    _assert(len(ws) == 1, f"one worker expected: {ws}")
    return ws[0]


async def wait_phase(s, phase, deadline_s=FRAME_S):
    """Polls /admin/api/workers until the only worker's state is `phase`."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            ws = workers(s)
            last = [(w.get("id"), w.get("state")) for w in ws]
            if len(ws) == 1 and ws[0].get("state") == phase:
                return ws[0]
        except requests.RequestException as e:
            last = e
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s}s waiting for the worker to be "
                         f"{phase} (last: {last!r})")


def completion(s, prompt, **params):
    r = s.post("/v1/completions", json=dict({"model": LM, "prompt": prompt}, **params))
    _assert(r.status_code == 200, f"/v1/completions: {r.status_code} {r.text}")
    return r.json()


def check_text_usage(end, max_tokens):
    u = end.get("usage")
    _assert(isinstance(u, dict), f"turn.end without usage: {end}")
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        _assert(isinstance(u.get(k), int), f"usage.{k} is not an integer: {end}")
    _assert(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"],
            f"total_tokens is not the sum: {end}")
    _assert(end.get("finish_reason") in ("length", "stop", "cancelled"), f"finish: {end}")
    if end["finish_reason"] == "cancelled":
        # How much an interrupted turn counts is not specified; only bounds.
        _assert(0 <= u["completion_tokens"] < max_tokens and u["prompt_tokens"] >= 0,
                f"usage of a cancelled turn: {end}")
        return
    _assert(1 <= u["completion_tokens"] <= max_tokens,
            f"completion_tokens not in 1..{max_tokens}: {end}")
    _assert(u["prompt_tokens"] >= 1, f"prompt_tokens: {end}")
    if end["finish_reason"] == "length":
        _assert(u["completion_tokens"] == max_tokens,
                f"finish_reason length with {u['completion_tokens']} of {max_tokens}: {end}")




class Turn:
    def __init__(self):
        self.text = ""
        self.pcm = bytearray()
        self.texts = 0   # output.text frames
        self.audio = 0   # binary frames
        self.states = []  # state frames between SPEAKING and turn.end
        self.end = None


class Ws:
    """One client WebSocket on /v1/sessions. Keeps the frames it got (shown
    when a check fails), the last output.text seq and the turns ended."""

    def __init__(self, ws, label):
        self.ws = ws
        self.label = label
        self.got = []
        self.seq = 0
        self.turns = 0
        self.started = None

    @classmethod
    async def connect(cls, s, label):
        async def open_():
            return await websockets.connect(ws_url(s), open_timeout=FRAME_S,
                                            close_timeout=2, max_size=None,
                                            ping_interval=None)
        try:
            ws = await asyncio.wait_for(open_(), FRAME_S + 1)
        except (asyncio.TimeoutError, OSError, websockets.WebSocketException) as e:
            raise AssertionError(f"{label}: cannot open {ws_url(s)}: {e!r}") from None
        return cls(ws, label)

    def history(self):
        shown = " | ".join(describe(f) for f in self.got[-15:])
        return f"[{self.label}: {len(self.got)} frames, the last: {shown}]"

    async def send(self, frame):
        data = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
        try:
            await asyncio.wait_for(self.ws.send(data), FRAME_S)
        except websockets.ConnectionClosed as e:
            raise AssertionError(f"closed when sending {data[:100]!r} ({e}); "
                                 f"{self.history()}") from None

    async def control(self, action):
        await self.send({"type": "control", "action": action})

    async def recv_or_none(self, deadline_s):
        """The next frame, or None when none comes within deadline_s."""
        try:
            msg = await asyncio.wait_for(self.ws.recv(), max(deadline_s, 0.001))
        except asyncio.TimeoutError:
            return None
        except websockets.ConnectionClosed as e:
            raise AssertionError(f"connection closed ({e}); {self.history()}") from None
        if isinstance(msg, str):
            try:
                frame = json.loads(msg)
            except ValueError:
                raise AssertionError(f"a text frame that is not JSON: {msg[:300]!r}; "
                                     f"{self.history()}") from None
            _assert(isinstance(frame, dict) and isinstance(frame.get("type"), str),
                    f"a text frame without a type: {msg[:300]!r}; {self.history()}")
        else:
            frame = bytes(msg)
        self.got.append(frame)
        return frame

    async def recv(self, deadline_s=FRAME_S):
        frame = await self.recv_or_none(deadline_s)
        _assert(frame is not None, f"no frame within {deadline_s}s; {self.history()}")
        return frame

    async def frames_within(self, window_s):
        """Every frame that comes within window_s (a bounded check that
        something does not happen)."""
        end = time.monotonic() + window_s
        out = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return out
            frame = await self.recv_or_none(left)
            if frame is not None:
                out.append(frame)

    async def expect(self, type_, deadline_s=FRAME_S, **fields):
        frame = await self.recv(deadline_s)
        _assert(isinstance(frame, dict) and frame["type"] == type_,
                f"expected a {type_} frame, got {describe(frame)}; {self.history()}")
        for k, v in fields.items():
            _assert(frame.get(k) == v, f"{type_}.{k}: expected {v!r}, got {frame}; "
                                       f"{self.history()}")
        return frame

    async def expect_state(self, state, deadline_s=FRAME_S):
        return await self.expect("state", deadline_s, state=state)

    async def expect_error(self, code, deadline_s=FRAME_S):
        frame = await self.expect("error", deadline_s, code=code)
        _assert(isinstance(frame.get("message"), str) and frame["message"],
                f"an error without a message: {frame}")
        return frame

    async def expect_closed(self, deadline_s=FRAME_S):
        """The server closes the socket, sending nothing more."""
        try:
            msg = await asyncio.wait_for(self.ws.recv(), deadline_s)
        except websockets.ConnectionClosed:
            return
        except asyncio.TimeoutError:
            raise AssertionError(f"still open {deadline_s}s after session.end; "
                                 f"{self.history()}") from None
        raise AssertionError(f"a frame after session.end: {describe(msg)}; {self.history()}")

    async def expect_end(self, reason, deadline_s=FRAME_S):
        frame = await self.expect("session.end", deadline_s, reason=reason)
        await self.expect_closed()
        return frame

    async def send_start(self, model, **opts):
        await self.send(dict({"type": "session.start", "model": model, "mode": "turn"},
                             **opts))

    async def await_started(self, model, deadline_s=FRAME_S, max_position=None):
        """queue.position frames (while it waits), session.started, LISTENING.
        Returns the positions seen."""
        positions = []
        end = time.monotonic() + deadline_s
        while True:
            frame = await self.recv(end - time.monotonic())
            if not (isinstance(frame, dict) and frame["type"] == "queue.position"):
                break
            p = frame.get("position")
            _assert(isinstance(p, int) and p >= 1, f"bad queue.position: {frame}")
            if max_position is not None:
                _assert(p <= max_position, f"position {p} > {max_position}: {frame}")
            if positions:
                _assert(p <= positions[-1], f"position went up: {positions} then {frame}")
            if "eta_ms" in frame:
                _assert(isinstance(frame["eta_ms"], int) and frame["eta_ms"] >= 0,
                        f"bad eta_ms: {frame}")
            positions.append(p)
        _assert(isinstance(frame, dict) and frame["type"] == "session.started",
                f"expected session.started, got {describe(frame)}; {self.history()}")
        _assert(SESSION_ID.match(str(frame.get("session_id"))),
                f"session_id is not s-<16 hex>: {frame}")
        _assert(isinstance(frame.get("worker"), str) and frame["worker"], frame)
        _assert(frame.get("model") == model and frame.get("mode") == "turn", frame)
        self.started = frame
        await self.expect_state("LISTENING")
        return positions

    async def start(self, model, deadline_s=FRAME_S, **opts):
        await self.send_start(model, **opts)
        positions = await self.await_started(model, deadline_s)
        return self.started, positions

    def take_text(self, frame, turn):
        _assert(isinstance(frame.get("delta"), str), f"output.text without delta: {frame}")
        _assert(frame.get("seq") == self.seq + 1,
                f"seq {frame.get('seq')} after {self.seq}; {self.history()}")
        self.seq += 1
        turn.text += frame["delta"]
        turn.texts += 1

    async def read_turn(self, turn, audio=False, deadline_s=TURN_S, states=()):
        """Reads a turn's frames up to turn.end and the LISTENING after it.
        `states`: state frames allowed before turn.end (in turn.states)."""
        end = time.monotonic() + deadline_s
        while True:
            frame = await self.recv(end - time.monotonic())
            if isinstance(frame, bytes):
                _assert(audio, f"a binary frame in a text turn; {self.history()}")
                turn.pcm += frame
                turn.audio += 1
            elif frame["type"] == "output.text":
                self.take_text(frame, turn)
            elif frame["type"] == "state" and frame.get("state") in states:
                turn.states.append(frame["state"])
            elif frame["type"] == "turn.end":
                break
            else:
                raise AssertionError(f"unexpected frame in a turn: {frame}; {self.history()}")
        self.turns += 1
        _assert(frame.get("turn") == self.turns,
                f"turn.end turn {frame.get('turn')}, expected {self.turns}: {frame}")
        turn.end = frame
        await self.expect_state("LISTENING")
        return turn

    async def turn(self, text, audio=False, deadline_s=TURN_S):
        await self.send({"type": "input.text", "text": text})
        await self.expect_state("SPEAKING")
        return await self.read_turn(Turn(), audio, deadline_s)

    async def stop(self):
        await self.control("stop")
        await self.expect_end("stopped")

    async def close(self):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if not self.ws.closed:
            self.ws.transport.abort()


@contextlib.asynccontextmanager
async def session(s, label):
    c = await Ws.connect(s, label)
    try:
        yield c
    finally:
        await c.close()


def sync(fn):
    """A case as run_case wants it: a plain function, with an overall deadline."""
    def run(*args):
        async def bounded():
            try:
                return await asyncio.wait_for(fn(*args), CASE_S)
            except asyncio.TimeoutError:
                raise AssertionError(f"the case ran past {CASE_S}s") from None
        return asyncio.run(bounded())
    return run


# ------------------------------------------------------------------- cases

async def test_turn_chat(s):
    await wait_phase(s, "IDLE")
    wid = only_worker(s)["id"]
    async with session(s, "chat") as c:
        started, _ = await c.start(LM, **CHAT)
        _assert(started["worker"] == wid, f"worker {started['worker']} != {wid}")
        _assert("sample_rate" not in started, f"sample_rate for a text model: {started}")
        await wait_phase(s, "SESSION_ACTIVE")
        t1 = await c.turn(TURN1)
        t2 = await c.turn(TURN2)
        for i, t in enumerate((t1, t2), 1):
            _assert(t.text, f"turn {i}: no text: {t.end}; {c.history()}")
            _assert(t.texts >= 1, f"turn {i}: no output.text frame")
            check_text_usage(t.end, CHAT["max_tokens"])
        _assert(c.seq == t1.texts + t2.texts and c.seq >= 2,
                f"seq {c.seq} over {t1.texts} + {t2.texts} frames")
        # Between turns the worker stays reserved, and every listing says so.
        await wait_phase(s, "SESSION_ACTIVE")
        models = s.get("/v1/models").json()["models"]
        on = [w for m in models if m["name"] == LM for w in m["workers"]]
        _assert(on and all(w["worker_state"] == "SESSION_ACTIVE" for w in on), models)
        listed = s.get("/admin/api/sessions").json()
        _assert([x["session_id"] for x in listed["sessions"]] == [started["session_id"]]
                and listed["sessions"][0]["worker"] == wid
                and listed["sessions"][0]["state"] == "SESSION_ACTIVE", listed)
        metrics = s.get("/metrics").text
        _assert(f'infergrid_worker_state{{worker="{wid}",state="SESSION_ACTIVE"}} 1'
                in metrics and 'infergrid_sessions{state="active"} 1' in metrics,
                "metrics do not show the session")
        # And the workers table, for `sqlite3 data/infergrid.db`.
        db = os.path.join(os.path.dirname(s.log_path), "data", "infergrid.db")
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute("select state from workers where id = ?", (wid,)).fetchall()
        _assert(rows == [("SESSION_ACTIVE",)], f"workers table: {rows}")
        print(f"  turns: {t1.text!r} / {t2.text!r}", flush=True)
        await c.stop()
    await wait_phase(s, "IDLE")


async def two_turns(s, label, params):
    async with session(s, label) as c:
        await c.start(LM, **params)
        a = await c.turn(TURN1)
        b = await c.turn(TURN2)
        await c.stop()
    await wait_phase(s, "IDLE")
    return a, b


async def test_determinism(s):
    await wait_phase(s, "IDLE")
    a1, b1 = await two_turns(s, "run 1", CHAT)
    a2, b2 = await two_turns(s, "run 2", CHAT)
    _assert(a1.text and b1.text, (a1.text, b1.text))
    _assert(a1.text == a2.text, f"turn 1 differs with the same seed: {a1.text!r} {a2.text!r}")
    _assert(b1.text == b2.text, f"turn 2 differs with the same seed: {b1.text!r} {b2.text!r}")
    # Turn 1 is a fresh generation: the same as a completion with the same
    # seed, sampling and prompt.
    body = completion(s, TURN1, **CHAT)
    text = body["choices"][0]["text"]
    _assert(text == a1.text, f"completion {text!r} != turn 1 {a1.text!r}")
    _assert(body["usage"] == a1.end["usage"], f"usage {body['usage']} != {a1.end['usage']}")
    # The state is kept between turns: greedy (no sampling), turn 2 continues
    # from turn 1's prompt and answer, as a completion of all three would.
    g1, g2 = await two_turns(s, "greedy", {"max_tokens": 16, "temperature": 0})
    fresh1 = completion(s, TURN1, max_tokens=16, temperature=0)["choices"][0]["text"]
    _assert(g1.text == fresh1, f"greedy turn 1 {g1.text!r} != completion {fresh1!r}")
    if g1.text.isascii() and g1.end["finish_reason"] == "length":
        whole = completion(s, TURN1 + g1.text + TURN2, max_tokens=16,
                           temperature=0)["choices"][0]["text"]
        alone = completion(s, TURN2, max_tokens=16, temperature=0)["choices"][0]["text"]
        _assert(g2.text == whole,
                f"greedy turn 2 {g2.text!r} is not the continuation {whole!r} of turn 1 "
                f"(a fresh start on turn 2's text alone gives {alone!r})")
    else:
        print(f"  turn 1 {g1.text!r} ({g1.end['finish_reason']}) cannot be fed back as "
              "text; the continuation check is skipped", flush=True)


async def test_pause_resume(s):
    await wait_phase(s, "IDLE")
    async with session(s, "pause") as c:
        await c.start(LM, **CHAT)
        await wait_phase(s, "SESSION_ACTIVE")
        await c.control("pause")
        await c.expect_state("PAUSED")
        await wait_phase(s, "SESSION_PAUSED")
        await c.send({"type": "input.text", "text": TURN1})
        await c.expect_error("conflict")
        # No turn ran: the next frame after resume is LISTENING, not SPEAKING.
        await c.control("resume")
        await c.expect_state("LISTENING")
        await wait_phase(s, "SESSION_ACTIVE")
        t = await c.turn(TURN1)
        _assert(t.text, f"no text after resume: {t.end}")
        check_text_usage(t.end, CHAT["max_tokens"])
        # Stop while paused.
        await c.control("pause")
        await c.expect_state("PAUSED")
        await c.stop()
    await wait_phase(s, "IDLE")


async def test_pause_timeout(s):
    await wait_phase(s, "IDLE")
    async with session(s, "pause timeout") as c:
        await c.start(LM, **CHAT)
        await c.control("pause")
        await c.expect_state("PAUSED")
        t0 = time.monotonic()
        await c.expect_end("pause_timeout", deadline_s=PAUSE_TIMEOUT_MS / 1000 + 5)
        waited = time.monotonic() - t0
    _assert(waited >= PAUSE_TIMEOUT_MS / 1000 - 0.1,
            f"ended {waited:.2f}s after PAUSED, pause_timeout_ms is {PAUSE_TIMEOUT_MS}")
    await wait_phase(s, "IDLE")


async def test_idle_timeout(s):
    await wait_phase(s, "IDLE")
    async with session(s, "idle timeout") as c:
        await c.start(LM, **CHAT)
        t0 = time.monotonic()
        await c.expect_end("idle_timeout", deadline_s=IDLE_TIMEOUT_MS / 1000 + 8)
        waited = time.monotonic() - t0
    _assert(waited >= IDLE_TIMEOUT_MS / 1000 - 0.5,
            f"ended {waited:.2f}s after LISTENING, idle_timeout_ms is {IDLE_TIMEOUT_MS}")
    await wait_phase(s, "IDLE")


async def test_reservation_fifo(s):
    await wait_phase(s, "IDLE")
    wid = only_worker(s)["id"]
    async with session(s, "A") as a, session(s, "B") as b, session(s, "C") as c:
        await a.start(LM, **CHAT)
        await b.send_start(LM, **CHAT)
        await b.expect("queue.position", position=1)
        await c.send_start(LM, **CHAT)
        await c.expect("queue.position", position=2)
        # A keeps its worker: its turn runs while B and C wait, and they get
        # nothing but positions meanwhile.
        t = await a.turn(TURN1)
        _assert(t.text, f"A's turn: {t.end}")
        await wait_phase(s, "SESSION_ACTIVE")
        for w in (b, c):
            for f in await w.frames_within(0.3):
                _assert(isinstance(f, dict) and f["type"] == "queue.position",
                        f"{w.label} got {describe(f)} while A holds the worker")
        await a.stop()
        # First come, first served: B, while C still waits.
        await b.await_started(LM, max_position=1)
        _assert(b.started["worker"] == wid, b.started)
        _assert(b.started["session_id"] != a.started["session_id"], (a.started, b.started))
        for f in await c.frames_within(0.3):
            _assert(isinstance(f, dict) and f["type"] == "queue.position"
                    and f.get("position") in (1, 2),
                    f"C got {describe(f)} while B holds the worker")
        t = await b.turn(TURN1)
        _assert(t.text, f"B's turn: {t.end}")
        await b.stop()
        await c.await_started(LM, max_position=2)
        _assert(c.started["worker"] == wid, c.started)
        t = await c.turn(TURN1)
        _assert(t.text, f"C's turn: {t.end}")
        await c.stop()
    await wait_phase(s, "IDLE")


async def test_barge_in(s):
    await wait_phase(s, "IDLE")
    long_turn = {"max_tokens": 4096, "temperature": 1.0, "seed": 3}
    async with session(s, "barge") as c:
        await c.start(LM, **long_turn)
        cancelled = None
        for attempt in range(1, 4):
            await c.send({"type": "input.text", "text": TURN1})
            await c.expect_state("SPEAKING")
            turn = Turn()
            first = await c.recv(TURN_S)
            _assert(isinstance(first, dict) and first["type"] == "output.text",
                    f"expected the first output.text, got {describe(first)}")
            c.take_text(first, turn)
            await c.control("barge_in")
            await c.read_turn(turn, states=("BARGED_IN",))
            end = turn.end
            check_text_usage(end, 4096)
            if end["finish_reason"] == "cancelled":
                _assert(turn.states == ["BARGED_IN"],
                        f"states before the cancelled turn.end: {turn.states}")
                cancelled = turn
                break
            # The turn ran out before the barge-in took effect: it ran in full.
            _assert(end["finish_reason"] == "length", f"turn.end {end}")
            if turn.states == ["BARGED_IN"]:
                # Barged in while the last token was made: a race, not a
                # cancellation. Try again.
                print(f"  attempt {attempt}: BARGED_IN as the turn ran out", flush=True)
                continue
            _assert(turn.states == [], f"turn.end {end} after states {turn.states}")
            # Nothing was barged in; the late barge_in is answered with an
            # error or a LISTENING state.
            late = await c.recv()
            _assert(isinstance(late, dict)
                    and ((late["type"] == "error" and late.get("code")
                          in ("conflict", "invalid_input"))
                         or (late["type"] == "state" and late.get("state") == "LISTENING")),
                    f"a barge_in after the turn ended got {describe(late)}")
            print(f"  attempt {attempt}: the turn ended before the barge-in", flush=True)
        _assert(cancelled, "barge_in never interrupted a turn of 4096 tokens in 3 attempts")
        print(f"  barged in after {cancelled.texts} output.text frame(s); turn.end "
              f"{cancelled.end}", flush=True)
        # The session goes on: the next turn runs in full.
        t = await c.turn(TURN2, deadline_s=120)
        _assert(t.text and t.end["finish_reason"] == "length", f"turn after barge-in: {t.end}")
        check_text_usage(t.end, 4096)
        await c.stop()
    await wait_phase(s, "IDLE")


async def bad_start(s, label, frame, code):
    async with session(s, label) as c:
        await c.send(frame)
        await c.expect_error(code)
        await c.expect_end("error")


async def test_bad_input(s):
    await wait_phase(s, "IDLE")
    # A plain GET (no upgrade) is refused with a JSON error.
    r = s.get("/v1/sessions")
    _assert(400 <= r.status_code < 500, f"plain GET /v1/sessions: {r.status_code} {r.text}")
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    _assert(isinstance(code, str) and code, f"plain GET /v1/sessions: not a JSON error: {r.text}")
    start = {"type": "session.start", "mode": "turn"}
    await bad_start(s, "unknown model", dict(start, model="nope"), "not_found")
    await bad_start(s, "duplex", dict(start, model=LM, mode="duplex"), "invalid_input")
    await bad_start(s, "tensor model", dict(start, model=TENSOR), "invalid_input")
    await bad_start(s, "record", dict(start, model=LM, record=True), "invalid_input")
    await bad_start(s, "unknown field", dict(start, model=LM, bogus=1), "invalid_input")
    await bad_start(s, "max_tokens 0", dict(start, model=LM, max_tokens=0), "invalid_input")
    await bad_start(s, "no model", dict(start), "invalid_input")
    await wait_phase(s, "IDLE")
    # Bad frames in a session are answered with errors; it goes on.
    async with session(s, "bad frames") as c:
        await c.start(LM, record=False, **CHAT)
        await c.send("{not json")
        await c.expect_error("invalid_input")
        await c.send(b"\x00\x01" * 160)  # audio for a text model
        await c.expect_error("invalid_input")
        await c.send({"type": "control", "action": "explode"})
        await c.expect_error("invalid_input")
        await c.send({"type": "nonsense"})
        await c.expect_error("invalid_input")
        await c.send({"type": "input.text", "text": ""})
        await c.expect_error("invalid_input")
        t = await c.turn(TURN1)
        _assert(t.text, f"no text after the bad frames: {t.end}")
        check_text_usage(t.end, CHAT["max_tokens"])
        await c.stop()
    await wait_phase(s, "IDLE")


async def test_speech(s):
    await wait_phase(s, "IDLE")
    r = s.get("/v1/models")
    _assert(r.status_code == 200, r.text)
    entry = [m for m in r.json()["models"] if m["name"] == SPEECH]
    _assert(entry and isinstance(entry[0].get("sample_rate"), int), r.text)
    rate = entry[0]["sample_rate"]
    async with session(s, "speech") as c:
        started, _ = await c.start(SPEECH)
        _assert(started.get("sample_rate") == rate,
                f"session.started sample_rate {started.get('sample_rate')} != {rate}")
        t = await c.turn(SPEECH_TEXT, audio=True)
        n = len(t.pcm)
        _assert(t.audio >= 1 and n > 0 and n % 2 == 0,
                f"{t.audio} binary frames, {n} bytes; {c.history()}")
        _assert(any(t.pcm), "silence")
        end = t.end
        _assert(isinstance(end.get("finish_reason"), str) and end["finish_reason"]
                and end["finish_reason"] != "cancelled", end)
        u = end.get("usage") or {}
        _assert(isinstance(u.get("samples"), int) and u["samples"] * 2 == n,
                f"usage.samples {u.get('samples')} for {n} bytes: {end}")
        _assert(u.get("sample_rate") == rate, end)
        _assert(abs(u.get("audio_seconds", -1) - u["samples"] / rate) < 1e-3, end)
        _assert(isinstance(u.get("real_time_factor"), (int, float))
                and u["real_time_factor"] > 0, end)
        await c.stop()
    await wait_phase(s, "IDLE")
    # The same audio as the HTTP route's for the same text (after the
    # session: while it is open, its worker takes no other request).
    r = s.post("/v1/audio/speech", json={"model": SPEECH, "input": SPEECH_TEXT,
                                         "response_format": "pcm"})
    _assert(r.status_code == 200, r.text[:300])
    _assert(r.content == bytes(t.pcm),
            f"session audio ({n} bytes) differs from /v1/audio/speech "
            f"({len(r.content)} bytes)")


async def test_client_goes_away(s):
    for how in ("close", "abort", "abort while speaking"):
        await wait_phase(s, "IDLE")
        c = await Ws.connect(s, how)
        try:
            await c.start(LM, max_tokens=4096, temperature=0.5, seed=1)
            await wait_phase(s, "SESSION_ACTIVE")
            if how == "abort while speaking":
                await c.send({"type": "input.text", "text": TURN1})
                await c.expect_state("SPEAKING")
                await c.expect("output.text", TURN_S)
            if how == "close":
                await asyncio.wait_for(c.ws.close(), FRAME_S)
            else:
                c.ws.transport.abort()
        finally:
            await c.close()
        try:
            await wait_phase(s, "IDLE")
        except AssertionError as e:
            raise AssertionError(f"after the client's {how}: {e}") from None
    # The worker takes the next session at once, and its turn.
    async with session(s, "after") as c:
        await c.start(LM, **CHAT)
        t = await c.turn(TURN1)
        _assert(t.text, t.end)
        await c.stop()
    await wait_phase(s, "IDLE")


async def test_worker_lost(s):
    await wait_phase(s, "IDLE")
    async with session(s, "lost") as c:
        started, _ = await c.start(LM, **CHAT)
        pid = wait_for(lambda: worker_pid(s.proc.pid, started["worker"]), 10,
                       f"the process of {started['worker']}")
        os.kill(pid, signal.SIGKILL)
        await c.expect_end("worker_lost", deadline_s=20)
    # The supervisor starts the worker again; a new session runs on it.
    await wait_phase(s, "IDLE", deadline_s=90)
    async with session(s, "after the restart") as c:
        await c.start(LM, **CHAT)
        t = await c.turn(TURN1)
        _assert(t.text, t.end)
        await c.stop()
    await wait_phase(s, "IDLE")


# -------------------------------------------------------------------- main

def write_config(root, name, pause_ms, idle_ms):
    path = os.path.join(root, name)
    with open(path, "w") as f:
        f.write(f"sessions:\n  pause_timeout_ms: {pause_ms}\n  idle_timeout_ms: {idle_ms}\n")
    return path


async def stop_with_open_session(s):
    """SIGTERM with a session open: the client hears session.end
    server_stopping, and the server exits 0 at once (the session does not
    hold the drain for shutdown.drain_timeout_ms). Returns the exit code."""
    c = await Ws.connect(s, "at stop")
    await c.start(LM, **CHAT)
    t0 = time.monotonic()
    stopping = asyncio.get_running_loop().run_in_executor(None, s.stop)
    await c.expect("session.end", 10, reason="server_stopping")
    rc = await asyncio.wait_for(stopping, 35)
    took = time.monotonic() - t0
    _assert(took < 5, f"the server took {took:.1f} s to stop with a session open")
    return rc


def run_server(binary, root, log_name, args_extra, cases, stop_with_session=False):
    """Starts a server with one worker, runs `cases` on it, stops it (with a
    session open when `stop_with_session`)."""
    results = []
    s = Server(binary, root, 1, log_name, args_extra=args_extra)
    try:
        s.wait_healthy()
        s.wait_ready()
        for name, fn in cases:
            ok = run_case(f"{log_name}: {name}", sync(fn), s)
            if not ok:
                print(s.tail(), flush=True)
            results.append(ok)
    except Exception:  # noqa: BLE001
        print(f"FAIL start-up ({log_name})\n{traceback.format_exc()}\n{s.tail()}", flush=True)
        results.append(False)
    if stop_with_session:
        out = {}

        async def case(srv):
            out["rc"] = await stop_with_open_session(srv)
        results.append(run_case(f"{log_name}: stop with a session open", sync(case), s))
        rc = out.get("rc")
        if rc is None and s.proc.poll() is None:
            rc = s.stop()
        elif rc is None:
            rc = s.proc.returncode
    else:
        rc = s.stop()
    results.append(run_case(f"{log_name}: exit 0",
                            lambda: _assert(rc == 0, f"rc={rc}\n{s.tail()}")))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="infergrid-sessions-") as root:
        # Timeouts far beyond any case, so that no default cuts one short.
        long_cfg = write_config(root, "long.yaml", 120000, 120000)
        short_cfg = write_config(root, "short.yaml", PAUSE_TIMEOUT_MS, IDLE_TIMEOUT_MS)
        # 1. Workers as actors in the server's process.
        results += run_server(args.binary, root, "in-process.log",
                              ["--in-process", "--config", long_cfg],
                              [("turn chat", test_turn_chat),
                               ("determinism and state between turns", test_determinism),
                               ("pause and resume", test_pause_resume),
                               ("reservation and FIFO", test_reservation_fifo),
                               ("barge-in", test_barge_in),
                               ("bad input", test_bad_input),
                               ("speech session", test_speech),
                               ("client goes away", test_client_goes_away)])
        # 2. Short pause and idle timeouts.
        results += run_server(args.binary, root, "timeouts.log",
                              ["--in-process", "--config", short_cfg],
                              [("pause timeout", test_pause_timeout),
                               ("idle timeout", test_idle_timeout)])
        # 3. A worker process (serve's default).
        results += run_server(args.binary, root, "worker-process.log",
                              ["--config", long_cfg],
                              [("turn chat", test_turn_chat),
                               ("determinism and state between turns", test_determinism),
                               ("reservation and FIFO", test_reservation_fifo),
                               ("speech session", test_speech),
                               ("client goes away", test_client_goes_away),
                               ("worker lost", test_worker_lost)],
                              stop_with_session=True)
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
