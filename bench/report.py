#!/usr/bin/env python3
"""Renders DIR/results.tsv (+ startup.txt, check.json, env.txt) from bench/run as Markdown,
with each target's ratio to direct and the issue-6 target checks. With several rounds, each figure
is the median over the rounds (peak RSS: the maximum; errors: the sum), and the qbgate-vs-nginx
checks use the median of the per-round ratios, which a burst of outside load moves least."""
import csv
import json
import math
import os
import re
import statistics
import sys

d = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(d, "results.tsv")), delimiter="\t"))
env = open(os.path.join(d, "env.txt")).read() if os.path.exists(os.path.join(d, "env.txt")) else ""
print("```\n" + env.strip() + "\n```\n")


def f(v, digits=0):
    try:
        x = float(v)
    except ValueError:
        return v
    if math.isnan(x):
        return "-"
    return f"{x:,.{digits}f}"


runs = {}
for r in rows:
    runs.setdefault((r["group"], r["target"]), []).append(r)


def median(values):
    nums = []
    for v in values:
        try:
            nums.append(float(v))
        except ValueError:
            pass
    nums = [x for x in nums if not math.isnan(x)]
    return statistics.median(nums) if nums else float("nan")


by = {}
for key, rs in runs.items():
    m = dict(rs[0])
    for field in ("rps", "p50_us", "p99_us", "mean_us", "cpu_us_per_req", "user_us_per_req",
                  "sys_us_per_req"):
        m[field] = str(median(r.get(field, "nan") for r in rs))
    m["rss_kb"] = str(max(int(r["rss_kb"]) for r in rs)) if rs[0]["rss_kb"] not in ("-",) else "-"
    m["errors"] = str(sum(int(r["errors"]) for r in rs))
    m["rounds"] = len(rs)
    by[key] = m
rows = [by[k] for k in runs]
ROUNDS = max((m["rounds"] for m in by.values()), default=1)
if ROUNDS > 1:
    print(f"Each figure: the median of {ROUNDS} rounds (peak RSS: the highest; errors: the sum).\n")


def paired(group, field, a="qbgate", b="nginx"):
    """Median over rounds of a's field / b's field, measured in the same round."""
    ra = {r.get("round", "1"): float(r[field]) for r in runs.get((group, a), [])}
    rb = {r.get("round", "1"): float(r[field]) for r in runs.get((group, b), [])}
    ratios = [ra[k] / rb[k] for k in ra if k in rb and rb[k]]
    return statistics.median(ratios) if ratios else float("nan")

