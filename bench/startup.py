#!/usr/bin/env python3
"""Start-up, reload and memory of qbgate with a large policy (issue 21 targets, 10,000 keys: ready
within 100 ms, a new key accepted within 50 ms of a `..data` swap, RSS at most 60 MiB).

usage: startup.py QBGATE POLICY LISTEN_PORT ADMIN_PORT CPU [RUNS]

POLICY is a policy file or a policy directory. It is copied into a Kubernetes-style volume (a
temporary directory whose files are links `NAME -> ..data/NAME`, `..data` a link to a timestamped
directory) and qbgate runs on the volume: `--policy VOLUME` for a directory, `--policy
VOLUME/NAME` for a file. The process is pinned to CPU.

start-up: time from exec to the first 200 of GET /readyz (polled every 0.5 ms on a raw socket),
          RUNS runs (default 7).
reload:   on the last process, RUNS-2 times (at least 5): write a new generation with one more key
          (appended to the last file), swap `..data` as the kubelet does (rename of a new link),
          then time until a request with the new key is no longer refused as unknown (polled every
          0.5 ms). That is the watch's quiet time + read + parse of the changed files + compile +
          swap.
sighup:   SIGHUP -> the 'policy reloaded' log line, 5 times: a full re-read of every file whose
          bytes changed (none: so the cached parses are used) + compile + swap. Includes the
          watch's 10 ms quiet time.
rss:      VmRSS of the last process after start and after the reloads; VmHWM at the end.
"""
import atexit
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

qbgate, source, port, admin, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
runs = int(sys.argv[6]) if len(sys.argv) > 6 else 7
env = dict(os.environ, QBGATE_LOG="info", QBGATE_LOG_FORMAT="json")

# ---- the volume ----------------------------------------------------------------------------------
volume = tempfile.mkdtemp(prefix="qbgate-startup-")
if os.path.isdir(source):
    names = sorted(n for n in os.listdir(source) if n.endswith(".yaml") and not n.startswith("."))
    files = {n: open(os.path.join(source, n)).read() for n in names}
else:
    names = ["policy.yaml"]
    files = {"policy.yaml": open(source).read()}
generation = 0


def swap(files):
    """Write a new generation and swap `..data` to it, as the kubelet does. Returns when renamed."""
    global generation
    generation += 1
    data = f"..2026_12_05_{generation:04d}"
    os.mkdir(os.path.join(volume, data))
    for name, text in files.items():
        with open(os.path.join(volume, data, name), "w") as f:
            f.write(text)
    tmp = os.path.join(volume, "..data_tmp")
    os.symlink(data, tmp)
    os.rename(tmp, os.path.join(volume, "..data"))
    return time.perf_counter()


swap(files)
for name in names:
    os.symlink(f"..data/{name}", os.path.join(volume, name))
policy = volume if os.path.isdir(source) else os.path.join(volume, "policy.yaml")
cmd = ["taskset", "-c", cpu, qbgate, "run", "--policy", policy,
       "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]


def with_key(text, i):
    """`text` with one more key (`on_behalf_of: none`, secret `startup-new-<i>`) at the end."""
    digest = hashlib.sha256(f"startup-new-{i}".encode()).hexdigest()
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        doc["keys"].append({"id": f"startup-new-{i}", "sha256": digest, "on_behalf_of": "none"})
        return json.dumps(doc, indent=1) + "\n"
    # gen.py writes `keys:` last, as a block list indented by two.
    return text + f"  - id: startup-new-{i}\n    sha256: {digest}\n    on_behalf_of: none\n"


def status(addr_port, request):
    try:
        with socket.create_connection(("127.0.0.1", addr_port), timeout=1) as s:
            s.sendall(request)
            head = s.recv(64)
            return int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        return 0


def ready():
    return status(admin, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 200


def knows(i):
    request = (f"GET /chat/Dialog.json HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey startup-new-{i}\r\n"
               "Connection: close\r\n\r\n").encode()
    return status(port, request) not in (0, 401)


def rss(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


live = []


@atexit.register
def cleanup():
    """Also on sys.exit: no gateway left listening, no volume left behind."""
    for proc in live:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shutil.rmtree(volume, ignore_errors=True)


def start():
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    live.append(proc)
    while not ready():
        if proc.poll() is not None:
            sys.exit(f"qbgate exited: {proc.stdout.read().decode()[-2000:]}")
        if time.perf_counter() - t0 > 10:
            sys.exit("qbgate not ready after 10 s")
        time.sleep(0.0005)
    return proc, (time.perf_counter() - t0) * 1000


def stop(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


starts = []
for i in range(runs):
    proc, ms = start()
    starts.append(ms)
    if i < runs - 1:
        stop(proc)
rss_start = rss(proc.pid)["VmRSS"]

buf = b""
log = []
fd = proc.stdout.fileno()
os.set_blocking(fd, False)


def wait_line(needle, deadline):
    """The first log line with `needle` (`__drain__`: none, read until `deadline`)."""
    global buf
    while time.perf_counter() < deadline:
        r, _, _ = select.select([fd], [], [], 0.001)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            log.append(line)
            if needle in line:
                return time.perf_counter(), line
    return None, None


wait_line(b"__drain__", time.perf_counter() + 0.2)  # drop the start-up lines

# ..data swaps, each adding a key to the last file.
swaps = []
last = names[-1]
for i in range(max(5, runs - 2)):
    files[last] = with_key(files[last], i)
    t0 = swap(files)
    while not knows(i):
        if time.perf_counter() - t0 > 5:
            wait_line(b"__drain__", time.perf_counter() + 0.2)
            tail = b"\n".join(log[-8:]).decode()
            sys.exit(f"key {i} not accepted 5 s after the swap; log:\n{tail}")
        # Read the access log meanwhile: a full pipe would stall the gateway's log writes.
        wait_line(b"__drain__", time.perf_counter() + 0.0005)
    swaps.append((time.perf_counter() - t0) * 1000)
    wait_line(b"__drain__", time.perf_counter() + 0.1)

sighups = []
for i in range(5):
    wait_line(b"__drain__", time.perf_counter() + 0.1)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGHUP)
    t1, line = wait_line(b"policy reloaded", t0 + 5)
    if t1 is None:
        sys.exit("no 'policy reloaded' line after SIGHUP")
    sighups.append((t1 - t0) * 1000)
status_end = rss(proc.pid)
stop(proc)


def line(name, values, note=""):
    print(f"{name}_median={statistics.median(values):.1f} min={min(values):.1f} max={max(values):.1f} "
          f"runs={' '.join(f'{v:.1f}' for v in values)}{note}")


line("startup_ms", starts)
line("reload_ms", swaps, " (..data swap -> the new key accepted)")
line("sighup_ms", sighups, " (SIGHUP -> log line, includes the 10 ms quiet time)")
print(f"rss_after_start={rss_start} rss_after_reloads={status_end['VmRSS']} hwm={status_end['VmHWM']}")
