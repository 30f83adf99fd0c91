#!/usr/bin/env python3
"""Several processes share one job table (job_store on one SQLite file).

Fills a database with 20,000 jobs, then runs four claimer processes and a
rescuer (the control node's rescue_expired() + checkpoint loop) at once:
  a  claims and completes until nothing is left,
  b  the same, but stalls longer than its lease once (its completions after
     the stall must be refused: the fencing path),
  c  is SIGKILLed after ~1 s (its claimed jobs come back after the lease),
  d  exits on its own after 1,000 jobs holding a claimed batch.
Then checks, from the database (via `claimer --dump`) and the claimers'
logs, that every job succeeded exactly once, by the holder of its current
lease, that no two claims ever got the same (id, lease_seq), and that every
job's event log is the exact story of its claims.

Usage: test_multiprocess.py --claimer PATH [--jobs N] [--keep]
Prints "N passed, N failed"; exits 1 on any failure.
"""
import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LEASE_MS = 500
BATCH = 8
DELAY_US = 100
KILL_AFTER_S = 1.0


class Run:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}{': ' + detail if detail else ''}")


def read_log(path):
    """C/D lines of one claimer: claims [(id, seq)], dones [(id, seq, ok)]."""
    claims, dones = [], []
    if not os.path.exists(path):
        return claims, dones
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "C":
                claims.append((int(parts[1]), int(parts[2])))
            elif len(parts) == 4 and parts[0] == "D":
                dones.append((int(parts[1]), int(parts[2]), parts[3] == "ok"))
    return claims, dones


