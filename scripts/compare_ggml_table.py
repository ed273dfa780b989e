#!/usr/bin/env python3
"""Tables for scripts/compare_ggml.sh: reads OUT/ggml_tT_rR.txt (test-backend-ops perf output) and
OUT/subbit_tT_rR.json (subbit_bench, medians) for every round R and prints, per thread count T,
microseconds per product (median over the rounds) and the issue-17 ratios (speed-up = peer time /
our time, > 1 means subbit is faster: the median of the rounds' ratios, with their range when
there are several rounds)."""
import json
import pathlib
import re
import statistics
import sys

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


def shapes(times):
    """(rows, k) of every shape subbit_bench measured, in the order it ran them (its kShapes)."""
    found = []
    for name in times:
        m = re.match(r"gem[mv]/(\d+)x(\d+)/", name)
        if m and (int(m[1]), int(m[2])) not in found:
            found.append((int(m[1]), int(m[2])))
    return found


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cell(us):
    return "-" if us is None else f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def ratio(pairs):
    """Median (and range) of peer / mine over the rounds' (peer, mine) pairs."""
    r = sorted(p / m for p, m in pairs if p is not None and m is not None)
    if not r:
        return "-"
    text = f"{statistics.median(r):.2f}x"
    return text + (f" ({r[0]:.2f}-{r[-1]:.2f})" if len(r) > 1 else "")


OURS = {
    "bf16": "dense_bf16",
    "lb0.1": r"littlebit_bpw0\.10_r\d+",
    "lb0.55": r"littlebit_bpw0\.55_r\d+",
    "lb1.0": r"littlebit_bpw1\.00_r\d+",
    "sk0.5": r"sketch_bpw0\.50",
}
# (column, ggml type, our kernel)
RATIOS = [("bf16 vs ggml bf16", "bf16", "bf16"), ("LB 0.1 vs tq2_0", "tq2_0", "lb0.1"),
          ("LB 0.55 vs tq2_0", "tq2_0", "lb0.55"), ("LB 1.0 vs tq2_0", "tq2_0", "lb1.0"),
          ("sketch 0.5 vs ggml bf16", "bf16", "sk0.5")]


def main(out):
    out = pathlib.Path(out)
    for threads in (1, 2):
        rounds = sorted(out.glob(f"ggml_t{threads}_r*.txt"))
        g = [read_ggml(p) for p in rounds]
        s = [read_subbit(out / p.name.replace("ggml_", "subbit_").replace(".txt", ".json"))
             for p in rounds]
        plural = "s" if threads > 1 else ""
        of_rounds = f", median of {len(rounds)} rounds" if len(rounds) > 1 else ""
        print(f"\n### {threads} thread{plural}: microseconds per product{of_rounds}\n")
        head = ["shape (out x in)", "n"] + [f"ggml {t}" for t in GGML_TYPES] + [
            "subbit bf16", "LittleBit 0.1", "LittleBit 0.55", "LittleBit 1.0",
            "sketch 0.5"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        ratios = []
        for rows, k in shapes(s[0]):
            for n in (1, 8, 512):
                peer = [{t: gr.get((t, rows, n, k)) for t in GGML_TYPES} for gr in g]
                mine = [{key: ours(sr, rows, k, n, what) for key, what in OURS.items()} for sr in s]
                if all(v is None for r in mine for v in r.values()) and \
                        all(v is None for r in peer for v in r.values()):
                    continue
                print(f"| {rows}x{k} | {n} | " +
                      " | ".join(cell(median([r[t] for r in peer])) for t in GGML_TYPES) + " | " +
                      " | ".join(cell(median([r[key] for r in mine])) for key in OURS) + " |")
                ratios.append((rows, k, n, [
                    ratio([(p[t], m[key]) for p, m in zip(peer, mine)]) for _, t, key in RATIOS]))
        print(f"\n### {threads} thread{plural}: speed-up over the ggml type named{of_rounds} "
              "(targets: bf16 >= 1, LittleBit 0.1 >= 10x tq2_0, 0.55 >= 2x, 1.0 >= 1.5x, sketch 0.5 >= 1x bf16)\n")
        head = ["shape", "n"] + [c for c, _, _ in RATIOS]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for rows, k, n, r in ratios:
            print(f"| {rows}x{k} | {n} | " + " | ".join(r) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
