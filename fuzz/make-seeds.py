#!/usr/bin/env python3
"""Regenerate the committed seed corpora (fuzz/corpus/<target>/) from the SDK captures
(tests/data/sdk-requests/*.log), the example policies (config/*.yaml) and hand-written edge
cases. Run from anywhere: python3 fuzz/make-seeds.py"""
import hashlib, pathlib, re, shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"


def requests():
    for log in sorted((ROOT / "tests/data/sdk-requests").glob("*.log")):
        for block in log.read_bytes().split(b"\n-----\n"):
            block = block.strip(b"\n")
            if not block:
                continue
            head, _, body = block.partition(b"\n\n")
            lines = head.split(b"\n")
            method, target, _ = lines[0].split(b" ")
            path, _, query = target.partition(b"?")
            yield method, path, (query if b"?" in target else None), lines[1:], body.strip(b"\n")


seeds = {t: [] for t in ("policy", "normalize", "auth_headers", "params")}

# policy: the example files, the README example, and variants the tests use.
for f in sorted((ROOT / "config").glob("*.yaml")):
    seeds["policy"].append(f.read_bytes())
readme = (ROOT / "README.md").read_text()
for block in re.findall(r"```yaml\n(.*?)```", readme, re.S):
    seeds["policy"].append(block.encode())
d = hashlib.sha256(b"k").hexdigest()
base = f"""version: 1
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream:
  url: http://127.0.0.1:9/base
  api_key: {{ env: QB_API_KEY }}
  timeout: 2s
  connect_timeout: 1s
"""
variants = [
    "",
    "rate_limit:\n  store: redis\n  redis:\n    url: redis://127.0.0.1:6379\n    on_error: deny\n",
    "rate_limit:\n  store: memory\n",
    "dialog_rules:\n  mode: report\n  cache_ttl: 30s\n  allow_fields: [custom]\n",
    "dialog_rules:\n  mode: off\n",
    "qb_token: reject\n",
    "client:\n  max_body_bytes: 1024\n  body_timeout: 5s\n",
    "shutdown:\n  drain_delay: 1s\n  timeout: 10s\n",
]
keys = [
    f"keys:\n- {{ id: a, sha256: {d}, on_behalf_of: any }}\n",
    f"keys:\n- {{ id: b.c_d-1, sha256: {d}, on_behalf_of: [1, 2, 96753878], routes: [GET /chat/Dialog.json, PUT /chat/Dialog/*, '* /session'] }}\n",
    f"keys:\n- {{ id: app, sha256: {d}, on_behalf_of: none, rate_limit: {{ per_second: 10, burst: 20, per_minute: 100, per_hour: 1000, per_day: 10000, per_user_per_second: 2 }} }}\n",
    f"keys:\n- {{ id: off, sha256: {d}, disabled: true }}\n- {{ id: old, sha256: {d.upper()}, expires_at: 2020-01-01T00:00:00Z }}\n",
    "keys: []\n",
]
for i, v in enumerate(variants):
    seeds["policy"].append((base + v + keys[i % len(keys)]).encode())
seeds["policy"] += [b"", b"version: 2\n", b"{", b"keys: [{id: '', sha256: zz}]\n",
                    b"version: 1\nversion: 1\n", b"version: 1\nunknown: 1\n",
                    b"&a [*a]\n", b"version: !!binary aGk=\n"]

# normalize: path \n query (- = none) \n headers.
for method, path, query, headers, body in requests():
    seeds["normalize"].append(path + b"\n" + (query if query is not None else b"-") + b"\n" + b"\n".join(headers))
for path, query, hdr in [
    (b"/chat/%2e%2e/Dialog.json", b"-", b""),
    (b"/chat//Dialog.json", b"-", b""),
    (b"/chat/Dialog%2F1.json", b"-", b""),
    (b"/chat/Dialog/%C3%A9.JSON", b"a=1&b[c]=2", b""),
    (b"/chat/Dialog/1", b"_method=DELETE", b""),
    (b"/chat/Dialog/1", b"%5Fmethod=DELETE", b""),
    (b"/chat/Dialog/1", b"-", b"X-HTTP-Method-Override: DELETE"),
    (b"/chat/Dialog/a%00b", b"-", b""),
    (b"/CHAT/dialog/ID.json", b"x=%zz", b""),
    (b"/chat/Dialog/1.json/", b"-", b""),
    (b"/chat/Dialog/1%5C2", b"-", b""),
    (b"/chat/./Dialog", b"-", b""),
]:
    seeds["normalize"].append(path + b"\n" + query + b"\n" + hdr)

