#!/usr/bin/env python3
"""Writes the benchmark inputs into DIR: qbgate policies (1,000 keys enforce/off, 10,000 keys in
YAML block form and in JSON form, and as a policy directory `policy-10k.d`: the settings in one
file, the keys in ten files of 1,000),
the nginx and HAProxy key maps, the key list the wrk script rotates, the upstream key file and
the dialog JSON the fixed upstream serves.

usage: gen.py DIR UPSTREAM_PORT
"""
import hashlib
import json
import os
import sys

out, up_port = sys.argv[1], int(sys.argv[2])
REAL_KEY = "real-quickblox-key-for-bench"
DIALOG_ID = "5f1c0e7a9b8c4d0012345678"
USERS = [1001, 1002, 1003, 1004, 1005]
RATE = 100000  # generous: no request of the load is ever limited


def key(i):
    return f"bench-key-{i:05d}"


def write(name, text):
    with open(os.path.join(out, name), "w") as f:
        f.write(text)


dialog = {
    "_id": DIALOG_ID,
    "type": 2,
    "user_id": USERS[0],
    "occupants_ids": USERS + [2001, 2002, 2003],
    "admin_ids": [],
    "name": "bench group",
    "photo": None,
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "last_message": "hello",
    "last_message_date_sent": 1767225600,
    "last_message_user_id": USERS[1],
    "unread_messages_count": 0,
    "xmpp_room_jid": f"1_{DIALOG_ID}@muc.chat.quickblox.com",
}
write("dialog.json", json.dumps(dialog, separators=(",", ":")))
write("dialogs.json", json.dumps(
    {"total_entries": 1, "skip": 0, "limit": 100, "items": [dialog]}, separators=(",", ":")))
write("real-key", REAL_KEY)
write("dialog-id", DIALOG_ID)


def key_lines(first, n):
    lines = []
    for i in range(first, first + n):
        digest = hashlib.sha256(key(i).encode()).hexdigest()
        lines += [
            f"  - id: k{i:05d}",
            f"    sha256: {digest}",
            "    on_behalf_of: any",
            f"    rate_limit: {{ per_second: {RATE}, burst: {RATE}, per_user_per_second: {RATE} }}",
        ]
    return lines


def policy(n, mode, admin="127.0.0.1:0"):
    lines = [
        "version: 1",
        "listen: 127.0.0.1:0",
        f"admin_listen: {admin}",
        "upstream:",
        f"  url: http://127.0.0.1:{up_port}",
        f"  api_key: {{ file: {os.path.join(out, 'real-key')} }}",
        "dialog_rules:",
        f"  mode: {mode}",
        "  cache_ttl: 1h",
        "keys:",
    ] + key_lines(0, n)
    return "\n".join(lines) + "\n"


def policy_json(n, mode):
    """The same policy as `policy` in JSON form (JSON is YAML too): the form qbgate parses fast."""
    return json.dumps({
        "version": 1,
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "upstream": {"url": f"http://127.0.0.1:{up_port}",
                     "api_key": {"file": os.path.join(out, "real-key")}},
        "dialog_rules": {"mode": mode, "cache_ttl": "1h"},
        "keys": [{"id": f"k{i:05d}", "sha256": hashlib.sha256(key(i).encode()).hexdigest(),
                  "on_behalf_of": "any",
                  "rate_limit": {"per_second": RATE, "burst": RATE, "per_user_per_second": RATE}}
                 for i in range(n)],
    }, indent=1) + "\n"


write("policy-1k.yaml", policy(1000, "enforce"))
write("policy-1k-off.yaml", policy(1000, "off"))
write("policy-10k.yaml", policy(10000, "enforce"))
write("policy-10k.json", policy_json(10000, "enforce"))
# The same 10,000 keys as a policy directory: the settings alone, then ten files of 1,000 keys.
os.makedirs(os.path.join(out, "policy-10k.d"), exist_ok=True)
write("policy-10k.d/00-settings.yaml", policy(0, "enforce").replace("keys:\n", ""))
for f in range(10):
    write(f"policy-10k.d/keys-{f:02d}.yaml",
          "\n".join(["version: 1", "keys:"] + key_lines(f * 1000, 1000)) + "\n")
write("keys.txt", "".join(key(i) + "\n" for i in range(1000)))
# nginx: map $http_authorization -> key id (exact string match, hashed by nginx).
write("nginx-keys.map", "".join(f'"ApiKey {key(i)}" k{i:05d};\n' for i in range(1000)))
# HAProxy: the map is looked up with the key itself (the header's second word).
write("haproxy-keys.map", "".join(f"{key(i)} k{i:05d}\n" for i in range(1000)))
