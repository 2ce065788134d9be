#!/usr/bin/env python3
"""The prefix cache under a long multi-client run: CLIENTS clients hold 8-turn conversations
(histories past 2,000 tokens, each new conversation opened by a nonce, so nothing repeats)
against one steadytextd on the fused model for SECONDS, its prefix cache limited to BUDGET MiB
(small enough that evictions run all the time). Every 5 s it samples the daemon's RSS and the
cache's bytes from `status`; at the end it prints both (first minute, peak, last minute), the
requests served and the evictions, and exits non-zero when the cache ever held more than its
budget or a request failed.

    make bench-prefix-soak            (CLIENTS=8 SECONDS=600 BUDGET=128; not run by CI)
"""

import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the bench's daemon and client)

SAMPLE_SECS = 5


def client_loop(daemon, index, stop, counts, failures):
    """Conversations until `stop`: each turn resends the history with the model's answers."""
    client = compare.Client(daemon.socket_path, daemon.log.name)
    rng = random.Random(index)
    conversation = 0
    while not stop.is_set():
        conversation += 1
        system, users = compare.conversation(f"{index}-{conversation}-{rng.randrange(10 ** 9)}", "long turns")
        messages = [{"role": "system", "content": system}]
        for user in users:
            if stop.is_set():
                return
            messages.append({"role": "user", "content": user})
            try:
                result = client.call("generate", {"messages": messages, "max_new_tokens": compare.TURN_NEW})
            except SystemExit as e:  # Client.call exits on an error answer
                failures.append(str(e))
                return
            messages.append({"role": "assistant", "content": result["text"]})
            counts[index] += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="folder with steadytextd")
    ap.add_argument("--fused", required=True, help="the fused model folder")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--budget-mb", type=int, default=128)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    daemon = compare.Daemon(args.bin, f"generation_model = {json.dumps(args.fused)}\n"
                            f"[cache]\ngeneration_capacity = 0\nprefix_mb = {args.budget_mb}\n")
    daemon.connect()
    daemon.settle()
    budget = args.budget_mb * 1024 * 1024

    def prefix_status():
        for model in daemon.call("status", {}).get("models", []):
            if model.get("prefix_cache", {}).get("enabled"):
                return model["prefix_cache"]
        sys.exit("no generation model with its prefix cache on: status says " + json.dumps(daemon.call("status", {})))

    prefix_status()
    stop, counts, failures = threading.Event(), [0] * args.clients, []
    threads = [threading.Thread(target=client_loop, args=(daemon, i, stop, counts, failures), daemon=True)
               for i in range(args.clients)]
    start = time.time()
    for t in threads:
        t.start()
    samples = []
    while time.time() - start < args.seconds and not failures:
        time.sleep(SAMPLE_SECS)
        cache = prefix_status()
        samples.append({"t": round(time.time() - start), "rss_mb": compare.status_mb(daemon.proc.pid, "VmRSS"),
                        "prefix_bytes": cache["bytes"], "evictions": cache["evictions"],
                        "tokens_reused": cache["tokens_reused"], "requests": sum(counts)})
        print(f"  {samples[-1]['t']:4d} s: RSS {samples[-1]['rss_mb']:.0f} MB, prefix cache "
              f"{cache['bytes'] / 2 ** 20:.0f} / {args.budget_mb} MiB, {cache['evictions']} evictions, "
              f"{sum(counts)} requests", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    daemon.stop()
    first = [s["rss_mb"] for s in samples if s["t"] <= 60]
    last = [s["rss_mb"] for s in samples if s["t"] > samples[-1]["t"] - 60]
    summary = {"clients": args.clients, "seconds": args.seconds, "budget_mb": args.budget_mb,
               "requests": sum(counts), "failures": failures,
               "rss_mb_first_minute_max": max(first), "rss_mb_peak": max(s["rss_mb"] for s in samples),
               "rss_mb_last_minute_max": max(last),
               "prefix_bytes_peak": max(s["prefix_bytes"] for s in samples),
               "evictions": samples[-1]["evictions"], "tokens_reused": samples[-1]["tokens_reused"],
               "samples": samples}
    json.dump(summary, open(args.json, "w"), indent=1)
    print(f"\n{args.clients} clients, {args.seconds} s, prefix budget {args.budget_mb} MiB: {summary['requests']} "
          f"requests, {summary['evictions']} evictions, {summary['tokens_reused']} prompt tokens reused")
    print(f"prefix cache peak {summary['prefix_bytes_peak'] / 2 ** 20:.1f} MiB (budget {args.budget_mb}); RSS max "
          f"first minute {summary['rss_mb_first_minute_max']:.0f} MB, peak {summary['rss_mb_peak']:.0f} MB, "
          f"last minute {summary['rss_mb_last_minute_max']:.0f} MB\nJSON: {args.json}")
    if failures:
        sys.exit(f"requests failed: {failures[:3]}")
    if summary["prefix_bytes_peak"] > budget:
        sys.exit("the prefix cache held more than its budget")


if __name__ == "__main__":
    main()