# auth_headers: header lines (keys are the fuzz target's KEYS).
for method, path, query, headers, body in requests():
    seeds["auth_headers"].append(b"\n".join(headers).replace(b"test-key-123", b"fuzz-key-any"))
for h in [
    b"Authorization: ApiKey fuzz-key-any\nOn-Behalf-Of: 96753878",
    b"Authorization: apikey   fuzz-key-list  \nOn-Behalf-Of: 42",
    b"Authorization: ApiKey fuzz-key-list\nOn-Behalf-Of: 43",
    b"Authorization: ApiKey fuzz-key-app",
    b"Authorization: ApiKey fuzz-key-app\nOn-Behalf-Of: 1",
    b"Authorization: ApiKey fuzz-key-off\nOn-Behalf-Of: 1",
    b"Authorization: ApiKey fuzz-key-old\nOn-Behalf-Of: 1",
    b"Authorization: ApiKey fuzz-key-any\nOn-Behalf-Of: 01",
    b"Authorization: ApiKey fuzz-key-any\nOn-Behalf-Of: 18446744073709551616",
    b"Authorization: ApiKey fuzz-key-any\nOn-Behalf-Of: 1\nOn-Behalf-Of: 2",
    b"Authorization: ApiKey fuzz-key-any\nAuthorization: ApiKey fuzz-key-any\nOn-Behalf-Of: 1",
    b"Authorization: ApiKey fuzz-key-any\nQB-Token: abc",
    b"QB-Token: 8b75a6c7191285499d890a81df4ee7fe49bc732a",
    b"QB-Token: ",
    b"QB-Token: t\nOn-Behalf-Of: 1",
    b"Authorization: Bearer x",
    b"Authorization: ApiKey",
    b"",
]:
    seeds["auth_headers"].append(h)

# params: content-type (- = none) \n query (- = none) \n body.
for method, path, query, headers, body in requests():
    ct = next((h.split(b": ", 1)[1] for h in headers if h.lower().startswith(b"content-type:")), b"-")
    seeds["params"].append(ct + b"\n" + (query if query is not None else b"-") + b"\n" + body)
for s in [
    b'application/json\n-\n{"name":"a","name":"b"}',
    b'application/json\n-\n{"push_all":{"admin_ids":["1","2"]},"pull_all":{"occupants_ids":"3, 4"}}',
    b'application/json\n-\n{"type":2,"occupants_ids":[1,2],"name":"x","data":{"class_name":"C"}}',
    b'application/json\n-\n{"_method":"DELETE"}',
    b'application/json\n-\n[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
    b'application/json\n-\n{"user_id":18446744073709551616}',
    b'application/json\nforce=1\n{}',
    b'application/json; charset=latin1\n-\n{}',
    b'application/x-www-form-urlencoded\n-\na[b][c]=1&a[b][d]=2&e[]=1&e[]=2',
    b'application/x-www-form-urlencoded\n-\na[][b]=1',
    b'application/x-www-form-urlencoded\n-\na[b=1',
    b'application/x-www-form-urlencoded\n-\nname=%E9',
    b'application/x-www-form-urlencoded\nname=x\nname=y',
    b'text/plain\n-\nname=x',
    b'-\nforce=true\n',
    b'-\n_method=PUT\n',
    b'multipart/form-data; boundary=x\n-\n--x\r\n',
]:
    seeds["params"].append(s)

for target, items in seeds.items():
    d = OUT / target
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    seen = set()
    for data in items:
        h = hashlib.sha1(data).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        (d / f"seed-{h[:16]}").write_bytes(data)
    print(f"{target}: {len(seen)} seeds")