def summary(text, prefix):
    """The `key value` pairs after `prefix` on the line starting with it."""
    for line in text.splitlines():
        if line.startswith(prefix):
            words = line[len(prefix):].split()
            return dict(zip(words[0::2], words[1::2]))
    return {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--claimer", required=True)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    run = Run()
    tmp = tempfile.mkdtemp(prefix="infergrid-mp-")
    db = os.path.join(tmp, "jobs.db")
    procs = {}
    try:
        # -- fill -------------------------------------------------------------
        t = time.monotonic()
        fill = subprocess.run([args.claimer, "--fill", str(args.jobs), "--db", db],
                              capture_output=True, text=True, timeout=120)
        fill_s = time.monotonic() - t
        run.check("fill", fill.returncode == 0, fill.stderr.strip())
        if fill.returncode != 0:
            return finish(run)

        # -- run --------------------------------------------------------------
        def claimer(worker, *extra):
            log = os.path.join(tmp, worker + ".log")
            cmd = [args.claimer, "--run", "--db", db, "--worker", worker, "--log", log,
                   "--batch", str(BATCH), "--delay-us", str(DELAY_US),
                   "--lease-ms", str(LEASE_MS), *extra]
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)

        t = time.monotonic()
        procs["rescue"] = subprocess.Popen(
            [args.claimer, "--rescue", "--db", db, "--interval-ms", "200"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs["a"] = claimer("a")
        procs["b"] = claimer("b", "--stall-after", "1500", "--stall-ms", "1500")
        procs["c"] = claimer("c")
        procs["d"] = claimer("d", "--exit-after", "1000")
        time.sleep(KILL_AFTER_S)
        procs["c"].send_signal(signal.SIGKILL)
        out = {}
        for name, p in procs.items():
            try:
                stdout, stderr = p.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            out[name] = (p.returncode, stdout, stderr)
        run_s = time.monotonic() - t

        codes = {name: out[name][0] for name in out}
        run.check("exit codes (a, b, rescue 0; c SIGKILLed; d 3)",
                  codes == {"rescue": 0, "a": 0, "b": 0, "c": -signal.SIGKILL, "d": 3},
                  f"{codes}; stderr: "
                  + "; ".join(f"{n}: {out[n][2].strip()[-300:]}" for n in out if out[n][2]))
        stats = {w: summary(out[w][1], f"worker {w} ") for w in "ab"}
        rescue_stats = summary(out["rescue"][1], "rescue ")
        run.check("no storage errors, events match every commit",
                  all(s.get("errors") == "0" and s.get("event_mismatches") == "0"
                      for s in stats.values()) and rescue_stats.get("errors") == "0",
                  f"{stats} {rescue_stats}")

        # -- the database -----------------------------------------------------
        dump = subprocess.run([args.claimer, "--dump", "--db", db], capture_output=True,
                              text=True, timeout=120)
        rows = {}
        for line in dump.stdout.splitlines():
            i, state, seq, attempts, worker, by, events_ok = line.split()
            rows[int(i)] = dict(state=state, seq=int(seq), attempts=int(attempts),
                                worker=worker, by=by, events_ok=events_ok == "1")
        run.check(f"dump lists all {args.jobs} jobs once",
                  dump.returncode == 0 and len(rows) == args.jobs
                  and len(dump.stdout.splitlines()) == args.jobs
                  and set(rows) == set(range(1, args.jobs + 1)),
                  f"rc {dump.returncode}, {len(rows)} rows {dump.stderr.strip()[-200:]}")
        states = collections.Counter(r["state"] for r in rows.values())
        run.check("every job succeeded; none queued or running",
                  states == {"succeeded": args.jobs}, str(dict(states)))
        bad_events = [i for i, r in rows.items() if not r["events_ok"]]
        run.check("every event log is queued, running, (queued, running)*, succeeded",
                  not bad_events, f"{len(bad_events)} jobs, e.g. {bad_events[:5]}")
        run.check("lease_seq == attempts on every job",
                  all(r["seq"] == r["attempts"] for r in rows.values()))
        run.check("the output was written by the job's last worker",
                  all(r["by"] == r["worker"] for r in rows.values()))

        # -- the logs ---------------------------------------------------------
        logs = {w: read_log(os.path.join(tmp, w + ".log")) for w in "abcd"}
        all_claims = [(i, s, w) for w in logs for (i, s) in logs[w][0]]
        tokens = collections.Counter((i, s) for i, s, _ in all_claims)
        dup = [k for k, n in tokens.items() if n > 1]
        run.check("no two claims got the same (id, lease_seq)", not dup, str(dup[:5]))
        run.check("every claimed lease_seq is at most the final one",
                  all(s <= rows[i]["seq"] for i, s, _ in all_claims if i in rows))
        oks = collections.defaultdict(list)
        lost = []
        for w in logs:
            for i, s, ok in logs[w][1]:
                (oks[i].append((w, s)) if ok else lost.append((w, i, s)))
        twice = {i: v for i, v in oks.items() if len(v) > 1}
        run.check("no job completed twice", not twice, str(list(twice.items())[:5]))
        wrong = [(i, v) for i, v in oks.items() if i in rows and
                 (v[0][1] != rows[i]["seq"] or v[0][0] != rows[i]["worker"])]
        run.check("each successful completion held the job's current lease",
                  not wrong, str(wrong[:5]))
        unlogged = [i for i in rows if i not in oks]
        c_claims = set(logs["c"][0])
        run.check("a success without a log line only by the killed claimer, in its "
                  "last batch",
                  len(unlogged) <= BATCH and all(rows[i]["worker"] == "c" and
                                                 (i, rows[i]["seq"]) in c_claims
                                                 for i in unlogged),
                  f"{len(unlogged)} jobs, e.g. {unlogged[:5]}")
        stale = [(w, i, s) for w, i, s in lost if s >= rows[i]["seq"]]
        run.check("refused completions were stale (a newer claim exists)",
                  not stale, str(stale[:5]))
        b_lost = [x for x in lost if x[0] == "b"]
        run.check("the stalled claimer's completions after its lease were refused",
                  len(b_lost) >= 1, f"{len(lost)} refused in all")
        c_done = {i for i, _, _ in logs["c"][1]}
        c_inflight = [(i, s) for i, s in logs["c"][0] if i not in c_done]
        run.check("the killed claimer's unfinished jobs were claimed again",
                  all(rows[i]["seq"] > s or i in unlogged for i, s in c_inflight),
                  str(c_inflight[:8]))
        d_done = {i for i, _, _ in logs["d"][1]}
        d_held = [(i, s) for i, s in logs["d"][0] if i not in d_done]
        run.check("the exited claimer's batch was claimed again",
                  len(d_held) >= 1 and all(rows[i]["seq"] > s for i, s in d_held),
                  str(d_held))
        rescued = int(rescue_stats.get("rescued", "-1"))
        reclaimed = sum(1 for r in rows.values() if r["attempts"] > 1)
        c_rescued = [x for x in c_inflight if x[0] not in unlogged]
        run.check("rescues cover what the dead and stalled claimers held",
                  rescued >= len(d_held) + len(b_lost) + len(c_rescued),
                  f"rescued {rescued}; d {len(d_held)}, b {len(b_lost)}, "
                  f"c {len(c_rescued)}")

        if shutil.which("sqlite3"):
            q = subprocess.run(["sqlite3", "-readonly", db,
                                "pragma integrity_check; select queued from queue_stats;"
                                " select count(*) from job_events;"],
                               capture_output=True, text=True, timeout=60)
            lines = q.stdout.split()
            expected_events = sum(2 * r["attempts"] + 1 for r in rows.values())
            run.check("integrity_check ok, queue_stats 0, one event per change",
                      lines == ["ok", "0", str(expected_events)], q.stdout + q.stderr)

        completed = {w: len([1 for _, _, ok in logs[w][1] if ok]) for w in logs}
        print(f"figures: {args.jobs} jobs; fill {fill_s:.1f} s "
              f"({args.jobs / fill_s:.0f} enqueues/s); run {run_s:.1f} s "
              f"({args.jobs / run_s:.0f} jobs/s incl. ~1 s idle wait); "
              f"completed a/b/c/d {completed['a']}/{completed['b']}/"
              f"{completed['c']}/{completed['d']}; refused {len(lost)} "
              f"(b {len(b_lost)}); in flight at kill {len(c_inflight)}; "
              f"d held {len(d_held)}; rescued {rescued}; claimed again {reclaimed}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return finish(run)


def finish(run):
    print(f"{run.passed} passed, {run.failed} failed")
    return 0 if run.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
