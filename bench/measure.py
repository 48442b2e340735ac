#!/usr/bin/env python3
"""One pinned, time-bounded load measurement and what it cost the servers (stdlib only).

  measure.py --tool wrk --url URL --out PREFIX [common options] -- KEYS METHOD PATH BODY USERS
  measure.py --tool h2load --url URL --out PREFIX [common options] --header 'Name: value' ...
  common: --cpu N --conns C --threads T --duration S --warmup S [--streams M]
          --group NAME=PIDS ...   (the processes whose CPU time is charged to NAME, e.g.
                                   proxy="812 813" upstream=790 redis=901)

Runs a warm-up (not measured) when --warmup > 0, then the measured run. Writes PREFIX.txt (the
tool's output) and PREFIX.json: requests, req_per_s, latency (wrk: p50/p90/p99/p99.9/mean; h2load:
mean only), and per group the on-CPU time per completed request: the scheduler's runtime of the
whole process (its CPU-time clock, clock_getcpuclockid(3): every thread, exited ones included, to
the ns), split into user and kernel time from /proc/PID/stat utime and stime. Also the busy share
of each core and the CPU used by processes that are not ours ("foreign") and by the hypervisor
(steal), which say how noisy the run was.

Fails (exit 1, with the reason on stderr) when the tool fails or times out, when no request
completed, or when any answer was not a 2xx or any socket error happened: a setup that refuses or
drops requests answers fast, and must never pass for a fast proxy.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")
STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def fail(msg, out=""):
    sys.stderr.write(f"[measure] FAILED: {msg}\n")
    if out:
        sys.stderr.write(out[-3000:] + "\n")
    sys.exit(1)


def core_times():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"(cpu\d+) (.*)", line)
            if m:
                out[m.group(1)] = dict(zip(STAT_COLUMNS, map(int, m.group(2).split())))
    return out


def cpu_clock(pid):
    """clock_getcpuclockid(pid): CPUCLOCK_SCHED of the whole process."""
    return ((~pid) << 3) | 2


def snapshot(pids):
    """{pid: (runtime ns, utime ticks, stime ticks)} of every live process in pids."""
    snap = {}
    for pid in pids:
        try:
            ns = time.clock_gettime_ns(cpu_clock(pid))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            snap[pid] = (ns, int(fields[11]), int(fields[12]))  # utime, stime: fields 14, 15
        except OSError:
            pass
    return snap


def charge(before, after, requests):
    ns = sum(after[p][0] - before[p][0] for p in after if p in before)
    user = sum(after[p][1] - before[p][1] for p in after if p in before)
    system = sum(after[p][2] - before[p][2] for p in after if p in before)
    n = max(1, requests)
    return {
        "us_per_req": round(ns / 1e3 / n, 3),
        "user_us_per_req": round(user * 1e6 / TICK / n, 3),
        "sys_us_per_req": round(system * 1e6 / TICK / n, 3),
        "ns": ns,
    }


def command(a, seconds, warm):
    pin = ["taskset", "-c", str(a.cpu)]
    if a.tool == "wrk":
        cmd = pin + ["wrk", f"-t{a.threads}", f"-c{a.conns}", f"-d{seconds}s", "--timeout", "2s",
                     "-s", os.path.join(HERE, "load.lua"), a.url, "--"] + a.rest
    else:
        cmd = pin + ["h2load", f"-t{a.threads}", f"-c{a.conns}", f"-m{a.streams}", "-D", str(seconds)]
        for h in a.header:
            cmd += ["-H", h]
        cmd.append(a.url)
    return cmd


def run(a, seconds, warm=False):
    cmd = command(a, seconds, warm)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)  # the tools stop themselves: a backstop
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        fail(f"{a.tool} did not stop within {seconds + 30} s: {' '.join(cmd)}", out)
    if proc.returncode != 0:
        fail(f"{a.tool} exited with {proc.returncode}: {' '.join(cmd)}", out)
    return out


def parse_wrk(out):
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        fail("no RESULT line from bench/load.lua", out)
    r = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    requests = int(r["requests"])
    errors = {k[4:]: int(v) for k, v in r.items() if k.startswith("err_")}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "seconds": r["duration_us"] / 1e6,
        "non_2xx": max(errors.pop("status"), int(non2xx.group(1)) if non2xx else 0),
        "socket_errors": errors,
        "latency_us": {"p50": r["p50_us"], "p90": r["p90_us"], "p99": r["p99_us"],
                       "p999": r.get("p999_us"), "mean": r["mean_us"], "max": r["max_us"]},
    }


def parse_h2load(out):
    m = re.search(r"finished in ([\d.]+)(\w+), ", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not (m and done and codes and lat):
        fail("cannot read h2load's summary", out)
    scale = {"s": 1, "ms": 1e-3, "us": 1e-6}

    def us(v):
        for unit, f in (("us", 1), ("ms", 1e3), ("s", 1e6)):
            if v.endswith(unit):
                return float(v[: -len(unit)]) * f
        return float("nan")

    # A response that ends while h2load stops may count in the status codes but not as done.
    requests = int(done.group(2))
    return {
        "requests": requests,
        "seconds": float(m.group(1)) * scale[m.group(2)],
        # h2load counts a non-2xx answer as "failed" too; "errored": a stream or connection error.
        "non_2xx": max(sum(int(codes.group(i)) for i in (2, 3, 4)), int(done.group(1)) - requests),
        "socket_errors": {"errored": int(done.group(4)), "timeout": int(done.group(5))},
        "latency_us": {"mean": us(lat.group(3)), "max": us(lat.group(2))},
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tool", choices=["wrk", "h2load"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cpu", default="1")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--duration", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--group", action="append", default=[], help="NAME=PIDS")
    p.add_argument("rest", nargs="*", help="wrk script arguments (after --)")
    a = p.parse_args()
    groups = {}
    for g in a.group:
        name, _, pids = g.partition("=")
        groups[name] = [int(x) for x in pids.split()]
    if a.duration < 1 or a.duration > 600:
        fail("--duration must be 1..600 s")

    if a.warmup > 0:
        run(a, a.warmup, warm=True)
    cores0, before, self0 = core_times(), {g: snapshot(p) for g, p in groups.items()}, os.times()
    t0 = time.monotonic()
    out = run(a, a.duration)
    wall = time.monotonic() - t0
    cores1, after, self1 = core_times(), {g: snapshot(p) for g, p in groups.items()}, os.times()
    with open(a.out + ".txt", "w") as f:
        f.write(out)

    res = parse_wrk(out) if a.tool == "wrk" else parse_h2load(out)
    if res["non_2xx"] or any(res["socket_errors"].values()):
        fail(f"{a.url}: {res['non_2xx']} answers were not 2xx, socket errors "
             f"{res['socket_errors']} (of {res['requests']} completed): the setup is broken", out)
    if res["requests"] == 0:
        fail(f"no request completed against {a.url}", out)
    for g, pids in groups.items():
        gone = [p for p in pids if p not in after[g]]
        if gone:
            fail(f"{g} process(es) {gone} exited during the run")
    res["req_per_s"] = res["requests"] / res["seconds"]
    res["cpu"] = {g: charge(before[g], after[g], res["requests"]) for g in groups}

    def pct(ticks):
        return round(100.0 * ticks / TICK / wall, 1)

    delta = {c: {k: cores1[c][k] - cores0[c][k] for k in STAT_COLUMNS} for c in cores1}
    ours_ns = sum(c["ns"] for c in res["cpu"].values())
    tool_ticks = ((self1.children_user - self0.children_user)
                  + (self1.children_system - self0.children_system)) * TICK
    task_ticks = sum(d["user"] + d["nice"] + d["system"] for d in delta.values())
    res["machine"] = {
        "core_busy_pct": {c: round(100.0 * (sum(d.values()) - d["idle"] - d["iowait"])
                                   / max(1, sum(d.values())), 1) for c, d in delta.items()},
        "servers_pct": pct(ours_ns / 1e9 * TICK),
        "load_tool_pct": pct(tool_ticks),
        "softirq_pct": pct(sum(d["softirq"] + d["irq"] for d in delta.values())),
        "steal_pct": pct(sum(d["steal"] for d in delta.values())),
        "foreign_pct": max(0.0, pct(task_ticks - ours_ns / 1e9 * TICK - tool_ticks)),
    }
    res.update(tool=a.tool, url=a.url, conns=a.conns, threads=a.threads, duration_s=a.duration,
               warmup_s=a.warmup, load_cpu=a.cpu)
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    lat = res["latency_us"]
    cpu = "  ".join(f"{g} {c['us_per_req']:.1f}" for g, c in res["cpu"].items())
    print(f"  {res['req_per_s']:>9,.0f} req/s  p99 {lat.get('p99') or '-'} us  "
          f"mean {lat['mean']:.0f} us  CPU us/req: {cpu}  foreign {res['machine']['foreign_pct']}%"
          f"  steal {res['machine']['steal_pct']}%")


if __name__ == "__main__":
    main()
