#!/usr/bin/env python3
"""Writes the inputs of bench/run's side-by-side setup into DIR (stdlib only).

usage: inputs.py DIR UPSTREAM_PORT [REDIS_PORT]

The keys, limits and dialog are those of the external gateway benchmark qbgate's figures are
compared with (issue "Performance II"), so the two harnesses measure the same work:
  load-keys.txt       1,000 keys, one a line (the wrk script rotates them)
  key0                the first key (smoke tests, h2load)
  rl-key              the external benchmark's rate-limited key (100 r/s, burst 10; not loaded)
  nginx-keys.map      nginx `map $http_authorization $key_ok {}` body: "ApiKey <key>" 1;
  haproxy-keys.map    HAProxy map: <key> <its limit in requests/s>
  policy.yaml         qbgate's policy in the policy file format (version 1): the 1,000 keys at
                      1,000,000 r/s with a burst of 1,000 (never limits the load), on_behalf_of any,
                      dialog rules enforced (cache_ttl 60s, on_lookup_error reject); no upstream key,
                      so the caller's Authorization goes upstream unchanged, as nginx and HAProxy do
  policy-redis.yaml   the same with rate_limit.store redis (REDIS_PORT on 127.0.0.1, on_error deny,
                      so a Redis that fails shows as refused requests, never as a fast run)
  (the maps and policies also hold the external benchmark's rate-limit key: 1,001 entries)
  dialog.json         the dialog the upstream answers (its owner is OWNER, the user of the PUTs)
  dialogs.json        the dialog list GET /chat/Dialog.json answers
"""
import hashlib
import json
import os
import sys

N_KEYS = 1000
RATE = 1_000_000  # requests/s per key: never reached, so no request of the load is limited
BURST = 1000
DIALOG_ID = "5d75393ba28f9a17e1cb0f9e"
OWNER = 104357

DIALOG = {
    "_id": DIALOG_ID,
    "created_at": "2019-09-08T17:42:19Z",
    "last_message": "See you there!",
    "last_message_date_sent": 1567964539,
    "last_message_id": "5d75397ba28f9a17e1cb0fa1",
    "last_message_user_id": OWNER,
    "name": "New Year 2020 party",
    "occupants_ids": [OWNER, 104358, 104359],
    "photo": None,
    "type": 2,
    "updated_at": "2019-09-08T17:42:19Z",
    "user_id": OWNER,
    "xmpp_room_jid": f"12345_{DIALOG_ID}@muc.chat.example.com",
    "unread_messages_count": 0,
}


def key(label):
    """The external benchmark's deterministic keys: 32 hex digits."""
    return hashlib.sha256(f"gwbench/{label}".encode()).hexdigest()[:32]


RL_KEY = key("ratelimited")


def policy(keys, up_port, redis_port=None):
    lines = [
        "version: 1",
        "listen: 127.0.0.1:0",
        "admin_listen: 127.0.0.1:0",
        "upstream:",
        f"  url: http://127.0.0.1:{up_port}",
        "  connect_timeout: 2s",
        "  timeout: 15s",
    ]
    if redis_port is not None:
        lines += [
            "rate_limit:",
            "  store: redis",
            "  redis:",
            f"    url: redis://127.0.0.1:{redis_port}",
            "    on_error: deny",
        ]
    lines += [
        "dialog_rules:",
        "  mode: enforce",
        "  cache_ttl: 60s",
        "  on_lookup_error: reject",
        "keys:",
    ]
    for i, k in enumerate(keys):
        lines += [
            f"  - id: load-{i}",
            f"    sha256: {hashlib.sha256(k.encode()).hexdigest()}",
            "    on_behalf_of: any",
            f"    rate_limit: {{per_second: {RATE}, burst: {BURST}}}",
        ]
    # The external benchmark's rate-limit key (not used by the load), so that every key table
    # holds the same 1,001 entries.
    lines += [
        "  - id: ratelimited",
        f"    sha256: {hashlib.sha256(RL_KEY.encode()).hexdigest()}",
        "    on_behalf_of: any",
        "    rate_limit: {per_second: 100, burst: 10}",
    ]
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    out, up_port = sys.argv[1], int(sys.argv[2])
    redis_port = int(sys.argv[3]) if len(sys.argv) == 4 else 6379
    os.makedirs(out, exist_ok=True)
    keys = [key(f"key-{i}") for i in range(N_KEYS)]

    def write(name, text):
        with open(os.path.join(out, name), "w") as f:
            f.write(text)

    write("load-keys.txt", "".join(k + "\n" for k in keys))
    write("key0", keys[0])
    write("rl-key", RL_KEY)
    write("nginx-keys.map", "".join(f'"ApiKey {k}" 1;\n' for k in keys + [RL_KEY]))
    write("haproxy-keys.map", "".join(f"{k} {RATE}\n" for k in keys) + f"{RL_KEY} 100\n")
    write("policy.yaml", policy(keys, up_port))
    write("policy-redis.yaml", policy(keys, up_port, redis_port))
    write("dialog.json", json.dumps(DIALOG, separators=(",", ":")))
    write("dialogs.json", json.dumps(
        {"total_entries": 1, "skip": 0, "limit": 100, "items": [DIALOG]}, separators=(",", ":")))


if __name__ == "__main__":
    main()
