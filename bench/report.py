#!/usr/bin/env python3
"""Renders one bench/run output directory as Markdown (stdlib only).

  report.py OUT                      print the report
  report.py OUT --append RESULTS.md  append it to RESULTS.md as a dated section with the commit
                                     (full runs only)

Reads OUT/meta.env, OUT/raw/<METHOD>-r<round>-<target>.json (bench/measure.py), OUT/raw/rss.txt
and OUT/raw/startup-<form>.txt (bench/startup.py's output). Every figure is the median over the
rounds, followed by the min-max spread in brackets when there are several rounds. A ratio between
two targets (to direct, qbgate to nginx, Redis to memory) is taken within each round, from
measurements seconds apart, and its median over rounds is reported.
"""
import json
import os
import re
import statistics
import sys

NOISE_PCT = 10.0  # foreign CPU or steal (% of one core) above which a round is named


def load_meta(out):
    meta = {}
    with open(os.path.join(out, "meta.env")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return meta


def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mid = fmt(statistics.median(values))
    if len(values) < 2:
        return mid
    return f"{mid} [{fmt(min(values))}-{fmt(max(values))}]"


def f0(v):
    return f"{v:,.0f}"


def f1(v):
    return f"{v:.1f}"


def f2(v):
    return f"{v:.2f}"


def status(value, limit, below=True):
    if value is None:
        return "-"
    ok = value <= limit if below else value >= limit
    return "met" if ok else "**not met**"


def render(out):
    meta = load_meta(out)
    raw = os.path.join(out, "raw")
    rounds = int(meta["ROUNDS"])
    targets = {m: meta.get(f"TARGETS_{m}", "").split() for m in ("GET", "PUT", "H2")}
    runs = {}
    for m, ts in targets.items():
        for t in ts:
            rs = []
            for r in range(1, rounds + 1):
                p = os.path.join(raw, f"{m}-r{r}-{t}.json")
                if os.path.exists(p):
                    with open(p) as fh:
                        rs.append(json.load(fh))
            if len(rs) != rounds:
                sys.exit(f"report: {m} {t}: {len(rs)} of {rounds} rounds in {raw}")
            runs[m, t] = rs
    rss = {}
    if os.path.exists(os.path.join(raw, "rss.txt")):
        for line in open(os.path.join(raw, "rss.txt")):
            name, kib = line.split()
            rss[name] = int(kib) / 1024

    def per_round(m, t, get):
        return [get(x) for x in runs[m, t]]

    def cpu(group, part="us_per_req"):
        return lambda x: x["cpu"][group][part] if group in x["cpu"] else None

    def paired(m, a, b, get):
        """Per-round ratios a/b of one figure."""
        if (m, a) not in runs or (m, b) not in runs:
            return []
        return [get(x) / get(y) for x, y in zip(runs[m, a], runs[m, b]) if get(y)]

    lines = []
    p = lines.append
    p(f"Commit `{meta['COMMIT']}`, {meta['DATE']}, `bench/run {meta['MODE']}`: {rounds} round(s) x "
      f"{meta['ROUND_SECONDS']} s per target, warm-up {meta['WARMUP']} s, the targets' order "
      f"rotating every round. Binary {meta['QBGATE']}, {meta['QBGATE_VERSION']}.")
    p(f"{meta['NPROC']} x {meta['CPU_MODEL']}, Linux {meta['KERNEL']}; nginx {meta['NGINX']}, "
      f"HAProxy {meta['HAPROXY']}, wrk {meta['WRK']}, h2load {meta['H2LOAD']}, redis-server "
      f"{meta['REDIS']}. Server core (upstream, proxies, redis-server): CPU {meta['SUT_CPU']}; "
      f"load core: CPU {meta['LOAD_CPU']}. wrk -t{meta['THREADS']} -c{meta['CONNS']}; h2load "
      f"-t{meta['THREADS']} -c{meta['CONNS']} -m{meta['H2_STREAMS']}. Machine "
      f"{meta['BUSY_BEFORE']}% busy before the start. Access logs: nginx and qbgate JSON, HAProxy "
      f"{'JSON' if meta.get('HAPROXY_LOG') == '1' else 'none'}.")
    p("")
    p("Figures: median over rounds [min-max]. CPU: microseconds on CPU per completed request, all "
      "threads of the process(es); user / kernel split from utime and stime.")
    p("")

    titles = {
        "GET": "HTTP/1.1 `GET /chat/Dialog.json?limit=10` (1,000 keys, 100,000 users)",
        "PUT": "HTTP/1.1 `PUT /chat/Dialog/<id>.json` as the dialog's owner (qbgate judges the "
               "dialog rules; nginx and HAProxy forward unchecked)",
    }
    for m in ("GET", "PUT"):
        if not targets[m]:
            continue
        p(f"### {titles[m]}")
        p("")
        p("| target | req/s | ratio to direct | p50 us | p99 us | proxy CPU us/req | user / kernel | "
          "upstream CPU us/req | redis CPU us/req | peak RSS MiB |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in targets[m]:
            rps = per_round(m, t, lambda x: x["req_per_s"])
            ratio = paired(m, t, "direct", lambda x: x["req_per_s"])
            split = "-"
            if t != "direct":
                split = (f"{f1(statistics.median(per_round(m, t, cpu('proxy', 'user_us_per_req'))))} / "
                         f"{f1(statistics.median(per_round(m, t, cpu('proxy', 'sys_us_per_req'))))}")
            p(f"| {t} | {spread(rps, f0)} | {spread(ratio, f2)} | "
              f"{spread(per_round(m, t, lambda x: x['latency_us']['p50']), f0)} | "
              f"{spread(per_round(m, t, lambda x: x['latency_us']['p99']), f0)} | "
              f"{spread(per_round(m, t, cpu('proxy')), f1)} | {split} | "
              f"{spread(per_round(m, t, cpu('upstream')), f1)} | "
              f"{spread(per_round(m, t, cpu('redis')), f1)} | "
              f"{f1(rss[t]) if t in rss else '-'} |")
        p("")

    if targets["H2"]:
        p("### Cleartext HTTP/2 inbound, `GET /chat/Dialog.json?limit=10` (h2load, prior knowledge, "
          "one key and user; HTTP/1.1 to the upstream)")
        p("")
        p("| target | req/s | mean latency us | proxy CPU us/req | user / kernel | upstream CPU us/req |")
        p("|---|---:|---:|---:|---:|---:|")
        for t in targets["H2"]:
            p(f"| {t} | {spread(per_round('H2', t, lambda x: x['req_per_s']), f0)} | "
              f"{spread(per_round('H2', t, lambda x: x['latency_us']['mean']), f0)} | "
              f"{spread(per_round('H2', t, cpu('proxy')), f1)} | "
              f"{f1(statistics.median(per_round('H2', t, cpu('proxy', 'user_us_per_req'))))} / "
              f"{f1(statistics.median(per_round('H2', t, cpu('proxy', 'sys_us_per_req'))))} | "
              f"{spread(per_round('H2', t, cpu('upstream')), f1)} |")
        p("")

    startup = {}
    for form in ("yaml", "json"):
        path = os.path.join(raw, f"startup-{form}.txt")
        if os.path.exists(path):
            text = open(path).read()
            up = re.search(r"startup_ms_median=([\d.]+)", text)
            rl = re.search(r"reload_ms_median=([\d.]+)", text)
            startup[form] = (text, up and float(up.group(1)), rl and float(rl.group(1)))
    if startup:
        p("### 10,000 keys: start-up and reload (bench/gen.py's policy, bench/startup.py)")
        p("")
        p("| policy form | ready ms (exec -> /readyz 200) | reload ms | peak RSS MiB, ready |")
        p("|---|---:|---:|---:|")
        for form, (_, up, rl) in startup.items():
            r = rss.get(f"qbgate-10k-{form}")
            p(f"| {form} | {f1(up) if up is not None else '-'} | {f1(rl) if rl is not None else '-'} | "
              f"{f1(r) if r is not None else '-'} |")
        p("")
        p("```")
        for form, (text, _, _) in startup.items():
            for line in text.strip().splitlines():
                p(f"{form}: {line}")
        p("```")
        p("")

    # ---- the targets, from this run
    p("### Targets (issue Performance II), this run")
    p("")
    p("| target | figure (median of per-round ratios [min-max]) | status |")
    p("|---|---|---|")

    def row(label, ratios, limit, below=True, note=""):
        value = statistics.median(ratios) if ratios else None
        p(f"| {label} | {spread(ratios, f2)}{note} | {status(value, limit, below)} |")

    get_cpu = paired("GET", "qbgate", "nginx", cpu("proxy"))
    if "pgo" in meta["QBGATE"]:
        row("GET CPU per request <= 0.85x nginx's (the profile-guided build)", get_cpu, 0.85)
    else:
        row("GET CPU per request <= 0.90x nginx's (plain build; the PGO build: 0.85x)", get_cpu, 0.90)
    row("judged PUT CPU per request <= 1.10x nginx's unchecked PUT",
        paired("PUT", "qbgate", "nginx", cpu("proxy")), 1.10)
    for m in ("GET", "PUT"):
        row(f"{m} p99 <= nginx's", paired(m, "qbgate", "nginx", lambda x: x["latency_us"]["p99"]), 1.0)
        row(f"{m} throughput ratio to direct >= nginx's",
            paired(m, "qbgate", "nginx", lambda x: x["req_per_s"]), 1.0, below=False)
    if ("GET", "qbgate-redis") in runs:
        with_redis = [(x["cpu"]["proxy"]["us_per_req"] + x["cpu"]["redis"]["us_per_req"])
                      / y["cpu"]["proxy"]["us_per_req"]
                      for x, y in zip(runs["GET", "qbgate-redis"], runs["GET", "qbgate"])]
        row("Redis store: CPU per GET <= 1.5x the memory store's (qbgate + redis-server)",
            with_redis, 1.5)
        row("Redis store: the same, qbgate's process alone",
            paired("GET", "qbgate-redis", "qbgate", cpu("proxy")), 1.5)
    if ("H2", "qbgate") in runs and ("H2", "nginx") in runs:
        row("HTTP/2 inbound: CPU per request <= nginx's `http2` listener",
            paired("H2", "qbgate", "nginx", cpu("proxy")), 1.0)
    for form, (_, up, rl) in startup.items():
        p(f"| 10,000 keys ({form}): ready <= 100 ms | {f1(up) if up is not None else '-'} ms | "
          f"{status(up, 100)} |")
        p(f"| 10,000 keys ({form}): reload <= 50 ms | {f1(rl) if rl is not None else '-'} ms | "
          f"{status(rl, 50)} |")
        r = rss.get(f"qbgate-10k-{form}")
        p(f"| 10,000 keys ({form}): RSS <= 60 MiB | {f1(r) if r is not None else '-'} MiB | "
          f"{status(r, 60)} |")
    p("")

    noisy = []
    for (m, t), rs in sorted(runs.items()):
        for i, x in enumerate(rs, 1):
            mc = x["machine"]
            if mc["foreign_pct"] > NOISE_PCT or mc["steal_pct"] > NOISE_PCT:
                noisy.append(f"{m} {t} round {i} (foreign {mc['foreign_pct']}%, steal {mc['steal_pct']}%)")
    if noisy:
        p(f"**Noise warning**: other processes or the hypervisor took more than {NOISE_PCT:.0f}% of a "
          f"core in {len(noisy)} of {sum(len(r) for r in runs.values())} measurements: "
          + "; ".join(noisy[:12]) + ("; ..." if len(noisy) > 12 else "") + ".")
    else:
        p(f"No measurement saw more than {NOISE_PCT:.0f}% of a core of foreign CPU use or steal.")
    return meta, "\n".join(lines) + "\n"


def main():
    args = sys.argv[1:]
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--append"):
        sys.exit(__doc__)
    meta, text = render(args[0])
    if len(args) == 1:
        print(f"## bench/run {meta['MODE']}, {meta['DATE']}, commit {meta['COMMIT']}\n")
        print(text)
        return
    if meta["MODE"] != "full":
        sys.exit("report: only a full run is recorded in RESULTS.md (quick runs prove the setup works)")
    if meta["COMMIT"].endswith("-dirty"):
        sys.stderr.write("report: warning: the run was made with uncommitted changes\n")
    with open(args[2], "a") as f:
        f.write(f"\n## Run of {meta['DATE']}, commit {meta['COMMIT']} (`bench/run {meta['MODE']}`)\n\n")
        f.write(text)


if __name__ == "__main__":
    main()
