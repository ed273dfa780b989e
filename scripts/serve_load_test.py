#!/usr/bin/env python3
"""Bounded load test (and throughput measurement) of `subbit serve` on loopback.

Starts the server on a free 127.0.0.1 port, runs --clients threads that each send --requests
streamed completions (every --disconnect-every'th request of a client hangs up after its first
event), checks that every response that should succeed is well-formed (status 200, valid JSON
events, a last chunk with finish_reason and usage, then [DONE]), samples the server's RSS, stops
the server with SIGTERM and prints a summary. Exit status 1 on any failed request, a server
that did not stop cleanly, or RSS that grew by more than --max-rss-growth-mib after warm-up.

  scripts/serve_load_test.py --cli build/subbit --model models/sb-8m --clients 16 --requests 8 --parallel 4
  # throughput, 1 vs 4 streams:
  scripts/serve_load_test.py --cli build/subbit --model M --clients 1 --requests 4 --parallel 1 \\
      --max-tokens 128 --disconnect-every 0
"""
import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


PROMPTS = ["The history of the United States", "Once upon a time", "In 1905, the city council",
           "The river flows through", "Scientists have discovered", "The old man said"]


def one_request(port, prompt, max_tokens, disconnect, timeout):
    """Returns (ok, completion_tokens, error message)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "stream": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return False, 0, f"status {r.status}: {r.read()[:200]!r}"
        last, done = None, False
        for raw in r:
            line = raw.decode()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):].strip()
            if payload == "[DONE]":
                done = True
                break
            event = json.loads(payload)
            if "choices" not in event:
                return False, 0, f"event without choices: {payload[:200]}"
            last = event
            if disconnect:
                c.sock.shutdown(socket.SHUT_RDWR)
                return True, 0, ""
        if not done or last is None:
            return False, 0, "stream ended without [DONE]"
        if last["choices"][0]["finish_reason"] not in ("stop", "length") or "usage" not in last:
            return False, 0, f"bad last chunk: {last}"
        return True, last["usage"]["completion_tokens"], ""
    except (OSError, ValueError, http.client.HTTPException) as e:
        return False, 0, f"{type(e).__name__}: {e}"
    finally:
        c.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--parallel", type=int, default=4, help="server slots")
    parser.add_argument("--queue", type=int, default=64, help="server queue (must hold the clients)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--disconnect-every", type=int, default=4,
                        help="every n-th request of a client hangs up after its first event; 0: never")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    parser.add_argument("--max-rss-growth-mib", type=float, default=64)
    args = parser.parse_args()

    port = free_port()
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([args.cli, "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
                               "--parallel", str(args.parallel), "--queue", str(args.queue), "--ctx",
                               str(args.ctx), "-t", str(args.threads)], stdout=log, stderr=log)
    deadline = time.time() + 120
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            log.seek(0)
            print("server did not start:", log.read().decode(errors="replace"))
            return 1
        time.sleep(0.1)

    rss_start = rss_mib(server.pid)
    # Warm-up: one request so that lazily touched weights are resident before measuring growth.
    one_request(port, PROMPTS[0], args.max_tokens, False, args.timeout)
    rss_warm = rss_mib(server.pid)
    rss_peak = [rss_warm]
    stop_sampling = threading.Event()

    def sample_rss():
        while not stop_sampling.wait(0.2):
            rss_peak[0] = max(rss_peak[0], rss_mib(server.pid))

    results = []
    lock = threading.Lock()

    def client(k):
        for i in range(args.requests):
            disconnect = args.disconnect_every > 0 and (k + i) % args.disconnect_every == args.disconnect_every - 1
            ok, tokens, error = one_request(port, PROMPTS[(k + i) % len(PROMPTS)], args.max_tokens, disconnect,
                                            args.timeout)
            with lock:
                results.append((ok, tokens, error, disconnect))

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    start = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start
    stop_sampling.set()
    sampler.join()
    rss_end = rss_mib(server.pid)
    # A client that hung up early frees its slot when the server next writes to it (its next
    # token), so the last one may still be busy for a step when the clients are done: poll.
    for _ in range(50):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health")
        health_after = json.loads(c.getresponse().read())
        if health_after["slots_busy"] == 0 and health_after["queued"] == 0:
            break
        time.sleep(0.1)
    server.send_signal(signal.SIGTERM)
    try:
        exit_code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = None

    failures = [r for r in results if not r[0]]
    completed = [r for r in results if r[0] and not r[3]]
    tokens = sum(r[1] for r in completed)
    print(f"requests: {len(results)} ({len(completed)} complete, {sum(r[3] for r in results)} disconnected early), "
          f"failed: {len(failures)}")
    for f in failures[:10]:
        print("  failure:", f[2])
    print(f"generated tokens: {tokens} in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s over "
          f"{args.clients} client(s), {args.parallel} slot(s)")
    print(f"server RSS MiB: start {rss_start:.1f}, after warm-up {rss_warm:.1f}, peak {rss_peak[0]:.1f}, "
          f"end {rss_end:.1f}")
    print(f"health after the run: {health_after}; server exit status on SIGTERM: {exit_code}")
    bad = bool(failures) or exit_code != 0 or rss_end - rss_warm > args.max_rss_growth_mib
    bad = bad or health_after["slots_busy"] != 0 or health_after["queued"] != 0
    print("FAILED" if bad else "OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
