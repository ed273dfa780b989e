#!/usr/bin/env python3
"""Tables for scripts/compare_ggml.sh: reads OUT/ggml_tN.txt (test-backend-ops perf output) and
OUT/subbit_tN.json (subbit_bench, medians) and prints, per thread count, microseconds per product
and the issue-17 ratios (speed-up = peer time / our time; > 1 means subbit is faster)."""
import json
import pathlib
import re
import sys

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (28672, 8192)]
GGML_TYPES = ["bf16", "f16", "q4_0", "tq2_0", "q1_0"]
GGML_LINE = re.compile(r"MUL_MAT\(type_a=(\w+),type_b=f32,m=(\d+),n=(\d+),k=(\d+),.*?([\d.]+) us/run")


def read_ggml(path):
    times = {}
    for line in path.read_text().splitlines():
        m = GGML_LINE.search(line)
        if m:
            t, rows, n, k, us = m.groups()
            times[(t, int(rows), int(n), int(k))] = float(us)
    return times


def read_subbit(path):
    times = {}
    for b in json.loads(path.read_text())["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"].removesuffix("/real_time")
        scale = {"us": 1.0, "ms": 1e3, "ns": 1e-3}[b["time_unit"]]
        times[name] = b["real_time"] * scale
    return times


def ours(times, rows, k, n, what):
    prefix = f"gemv/{rows}x{k}/" if n == 1 else f"gemm/{rows}x{k}/n{n}/"
    for name, us in times.items():
        if name.startswith(prefix) and re.fullmatch(what, name[len(prefix):]):
            return us
    return None


def cell(us):
    return "-" if us is None else f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def ratio(peer, mine):
    return "-" if peer is None or mine is None else f"{peer / mine:.2f}x"


def main(out):
    out = pathlib.Path(out)
    for threads in (1, 2):
        g = read_ggml(out / f"ggml_t{threads}.txt")
        s = read_subbit(out / f"subbit_t{threads}.json")
        print(f"\n### {threads} thread{'s' if threads > 1 else ''}: microseconds per product\n")
        head = ["shape (out x in)", "n"] + [f"ggml {t}" for t in GGML_TYPES] + [
            "subbit bf16", "LittleBit 0.1", "LittleBit 0.55", "LittleBit 1.0",
            "sketch 0.5"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        ratios = []
        for rows, k in SHAPES:
            for n in (1, 8, 512):
                peer = {t: g.get((t, rows, n, k)) for t in GGML_TYPES}
                mine = {
                    "bf16": ours(s, rows, k, n, "dense_bf16"),
                    "lb0.1": ours(s, rows, k, n, r"littlebit_bpw0\.10_r\d+"),
                    "lb0.55": ours(s, rows, k, n, r"littlebit_bpw0\.55_r\d+"),
                    "lb1.0": ours(s, rows, k, n, r"littlebit_bpw1\.00_r\d+"),
                    "sk0.5": ours(s, rows, k, n, r"sketch_bpw0\.50"),
                }
                if all(v is None for v in mine.values()) and all(v is None for v in peer.values()):
                    continue
                print(f"| {rows}x{k} | {n} | " + " | ".join(cell(peer[t]) for t in GGML_TYPES) + " | " +
                      " | ".join(cell(v) for v in mine.values()) + " |")
                ratios.append((rows, k, n, [
                    ratio(peer["bf16"], mine["bf16"]),
                    ratio(peer["tq2_0"], mine["lb0.1"]), ratio(peer["tq2_0"], mine["lb0.55"]),
                    ratio(peer["tq2_0"], mine["lb1.0"]), ratio(peer["bf16"], mine["sk0.5"])]))
        print(f"\n### {threads} thread{'s' if threads > 1 else ''}: speed-up over the ggml type named "
              "(targets: bf16 >= 1, LittleBit 0.1 >= 10x tq2_0, 0.55 >= 2x, 1.0 >= 1.5x, sketch 0.5 >= 1x bf16)\n")
        head = ["shape", "n", "bf16 vs ggml bf16", "LB 0.1 vs tq2_0",
                "LB 0.55 vs tq2_0", "LB 1.0 vs tq2_0", "sketch 0.5 vs ggml bf16"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for rows, k, n, r in ratios:
            print(f"| {rows}x{k} | {n} | " + " | ".join(r) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
