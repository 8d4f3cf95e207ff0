#!/usr/bin/env python3
"""Writes the fuzz seed corpus (fuzz/seeds/<target>/) from proto-spec/vectors/.

Every genuine datagram of the session vectors seeds `packet`, `header` and `body`; the
deeplinks and codes seed `header` too. Run from anywhere; the output is committed.
"""
import json, os, pathlib

root = pathlib.Path(__file__).resolve().parent
vectors = root.parent / "proto-spec" / "vectors"
session = json.load(open(vectors / "session.json"))
packets = [bytes.fromhex(session["pair_init"]["request"]["datagram"]),
           bytes.fromhex(session["pair_init"]["reply"]["datagram"])]
bodies = []
for m in session["messages"]:
    for side in ("request", "reply"):
        packets.append(bytes.fromhex(m[side]["datagram"]))
        bodies.append(bytes.fromhex(m[side]["body"]))
texts = [session["deeplink"].encode(), session["offline"]["validation_code"].encode()]
texts += [l["uri"].encode() for l in json.load(open(vectors / "deeplinks.json"))["links"]]
texts += [c["code"].encode() for c in json.load(open(vectors / "codes.json"))["manual_codes"]]

def write(target, items):
    d = root / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(items):
        (d / f"seed-{i:03}").write_bytes(b)

write("packet", packets)
write("header", packets + bodies + texts)
# The insecure AEAD passes bodies in the clear: rebuild the datagrams with plaintext bodies so
# that the `body` target starts from well-formed inputs.
plain = []
for m in session["messages"]:
    for side in ("request", "reply"):
        dg = bytes.fromhex(m[side]["datagram"])
        plain.append(dg[:32] + bytes.fromhex(m[side]["body"]) + bytes(16))
write("body", plain)
# The engine target reads records [len_hi, len_lo, seconds, datagram...].
record = lambda d, step=0: bytes([len(d) >> 8, len(d) & 0xFF, step]) + d
write("engine", [record(d) for d in plain[::2]] + [b"".join(record(d, 1) for d in plain[::2])])
# The PIN material target reads [root 32, takes, index 3, counter 4, block...]: one seed per
# proof case of the PIN vectors.
pin = json.load(open(vectors / "pin.json"))
pin_seeds = []
for n, case in enumerate(pin["cases"]):
    for p in case["proofs"]:
        i = p["pin_index"]
        pin_seeds.append(bytes.fromhex(pin["pin_root"]) + bytes([n, i >> 16 & 255, i >> 8 & 255, i & 255])
                         + (p["counter"] & 0xFFFFFFFF).to_bytes(4, "big") + bytes.fromhex(case["verifier"]) * 2)
write("pin_keys", pin_seeds)
print("seeds written to", root / "seeds")