titles = {
    "GET": "HTTP/1.1 `GET /chat/Dialog.json` (wrk, 1,000 keys x 5 users)",
    "PUT": "HTTP/1.1 `PUT /chat/Dialog/<id>.json` `{\"name\":\"x\"}` (wrk, 1,000 keys x 5 users)",
    "H2": "cleartext HTTP/2 inbound `GET /chat/Dialog.json` (h2load, one key; HTTP/1.1 upstream)",
}
for group in ("GET", "PUT", "H2"):
    g = [r for r in rows if r["group"] == group]
    if not g:
        continue
    direct = by.get((group, "direct"))
    print(f"### {titles[group]}\n")
    if group == "H2":
        print("| target | req/s | ratio to qbgate | mean latency us | CPU us/req | peak RSS MiB | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = by.get(("H2", "qbgate"))
        for r in g:
            ratio = float(r["rps"]) / float(base["rps"]) if base else float("nan")
            rss = f(int(r["rss_kb"]) / 1024, 1) if r["rss_kb"] not in ("-", "0") else "-"
            print(f"| {r['target']} | {f(r['rps'])} | {ratio:.2f} | {f(r['mean_us'])} | "
                  f"{f(r['cpu_us_per_req'], 1)} | {rss} | {r['errors']} |")
    else:
        print("| target | req/s | ratio to direct | p50 us | p99 us | CPU us/req | user / kernel us | peak RSS MiB | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in g:
            ratio = float(r["rps"]) / float(direct["rps"]) if direct else float("nan")
            rss = f(int(r["rss_kb"]) / 1024, 1) if r["rss_kb"] not in ("-", "0") else "-"
            split = f"{f(r['user_us_per_req'], 1)} / {f(r['sys_us_per_req'], 1)}"
            if split == "- / -":
                split = "-"
            print(f"| {r['target']} | {f(r['rps'])} | {ratio:.2f} | {f(r['p50_us'])} | "
                  f"{f(r['p99_us'])} | {f(r['cpu_us_per_req'], 1)} | {split} | {rss} | {r['errors']} |")
    print()

def startup_figures(suffix):
    """(text, startup median, reload median, (check mean, stddev)) of one policy form."""
    path = os.path.join(d, f"startup{suffix}.txt")
    text = open(path).read() if os.path.exists(path) else ""
    up = re.search(r"startup_ms_median=([\d.]+)", text)
    re_ = re.search(r"reload_ms_median=([\d.]+)", text)
    check = None
    if os.path.exists(os.path.join(d, f"check{suffix}.json")):
        c = json.load(open(os.path.join(d, f"check{suffix}.json")))["results"][0]
        check = (c["mean"] * 1000, c["stddev"] * 1000)
    return text, up and float(up.group(1)), re_ and float(re_.group(1)), check


forms = {"YAML block style": startup_figures(""), "JSON form": startup_figures("-json")}
print("### Start-up and reload, 10,000 keys\n")
for name, (text, _, _, check) in forms.items():
    if text:
        print(f"{name}:\n")
        print("```\n" + text.strip() + "\n" + (f"qbgate check (hyperfine, 10 runs): {check[0]:.1f} ms +- {check[1]:.1f}" if check else "") + "\n```\n")


def cmp(label, ok, detail):
    print(f"| {label} | {'met' if ok else '**not met**'} | {detail} |")


print("### Targets (issue 6), same run\n")
print("| target | status | figures |")
print("|---|---|---|")
q, n = by.get(("GET", "qbgate")), by.get(("GET", "nginx"))
dg = by.get(("GET", "direct"))
if q and n and dg:
    qc, nc = float(q["cpu_us_per_req"]), float(n["cpu_us_per_req"])
    rc = paired("GET", "cpu_us_per_req")
    cmp("GET CPU/request <= nginx", rc <= 1, f"qbgate {qc:.1f} us, nginx {nc:.1f} us ({rc:.2f}x); "
        f"user {f(q['user_us_per_req'], 1)} / {f(n['user_us_per_req'], 1)}, "
        f"kernel {f(q['sys_us_per_req'], 1)} / {f(n['sys_us_per_req'], 1)}")
    qr, nr = float(q["rps"]) / float(dg["rps"]), float(n["rps"]) / float(dg["rps"])
    rr = paired("GET", "rps")
    cmp("GET throughput ratio >= nginx", rr >= 1,
        f"qbgate {qr:.2f}, nginx {nr:.2f} of direct (qbgate/nginx {rr:.2f}x)")
    qp, np_ = float(q["p99_us"]), float(n["p99_us"])
    rp = paired("GET", "p99_us")
    cmp("GET p99 <= nginx", rp <= 1, f"qbgate {qp:.0f} us, nginx {np_:.0f} us ({rp:.2f}x)")
    cmp("RSS < 30 MiB (1,000 keys, under load)", int(q["rss_kb"]) < 30 * 1024,
        f"{int(q['rss_kb']) / 1024:.1f} MiB peak")
pc, po = by.get(("PUT", "qbgate")), by.get(("PUT", "qbgate-off"))
if pc and po:
    a, b = float(pc["cpu_us_per_req"]), float(po["cpu_us_per_req"])
    rq = paired("PUT", "cpu_us_per_req", "qbgate", "qbgate-off")
    cmp("checked PUT <= 1.3x passthrough PUT CPU", rq <= 1.3, f"{a:.1f} / {b:.1f} us ({rq:.2f}x)")
for name, (_, startup, reload_, check) in forms.items():
    if startup is not None:
        cmp(f"ready within 100 ms, 10,000 keys ({name})", startup <= 100,
            f"{startup:.1f} ms median (exec -> /readyz 200)")
    if reload_ is not None:
        cmp(f"reload under 50 ms, 10,000 keys ({name})", reload_ < 50,
            f"{reload_:.1f} ms median (SIGHUP, minus settle)"
            + (f"; `qbgate check` whole process {check[0]:.1f} ms" if check else ""))
