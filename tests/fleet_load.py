#!/usr/bin/env python3
"""The fleet test's clients (tests/e2e-fleet.sh runs it; standard library only).

Sends generation and embedding requests through the HAProxy front to three replicas (machines),
checks every answer against a reference daemon byte for byte, and drives the faults: SIGKILL of
one machine and `systemctl stop` of another's daemon, each under bounded load. Prints `ok`/`FAIL`
lines and the figures, writes the figures as JSON, and exits non-zero on any failure.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

GENERATIONS = 60
EMBEDDINGS = 30


def requests():
    """(path, body) of every distinct request: short generations and single-text embeddings."""
    gens = [("/v1/completions", {"model": "SmolLM2-135M-Instruct", "prompt": f"Fleet fact {i}:", "max_tokens": 8})
            for i in range(GENERATIONS)]
    embeds = [("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": f"fleet sentence number {j}"})
              for j in range(EMBEDDINGS)]
    return gens + embeds


class Answer:
    """One answer: HTTP status, the headers we look at, and its payload (text or vector)."""

    def __init__(self, status, headers, body, started, ended):
        self.status = status
        self.replica = headers.get("x-steadytext-replica", "")
        self.cache = headers.get("x-steadytext-cache", "")
        self.engine = headers.get("x-steadytext-engine", "")
        self.started, self.ended = started, ended
        self.payload = None
        self.body = body[:300]
        if status == 200:
            doc = json.loads(body)
            self.payload = doc["choices"][0]["text"] if "choices" in doc else doc["data"][0]["embedding"]


def post(host, port, key, path, body, timeout=120):
    """POST one request on its own connection; a connection error is status 0."""
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("POST", path, json.dumps(body),
                     {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read().decode()
        headers = {k.lower(): v for k, v in r.getheaders()}
        conn.close()
        return Answer(r.status, headers, data, started, time.monotonic())
    except OSError as e:
        return Answer(0, {}, str(e), started, time.monotonic())


class Checks:
    """ok/FAIL lines and their count."""

    def __init__(self):
        self.failed = 0

    def check(self, what, good, detail=""):
        print(f"{'ok  ' if good else 'FAIL'} {what}{'' if good or not detail else ': ' + detail}", flush=True)
        self.failed += 0 if good else 1


class Load:
    """`clients` threads sending the known requests in turn through the front, and `fresh`
    threads sending new generations (never cached: they run while the fault strikes), until
    stopped."""

    def __init__(self, front, key, reqs, clients, fresh=0, tag=""):
        self.front, self.key, self.reqs, self.tag = front, key, reqs, tag
        self.results = []  # (request index, Answer)
        self.fresh = []  # ((path, body), Answer)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.repeat, args=(c, clients)) for c in range(clients)]
        self.threads += [threading.Thread(target=self.new, args=(c,)) for c in range(fresh)]

    def repeat(self, c, clients):
        i = c
        while not self.stop.is_set():
            n = i % len(self.reqs)
            a = post(*self.front, self.key, *self.reqs[n])
            with self.lock:
                self.results.append((n, a))
            i += clients

    def new(self, c):
        k = 0
        while not self.stop.is_set():
            req = ("/v1/completions",
                   {"model": "SmolLM2-135M-Instruct", "prompt": f"Fleet {self.tag} {c}-{k}:", "max_tokens": 24})
            a = post(*self.front, self.key, *req)
            with self.lock:
                self.fresh.append((req, a))
            k += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for t in self.threads:
            t.join()

    def check(self, reference, ref, key, at):
        """(requests, failed, wrong, fresh generations running at `at`): every answer against the
        reference (the fresh ones asked of the reference daemon `ref` now)."""
        answers = [(a, reference[i].payload) for i, a in self.results]
        answers += [(a, post(ref[0], int(ref[1]), key, *req).payload) for req, a in self.fresh]
        failed = sum(a.status != 200 for a, _ in answers)
        wrong = sum(a.status == 200 and a.payload != expected for a, expected in answers)
        running = sum(a.started < at < a.ended for _, a in self.fresh)
        return len(answers), failed, wrong, running


def https_ready(addr, ca, name):
    """Whether a replica's /health/ready answers 200 over HTTPS (certificate checked for `name`)."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(f"GET /health/ready HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--front", required=True, help="HAProxy's HOST:PORT")
    p.add_argument("--reference", required=True, help="HOST:PORT of a daemon outside the fleet")
    p.add_argument("--key", required=True)
    p.add_argument("--machine", action="append", required=True,
                   help="NAME=INIT_PID=ADDR for each replica (NAME as in HAProxy's server lines)")
    p.add_argument("--ca", required=True)
    p.add_argument("--tls-name", required=True)
    p.add_argument("--figures", required=True)
    args = p.parse_args()
    front = tuple(args.front.rsplit(":", 1))
    front = (front[0], int(front[1]))
    ref = args.reference.rsplit(":", 1)
    machines = {}
    for m in args.machine:
        name, pid, addr = m.split("=")
        machines[name] = {"pid": int(pid), "addr": addr}
    reqs = requests()
    checks = Checks()
    figures = {"requests": len(reqs)}

    # The reference: every answer from a daemon outside the fleet (same engine fingerprint).
    reference = [post(ref[0], int(ref[1]), args.key, *r) for r in reqs]
    checks.check("the reference daemon answers every request", all(a.status == 200 for a in reference),
                 next((a.body for a in reference if a.status != 200), ""))
    engine = reference[0].engine

    # Three passes, three clients at a time.
    home = {}
    figures["passes"] = []
    for n in range(3):
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda r: post(*front, args.key, *r), reqs))
        failed = sum(a.status != 200 for a in answers)
        wrong = sum(a.status == 200 and a.payload != reference[i].payload for i, a in enumerate(answers))
        engines = {a.engine for a in answers if a.status == 200}
        if n == 0:
            home = {i: a.replica for i, a in enumerate(answers)}
        same = sum(a.replica == home[i] for i, a in enumerate(answers))
        hits_home = sum(a.replica == home[i] and a.cache == "hit" for i, a in enumerate(answers))
        seconds = max(a.ended for a in answers) - min(a.started for a in answers)
        figures["passes"].append({"failed": failed, "wrong": wrong, "cache_hits": sum(a.cache == "hit" for a in answers),
                                  "hits_on_the_same_replica": hits_home, "same_replica": same,
                                  "seconds": round(seconds, 2)})
        print(f"pass {n + 1}: {len(reqs)} requests in {seconds:.1f} s, {failed} failed, {wrong} wrong, "
              f"{figures['passes'][-1]['cache_hits']} cache hits ({hits_home} on the pass-1 replica)", flush=True)
        checks.check(f"pass {n + 1}: every answer is the reference's bytes, on the reference's engine",
                     failed == 0 and wrong == 0 and engines == {engine}, f"{failed} failed, {wrong} wrong, {engines}")
        if n > 0:
            checks.check(f"pass {n + 1}: almost every repeat is a cache hit on its pass-1 replica (>= 95%)",
                         hits_home >= 0.95 * len(reqs), f"{hits_home} of {len(reqs)}")
    per_replica = {r: sum(1 for h in home.values() if h == r) for r in machines}
    figures["keys_per_replica"] = per_replica
    checks.check("the keys spread over all three replicas", all(per_replica.values()), str(per_replica))

    # kill -9 of one machine (its init: the whole container dies) under load from two clients.
    victim = max(per_replica, key=per_replica.get)
    with Load(front, args.key, reqs, 2, fresh=2, tag="kill") as load:
        time.sleep(1.5)
        kill_sent = time.monotonic()
        os.kill(machines[victim]["pid"], 9)
        # Dead once its init is gone (the kernel kills the rest of the machine first).
        while os.path.exists(f"/proc/{machines[victim]['pid']}") and time.monotonic() - kill_sent < 10:
            time.sleep(0.005)
        killed_at = time.monotonic()
        time.sleep(6)
    after = [(i, a) for i, a in load.results if a.started >= killed_at]
    around = [(i, a) for i, a in load.results if a.ended >= killed_at]
    total, failed, wrong, running = load.check(reference, ref, args.key, kill_sent)
    moved_keys = [a for i, a in after if home[i] == victim]
    stayed = [a.replica == home[i] for i, a in after if home[i] != victim]
    first_moved = min((a.ended for a in moved_keys if a.status == 200), default=None)
    figures["kill"] = {"replica": victim, "requests": total, "fresh_generations_running_at_the_kill": running,
                       "failed": failed, "wrong": wrong,
                       "machine_dead_after_s": round(killed_at - kill_sent, 3),
                       "after_kill": len(after), "moved": len(moved_keys), "others_kept": sum(stayed),
                       "others": len(stayed),
                       "first_moved_answer_after_s": round(first_moved - killed_at, 3) if first_moved else None,
                       "slowest_answer_around_kill_s": round(max(a.ended - a.started for _, a in around), 3)}
    print(f"kill -9 {victim}: {json.dumps(figures['kill'])}", flush=True)
    checks.check(f"kill -9 of {victim} under load: 0 failed, 0 wrong answers ({total} requests)",
                 failed == 0 and wrong == 0,
                 f"{failed} failed, {wrong} wrong")
    served_by = {r: sum(a.replica == r for a in moved_keys) for r in {a.replica for a in moved_keys}}
    checks.check(f"its keys moved to the others ({len(moved_keys)} requests)",
                 moved_keys and all(a.replica not in ("", victim) for a in moved_keys), str(served_by))
    checks.check("the other replicas' keys did not move", stayed and all(stayed), f"{sum(stayed)} of {len(stayed)}")

    # systemctl stop of another machine's daemon under load: it drains, writes its snapshot, and
    # the next connection to its sockets starts it again (socket activation), warm.
    target = max((r for r in machines if r != victim), key=lambda r: per_replica[r])
    pid = machines[target]["pid"]
    with Load(front, args.key, reqs, 2, fresh=2, tag="stop") as load:
        time.sleep(1.5)
        stop_at = time.monotonic()
        stop = subprocess.run(["nsenter", "-t", str(pid), "-a", "systemctl", "stop", "steadytext.service"],
                              capture_output=True, text=True, timeout=120)
        stopped_s = time.monotonic() - stop_at
        while not https_ready(machines[target]["addr"], args.ca, args.tls_name):
            if time.monotonic() - stop_at > 90:
                break
            time.sleep(0.1)
        back_s = time.monotonic() - stop_at
        time.sleep(3)
    total, failed, wrong, running = load.check(reference, ref, args.key, stop_at)
    checks.check(f"systemctl stop of {target}'s daemon returned 0", stop.returncode == 0, stop.stderr)
    errors = [a.body for _, a in load.results + load.fresh if a.status != 200][:3]
    checks.check(f"systemctl stop under load: 0 failed, 0 wrong answers ({total} requests)",
                 failed == 0 and wrong == 0, f"{failed} failed, {wrong} wrong: {errors}")
    checks.check(f"{target} came back (socket activation) within 90 s", back_s < 90, f"{back_s:.1f} s")
    # Warm: its own keys, through the front, are answered by it from the snapshot it wrote at stop.
    own = [i for i, h in home.items() if h == target]
    warm = [post(*front, args.key, *reqs[i]) for i in own]
    warm_hits = sum(a.replica == target and a.cache == "hit" for a in warm)
    checks.check(f"after the restart its keys are cache hits on it again ({warm_hits} of {len(own)})",
                 warm_hits == len(own) and all(a.payload == reference[i].payload for i, a in zip(own, warm)))
    active = subprocess.run(["nsenter", "-t", str(pid), "-a", "systemctl", "is-active", "steadytext.service"],
                            capture_output=True, text=True).stdout.strip()
    checks.check(f"steadytext.service on {target} is active again", active == "active", active)
    figures["stop"] = {"replica": target, "requests": total, "fresh_generations_running_at_the_stop": running,
                       "failed": failed, "wrong": wrong,
                       "systemctl_stop_s": round(stopped_s, 2), "ready_again_s": round(back_s, 2),
                       "warm_hits": warm_hits, "own_keys": len(own)}
    print(f"systemctl stop {target}: {json.dumps(figures['stop'])}", flush=True)

    with open(args.figures, "w") as f:
        json.dump(figures, f, indent=1)
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
