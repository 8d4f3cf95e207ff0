#!/usr/bin/env python3
"""Independent implementation of the ZofToken device protocol v1 (SPEC.md),
written from SPEC.md alone, that recomputes every vector in ../vectors/*.json.

Requires: pip install blake3 cryptography argon2-cffi
Usage:    python3 verify_vectors.py          (no arguments)

Prints one line per check group and ends with "N passed, M failed";
exits 1 if any check failed.
"""

import base64
import hashlib
import hmac
import json
import re
import struct
import sys
import urllib.parse
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

# ---------------------------------------------------------------------------
# Check bookkeeping
# ---------------------------------------------------------------------------


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self._group = None
        self._gp = self._gf = 0
        self._msgs = []

    def group(self, name):
        self.end_group()
        self._group, self._gp, self._gf, self._msgs = name, 0, 0, []

    def end_group(self):
        if self._group is None:
            return
        status = "ok  " if self._gf == 0 else "FAIL"
        print(f"[{status}] {self._group}: {self._gp} passed, {self._gf} failed")
        for m in self._msgs:
            print(f"         - {m}")
        self._group = None

    def eq(self, what, got, want):
        if got == want:
            self.passed += 1
            self._gp += 1
        else:
            self.failed += 1
            self._gf += 1
            self._msgs.append(f"{what}: got {_show(got)}, want {_show(want)}")

    def true(self, what, cond, detail=""):
        self.eq(what + (f" ({detail})" if detail else ""), bool(cond), True)


def _show(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return repr(v)


C = Checks()
H = bytes.fromhex


def u8(n):
    return struct.pack(">B", n)


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)  # Notation: integers are big-endian


def group4(s):
    """§11.1 / §12.2: show symbols in groups of four separated by '-'."""
    return "-".join(s[i:i + 4] for i in range(0, len(s), 4))


# ---------------------------------------------------------------------------
# §3.1 Key schedule: context strings and BLAKE3 helpers
# ---------------------------------------------------------------------------

CTX = {
    "token_id": "zoftoken 2026-11-23 v1 token id",
    "pairing_id": "zoftoken 2026-11-23 v1 pairing id",
    "enrollment_d2s": "zoftoken 2026-11-23 v1 enrollment device-to-server",
    "enrollment_s2d": "zoftoken 2026-11-23 v1 enrollment server-to-device",
    "token_secret": "zoftoken 2026-11-23 v1 token secret",
    "d2s": "zoftoken 2026-11-23 v1 device-to-server",
    "s2d": "zoftoken 2026-11-23 v1 server-to-device",
    "otp": "zoftoken 2026-11-23 v1 one-time codes",
    "offline": "zoftoken 2026-11-23 v1 offline codes",
    "manual_check": "zoftoken 2026-11-23 v1 manual code check",
    "pin_root_pad": "zoftoken 2026-11-23 v1 pin root pad",
    "pin_seal": "zoftoken 2026-11-23 v1 pin seal",
}


def derive(ctx_name, material):
    """Notation: BLAKE3-derive(ctx, m), 32-byte output."""
    return blake3(material, derive_key_context=CTX[ctx_name]).digest()


def keyed(key, msg, length=32):
    """Notation: BLAKE3-keyed(k, m); length > 32 reads the extendable output."""
    return blake3(msg, key=key).digest(length=length)


def token_keys(K):
    """§3.1/§3.2: the keys derived from the token secret K."""
    return {n: derive(n, K) for n in ("d2s", "s2d", "otp", "offline")}


# ---------------------------------------------------------------------------
# §2 Header, token id
# ---------------------------------------------------------------------------

VERSION = 1
TYPES = {
    "PAIR_INIT": 0x01, "PAIR_COMPLETE": 0x02, "OPEN": 0x03, "CLOSE": 0x04,
    "STATUS": 0x05, "TIME_SYNC": 0x06, "TX_FETCH": 0x07, "TX_APPROVE": 0x08,
    "TX_DENY": 0x09, "CHANGE_PIN": 0x0A,
}
# §7.1 exact lengths: type -> (request body, reply body)
BODY_LEN = {
    0x01: (112, 112), 0x02: (104, 20), 0x03: (32, 20), 0x04: (24, 20),
    0x05: (24, 20), 0x06: (24, 20), 0x07: (246, 246), 0x08: (48, 40),
    0x09: (48, 40), 0x0A: (120, 20),
}
# §7.1 table, datagram columns as printed (checked against 32 + body + 16)
DATAGRAM_LEN = {
    0x01: (160, 160), 0x02: (152, 68), 0x03: (80, 68), 0x04: (72, 68),
    0x05: (72, 68), 0x06: (72, 68), 0x07: (294, 294), 0x08: (96, 88),
    0x09: (96, 88), 0x0A: (168, 68),
}
HEADER_LEN, TAG_LEN, MAX_DATAGRAM = 32, 16, 1200


def token_id(service, username):
    """§2.2"""
    s, u = service.encode("utf-8"), username.encode("utf-8")
    return derive("token_id", u64(len(s)) + s + u64(len(u)) + u)[:16]


def header(typ, epoch, tid, counter):
    """§2.1: version u8 | type u8 | flags u16 | epoch u32 | token_id [16] | counter u64"""
    return u8(VERSION) + u8(typ) + u16(0) + u32(epoch) + tid + u64(counter)


def parse_header(d):
    return {
        "version": d[0], "type": d[1],
        "flags": struct.unpack(">H", d[2:4])[0],
        "epoch": struct.unpack(">I", d[4:8])[0],
        "token_id": d[8:24],
        "counter": struct.unpack(">Q", d[24:32])[0],
    }


def cheap_checks(d, is_reply):
    """§9.1 cheap checks, in order; returns None if OK, else the reason."""
    if len(d) > MAX_DATAGRAM:
        return "too large"
    if len(d) < HEADER_LEN:
        return "no header"
    h = parse_header(d)
    if h["version"] != VERSION:
        return "version"
    req_type = h["type"] & 0x7F
    if (h["type"] & 0x80 != 0) != is_reply or req_type not in BODY_LEN:
        return "type"
    if h["flags"] != 0:
        return "flags"
    if (h["epoch"] == 0) != (not is_reply):
        return "epoch"
    body_len = BODY_LEN[req_type][1 if is_reply else 0]
    if len(d) != HEADER_LEN + body_len + TAG_LEN:
        return "length"
    if h["counter"] == 0:
        return "counter"
    return None


# ---------------------------------------------------------------------------
# §4 AEAD
# ---------------------------------------------------------------------------


def nonce(epoch, counter):
    """§4.1: epoch (u32) ‖ counter (u64)"""
    return u32(epoch) + u64(counter)


def seal(key, hdr, body):
    """§4.1: header ‖ ChaCha20-Poly1305(body, aad=header) ‖ tag"""
    h = parse_header(hdr)
    return hdr + ChaCha20Poly1305(key).encrypt(nonce(h["epoch"], h["counter"]), body, hdr)


def unseal(key, datagram):
    """§4.1/§4.2: returns (header dict, body) or None if the tag fails."""
    hdr = datagram[:HEADER_LEN]
    h = parse_header(hdr)
    try:
        body = ChaCha20Poly1305(key).decrypt(
            nonce(h["epoch"], h["counter"]), datagram[HEADER_LEN:], hdr)
    except InvalidTag:
        return None
    return h, body


# ---------------------------------------------------------------------------
# §5 Pairing
# ---------------------------------------------------------------------------


def enrollment_keys(E):
    """§5.1: pairing id and the two enrollment keys, from E."""
    return {
        "pairing_id": derive("pairing_id", E)[:16],
        "d2s": derive("enrollment_d2s", E),
        "s2d": derive("enrollment_s2d", E),
    }


def x25519_keypair(random32):
    """§5.2 / RFC 7748 (from_private_bytes clamps the scalar)."""
    sk = X25519PrivateKey.from_private_bytes(random32)
    from cryptography.hazmat.primitives import serialization as ser
    pk = sk.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return sk, pk


def pairing_secrets(own_sk, peer_pk, pairing_id, device_public, server_public):
    """§5.4: (K, pad), both from shared ‖ pairing_id ‖ device_public ‖ server_public."""
    shared = own_sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    if shared == bytes(32):
        raise ValueError("all-zero shared secret")
    material = shared + pairing_id + device_public + server_public
    return derive("token_secret", material), derive("pin_root_pad", material)


def xor(a, b):
    assert len(a) == len(b)
    return bytes(x ^ y for x, y in zip(a, b))


def pair_init_body(device_time_ms, device_public):
    """§5.2 PAIR_INIT request body: time ‖ device_public ‖ zero [72] (112 bytes)."""
    return u64(device_time_ms) + device_public + bytes(72)


def pair_init_reply_body(status, server_public, tid, otp_length, otp_alphabet,
                         otp_period_s, window_s, service_flags, pin_root_sealed):
    """§5.3 PAIR_INIT reply body (112 bytes)."""
    return (status + server_public + tid + u8(otp_length) + u8(otp_alphabet)
            + u16(otp_period_s) + u32(window_s) + u8(service_flags) + bytes(3)
            + pin_root_sealed)


def verifier_block(pin_verifier, duress_verifier, flags):
    """§5.5 verifier block (72 bytes, before sealing)."""
    return pin_verifier + duress_verifier + u8(flags) + bytes(7)


def verifier_block_ok(block):
    """§5.5/§6.3: flags has no unknown bits, zero bytes are zero, no duress verifier
    unless bit 0 is set."""
    flags = block[64]
    if len(block) != 72 or flags & 0xFE or block[65:72] != bytes(7):
        return False
    return not (flags & 1 == 0 and block[32:64] != bytes(32))


def pair_complete_body(device_time_ms, pin_index, sealed_verifiers):
    """§5.5 PAIR_COMPLETE request body (104 bytes):
    device_time_ms ‖ pin_index ‖ zero [4] ‖ sealed verifier block [88]."""
    return u64(device_time_ms) + u32(pin_index) + bytes(4) + sealed_verifiers


# ---------------------------------------------------------------------------
# §6 PIN handling
# ---------------------------------------------------------------------------

_verifier_cache = {}


def pin_verifier(pin, tid):
    """§6.1 Argon2id(pin, "zoftoken-pin-v1" ‖ token_id, m=19456 KiB, t=2, p=1, 32 bytes, v=0x13)"""
    k = (pin, tid)
    if k not in _verifier_cache:
        _verifier_cache[k] = hash_secret_raw(
            secret=pin.encode("utf-8"), salt=b"zoftoken-pin-v1" + tid,
            time_cost=2, memory_cost=19456, parallelism=1, hash_len=32,
            type=Type.ID, version=0x13)
    return _verifier_cache[k]


PIN_INDICES = 1 << 24  # §6.3: 0 ≤ p < 2^24


def pin_child(node, depth, digit):
    """§6.3 child(N, depth, digit) = BLAKE3-keyed(N, u8(depth) ‖ u8(digit))"""
    return keyed(node, u8(depth) + u8(digit))


def pin_digits(p):
    """§6.3: the digits of p as three bytes, most significant first."""
    return p >> 16, (p >> 8) & 255, p & 255


def pin_key(root, p):
    """§6.3 M_p = child(child(child(R, 1, p >> 16), 2, (p >> 8) & 255), 3, p & 255)"""
    if not 0 <= p < PIN_INDICES:
        raise ValueError("pin index out of range")
    d1, d2, d3 = pin_digits(p)
    return pin_child(pin_child(pin_child(root, 1, d1), 2, d2), 3, d3)


class PinKeyRing:
    """§6.3 PIN key ring, kept as SPEC describes it: for the next unused index q with
    digits (d1, d2, d3), the depth-1 nodes d1+1 … 255, the depth-2 nodes d2+1 … 255 under
    d1 and the leaves d3 … 255 under (d1, d2). Taking q removes its leaf; a group that runs
    out is refilled by expanding (and erasing) the next node one level up."""

    def __init__(self, root):
        # lists of (digit, key) in increasing digit order
        self.l1 = [(d, pin_child(root, 1, d)) for d in range(256)]
        self.l2, self.l3 = [], []
        self.q = 0
        self._refill()

    def _refill(self):
        if self.l3:
            return
        if not self.l2:
            if not self.l1:
                return                               # every index used
            d1, n1 = self.l1.pop(0)                  # expand, then erase, the depth-1 node
            self.l2 = [(d, pin_child(n1, 2, d)) for d in range(256)]
        d2, n2 = self.l2.pop(0)                      # expand, then erase, the depth-2 node
        self.l3 = [(d, pin_child(n2, 3, d)) for d in range(256)]

    def take(self):
        """Use the next index: returns (p, M_p) and removes M_p from the ring."""
        if self.q >= PIN_INDICES:
            raise ValueError("every PIN index used; pair again")
        d3, key = self.l3.pop(0)
        p = self.q
        assert d3 == p & 255
        self.q += 1
        self._refill()
        return p, key

    def encode(self):
        """§6.3 canonical encoding: u32(q) ‖ keys, depth 1 first, each group by digit."""
        if self.q >= PIN_INDICES:
            return u32(PIN_INDICES)
        return u32(self.q) + b"".join(k for _, k in self.l1 + self.l2 + self.l3)


def ring_encoding_direct(root, q):
    """§6.3 canonical encoding for next unused index q, computed straight from the
    definition (the set of nodes covering the unused indices q … 2^24 − 1)."""
    if q >= PIN_INDICES:
        return u32(PIN_INDICES)
    d1, d2, d3 = pin_digits(q)
    n1 = pin_child(root, 1, d1)
    n2 = pin_child(n1, 2, d2)
    return (u32(q)
            + b"".join(pin_child(root, 1, d) for d in range(d1 + 1, 256))
            + b"".join(pin_child(n1, 2, d) for d in range(d2 + 1, 256))
            + b"".join(pin_child(n2, 3, d) for d in range(d3, 256)))


def pin_proof(verifier, m_p, typ, tid, counter):
    """§6.3 first16(BLAKE3-keyed(verifier, M_p ‖ type ‖ token_id ‖ counter))"""
    return keyed(verifier, m_p + u8(typ) + tid + u64(counter))[:16]


def pin_seal_key(m_p):
    """§6.3 BLAKE3-derive("… pin seal", M_p)"""
    return derive("pin_seal", m_p)


def seal_verifiers(m_p, hdr, block):
    """§6.3: ChaCha20-Poly1305 under the pin seal key, nonce 0 ‖ counter, AAD = header."""
    counter = parse_header(hdr)["counter"]
    return ChaCha20Poly1305(pin_seal_key(m_p)).encrypt(nonce(0, counter), block, hdr)


def open_verifiers(m_p, hdr, sealed):
    """§6.3: the verifier block, or None if it does not open."""
    counter = parse_header(hdr)["counter"]
    try:
        return ChaCha20Poly1305(pin_seal_key(m_p)).decrypt(nonce(0, counter), sealed, hdr)
    except InvalidTag:
        return None


# ---------------------------------------------------------------------------
# §7 Messages (bodies)
# ---------------------------------------------------------------------------


def status_block(status, state, attempts_left, open_until_ms, server_time_ms):
    """§7.2 (20 bytes)"""
    return (u8(status) + u8(state) + u8(attempts_left) + u8(0)
            + u64(open_until_ms) + u64(server_time_ms))


def parse_status_block(b):
    return {
        "status": b[0], "state": b[1], "attempts_left": b[2], "_zero": b[3],
        "open_until_ms": struct.unpack(">Q", b[4:12])[0],
        "server_time_ms": struct.unpack(">Q", b[12:20])[0],
    }


def status_from_fields(f):
    return status_block(f["status"], f["state"], f["attempts_left"],
                        f["open_until_ms"], f["server_time_ms"])


def request_body(typ, f, proof=None, sealed=None):
    """§5.5, §7.5–§7.11 request bodies from their fields (proof and sealed verifier
    block computed by the caller, §6.3)."""
    t = u64(f["device_time_ms"])
    if typ == 0x02:                                   # §5.5 PAIR_COMPLETE
        return pair_complete_body(f["device_time_ms"], f["pin_index"], sealed)
    if typ == 0x03:                                   # §7.5 OPEN
        return t + u32(f["pin_index"]) + bytes(4) + proof
    if typ in (0x04, 0x05, 0x06):                     # §7.6–§7.8
        return t + bytes(16)
    if typ == 0x07:                                   # §7.9 TX_FETCH
        return t + bytes(238)
    if typ == 0x08:                                   # §7.10 TX_APPROVE
        return t + H(f["tx_id"]) + u32(f["pin_index"]) + bytes(4) + proof
    if typ == 0x09:                                   # §7.10 TX_DENY: pin_index, proof zero
        return t + H(f["tx_id"]) + u32(0) + bytes(4) + bytes(16)
    if typ == 0x0A:                                   # §7.11 CHANGE_PIN
        return t + u32(f["pin_index"]) + bytes(4) + proof + sealed
    raise ValueError(typ)


# §6.3: offset of pin_index in the request bodies that carry one
PIN_INDEX_OFFSET = {0x02: 8, 0x03: 8, 0x08: 24, 0x0A: 8}
# §5.5/§7.11: offset of the sealed verifier block
SEALED_OFFSET = {0x02: 16, 0x0A: 32}


def reply_body(typ, f):
    """§7.2, §7.9, §7.10 reply bodies from their fields."""
    if typ == 0x07:                                   # §7.9 TX_FETCH reply
        st = status_from_fields(f["status"])
        msg = f.get("message", "").encode("utf-8")
        tx_id = H(f["tx_id"]) if "tx_id" in f else bytes(16)
        return (st + tx_id + u64(f.get("tx_expires_ms", 0)) + u16(len(msg))
                + msg + bytes(200 - len(msg)))
    if typ in (0x08, 0x09):                           # §7.10 reply
        return status_from_fields(f["status"]) + H(f["tx_id"]) + u8(f["tx_state"]) + bytes(3)
    return status_from_fields(f)                      # status block only


def body_zero_fields_ok(typ, body, is_reply):
    """§7.1: zero fields are zero, enumerations known, §5.5 / §7.9 extra rules."""
    if is_reply:
        sb = parse_status_block(body[:20])
        if sb["_zero"] != 0 or sb["status"] > 5 or sb["state"] > 3 or sb["attempts_left"] > 3:
            return False
        if typ == 0x01:                               # §5.3 (pin_root_sealed: any bytes)
            return body[77:80] == bytes(3) and body[69] in (0, 1) and body[76] & 0xFE == 0
        if typ == 0x07:
            n = struct.unpack(">H", body[44:46])[0]
            if n > 200 or body[46 + n:246] != bytes(246 - 46 - n):
                return False
            try:
                body[46:46 + n].decode("utf-8")
            except UnicodeDecodeError:
                return False
            return True
        if typ in (0x08, 0x09):
            return body[37:40] == bytes(3) and body[36] <= 3
        return True
    if typ == 0x01:
        return body[40:112] == bytes(72)
    if typ in PIN_INDEX_OFFSET:                       # §6.3: pin_index < 2^24, then zero [4]
        o = PIN_INDEX_OFFSET[typ]
        return (struct.unpack(">I", body[o:o + 4])[0] < PIN_INDICES
                and body[o + 4:o + 8] == bytes(4))
    if typ in (0x04, 0x05, 0x06):
        return body[8:24] == bytes(16)
    if typ == 0x07:
        return body[8:] == bytes(238)
    if typ == 0x09:                                   # §7.10: pin_index, zero, proof all zero
        return body[24:48] == bytes(24)
    return True


def server_receive(datagram, d2s_key, pin_root):
    """The server's path of §9.2 for a request of a known token, up to the point where
    it may act: cheap checks, tag, zero fields, and for PAIR_COMPLETE and CHANGE_PIN the
    verifier block opened under M_p of the named index. (Replay and freshness are checked
    separately.) Returns (None, body, block) or (reason, None, None)."""
    why = cheap_checks(datagram, False)
    if why:
        return why, None, None
    opened = unseal(d2s_key, datagram)
    if opened is None:
        return "tag", None, None
    h, body = opened
    typ = h["type"]
    if not body_zero_fields_ok(typ, body, False):
        return "body", None, None
    block = None
    if typ in SEALED_OFFSET:
        p = struct.unpack(">I", body[8:12])[0]
        o = SEALED_OFFSET[typ]
        block = open_verifiers(pin_key(pin_root, p), datagram[:HEADER_LEN], body[o:o + 88])
        if block is None:
            return "verifiers do not open", None, None
        if not verifier_block_ok(block):
            return "verifier block", None, None
    return None, body, block


# ---------------------------------------------------------------------------
# §8 Replay and freshness
# ---------------------------------------------------------------------------

WINDOW = 1024
MAX_SKEW_MS = 90_000


class ReplayWindow:
    """§8.1: highest accepted counter H and a bitmap of H-1023 … H (RFC 6479 style)."""

    def __init__(self):
        self.H = 0
        self.bitmap = 0  # bit i set <=> counter H - i accepted

    def accept(self, c):
        if c > self.H:
            shift = c - self.H
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << WINDOW) - 1)
            self.H = c
            return True
        d = self.H - c
        if d < WINDOW and not (self.bitmap >> d) & 1:
            self.bitmap |= 1 << d
            return True
        return False


def fresh(device_time_ms, server_time_ms, offset):
    """§8.3"""
    return abs(device_time_ms - (server_time_ms + offset)) <= MAX_SKEW_MS


# ---------------------------------------------------------------------------
# §10 One-time codes, §10.5 TOTP
# ---------------------------------------------------------------------------

DIGITS = "0123456789"
BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # §10.1
ALPHABETS = {"digits": DIGITS, "base32": BASE32, 0: DIGITS, 1: BASE32}


def sample_symbols(key, msg, count, alphabet):
    """§10.2 rejection sampling over the BLAKE3-keyed extendable output."""
    n = len(alphabet)
    limit = 256 - (256 % n)
    out, length = [], 64
    while True:
        out = []
        for b in keyed(key, msg, length):
            if b < limit:
                out.append(alphabet[b % n])
                if len(out) == count:
                    return "".join(out)
        length *= 2


def otp_step(t_ms, period_s):
    """§10.2 step = floor(t_ms / 1000 / period)"""
    return t_ms // (1000 * period_s)


def one_time_code(otp_key, verifier, t_ms, period_s, length, alphabet):
    """§10.2"""
    return sample_symbols(otp_key, verifier + u64(otp_step(t_ms, period_s)), length, alphabet)


def totp(seed, unix_s, digits, algorithm, period=30):
    """§10.5: RFC 6238 / RFC 4226 dynamic truncation."""
    mac = hmac.new(seed, u64(unix_s // period), getattr(hashlib, algorithm.lower())).digest()
    o = mac[-1] & 0x0F
    v = struct.unpack(">I", mac[o:o + 4])[0] & 0x7FFFFFFF
    return str(v % 10 ** digits).zfill(digits)


def pct(s):
    """§10.5 / §12.1: percent-encode every byte but A-Z a-z 0-9 - . _ ~"""
    return urllib.parse.quote(s.encode("utf-8"), safe="-._~")


def otpauth_uri(issuer, account, secret, algorithm="SHA1", digits=6, period=30):
    """§10.5"""
    b32 = base64.b32encode(secret).decode().rstrip("=")
    return (f"otpauth://totp/{pct(issuer)}:{pct(account)}?secret={b32}&issuer={pct(issuer)}"
            f"&algorithm={algorithm}&digits={digits}&period={period}")


def parse_otpauth(uri):
    m = re.fullmatch(r"otpauth://totp/([^:?]*):([^?]*)\?(.*)", uri)
    issuer, account = urllib.parse.unquote(m.group(1)), urllib.parse.unquote(m.group(2))
    q = dict(p.split("=", 1) for p in m.group(3).split("&"))
    sec = q["secret"]
    secret = base64.b32decode(sec + "=" * (-len(sec) % 8))
    return {"issuer": issuer, "account": account, "secret": secret,
            "q_issuer": urllib.parse.unquote(q["issuer"]), "algorithm": q["algorithm"],
            "digits": int(q["digits"]), "period": int(q["period"])}


# ---------------------------------------------------------------------------
# §11 Offline challenge and response
# ---------------------------------------------------------------------------


def normalise(code):
    """§11.1: remove spaces and '-', upper-case, O->0, I/L->1; other symbols are errors."""
    s = code.replace(" ", "").replace("-", "").upper()
    s = s.replace("O", "0").replace("I", "1").replace("L", "1")
    if any(ch not in BASE32 for ch in s):
        raise ValueError(f"invalid symbol in {code!r}")
    return s


def validation_code(random_bytes):
    """§11.1: base32[r mod 32] per random byte, shown in groups of four."""
    return group4("".join(BASE32[r % 32] for r in random_bytes))


def offline_response(offline_key, verifier, code):
    """§11.2 R = first L symbols of BLAKE3-keyed(offline_key, verifier ‖ u8(L) ‖ code)"""
    c = normalise(code)
    L = len(c)
    return group4(sample_symbols(offline_key, verifier + u8(L) + c.encode("ascii"), L, BASE32))


# ---------------------------------------------------------------------------
# §12 Enrollment links and codes
# ---------------------------------------------------------------------------


def manual_code(random19):
    """§12.2: 19 symbols base32[r mod 32], then the check symbol."""
    s = "".join(BASE32[r % 32] for r in random19)
    return group4(s + manual_check_symbol(s))


def manual_check_symbol(first19):
    return BASE32[derive("manual_check", first19.encode("ascii"))[0] >> 3]


def manual_code_secret(code):
    """§12.2: normalise, check length and check symbol, E = the 20 symbols as ASCII."""
    s = normalise(code)
    if len(s) != 20 or manual_check_symbol(s[:19]) != s[19]:
        raise ValueError("mistyped code")
    return s.encode("ascii")


def b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def build_deeplink(secret, service, endpoints, details=None):
    """§12.1"""
    parts = [("v", "1"), ("s", b64url(secret)), ("service", service)]
    parts += [("ep", ep) for ep in endpoints]
    if details is not None:
        parts.append(("details", details))
    return "zoftoken://enroll?" + "&".join(f"{k}={pct(v)}" for k, v in parts)


_DNS = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                  r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def valid_endpoint(ep):
    import ipaddress
    m = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):([0-9]{1,5})", ep)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        return False
    host = m.group(1)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return True
        except ValueError:
            return False
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    return bool(_DNS.fullmatch(host))


def parse_deeplink(uri):
    """§12.1 parser with the MUST-reject rules; raises ValueError."""
    if len(uri.encode()) > 2048:
        raise ValueError("too long")
    prefix = "zoftoken://enroll?"
    if not uri.startswith(prefix):
        raise ValueError("scheme")
    params = {}
    for part in uri[len(prefix):].split("&"):
        k, _, v = part.partition("=")
        params.setdefault(k, []).append(urllib.parse.unquote(v, errors="strict"))
    for k in ("v", "s", "service"):
        if len(params.get(k, [])) != 1:
            raise ValueError(f"missing or repeated {k}")
    if params["v"][0] != "1":
        raise ValueError("version")
    s = params["s"][0]
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", s):
        raise ValueError("secret")
    secret = base64.urlsafe_b64decode(s + "=")
    if len(secret) != 32 or b64url(secret) != s:
        raise ValueError("secret")
    service = params["service"][0]
    if not 1 <= len(service.encode()) <= 255:
        raise ValueError("service")
    eps = params.get("ep", [])
    if not 1 <= len(eps) <= 16 or not all(valid_endpoint(e) for e in eps):
        raise ValueError("endpoint")
    details = params.get("details", [None])[-1]
    if details is not None and not re.match(r"https?://", details):
        raise ValueError("details")
    return {"secret": secret, "service": service, "endpoints": eps, "details": details}


# ===========================================================================
# Vector files
# ===========================================================================


def load(name):
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def check_keys():
    """keys.json: §2.2 token ids, §3 key schedule, §5.1 enrollment, §4.1 nonces."""
    v = load("keys.json")

    C.group("keys.json §3.1 context strings")
    for name, ctx in v["contexts"].items():
        C.eq(f"context {name}", CTX.get(name), ctx)

    C.group("keys.json §2.2 token ids")
    for t in v["token_ids"]:
        C.eq(f"token_id({t['service']!r},{t['username']!r})",
             token_id(t["service"], t["username"]), H(t["token_id"]))

    C.group("keys.json §5.1/§12.2 enrollments (pairing id, enrollment keys)")
    for e in v["enrollments"]:
        E = H(e["enrollment_secret"])
        if e["kind"] == "manual code":
            C.eq("manual code -> E", manual_code_secret(e["manual_code"]), E)
        else:
            C.eq("deeplink E is 32 bytes", len(E), 32)
        k = enrollment_keys(E)
        C.eq(f"{e['kind']} pairing_id", k["pairing_id"], H(e["pairing_id"]))
        C.eq(f"{e['kind']} enrollment d2s", k["d2s"], H(e["enrollment_d2s_key"]))
        C.eq(f"{e['kind']} enrollment s2d", k["s2d"], H(e["enrollment_s2d_key"]))

    C.group("keys.json §3.2 token keys")
    tk = v["token_keys"]
    keys = token_keys(H(tk["token_secret"]))
    for n, field in (("d2s", "d2s_key"), ("s2d", "s2d_key"), ("otp", "otp_key"),
                     ("offline", "offline_key")):
        C.eq(field, keys[n], H(tk[field]))

    C.group("keys.json §4.1 nonces")
    for n in v["nonces"]:
        C.eq(f"nonce(epoch={n['epoch']},counter={n['counter']})",
             nonce(n["epoch"], n["counter"]), H(n["nonce"]))


def check_pin():
    """pin.json: §6.1 verifiers, §6.3 PIN keys, key rings, proofs, sealed verifiers."""
    v = load("pin.json")
    C.group("pin.json §6.1 Argon2id parameters")
    a = v["argon2id"]
    C.eq("params", (a["iterations"], a["memory_kib"], a["output_len"], a["parallelism"],
                    a["version"]), (2, 19456, 32, 1, "0x13"))
    tid = H(v["token_id"])
    R = H(v["pin_root"])

    C.group("pin.json §6.3 PIN keys M_p")
    for k in v["pin_keys"]:
        C.eq(f"M_{k['index']}", pin_key(R, k["index"]), H(k["key"]))
    for bad in (PIN_INDICES, -1):
        try:
            pin_key(R, bad)
            C.true(f"index {bad} has no PIN key", False)
        except ValueError:
            C.true(f"index {bad} has no PIN key", True)

    C.group("pin.json §6.3 PIN key rings (canonical encoding, BLAKE3 and length)")
    want = {r["indices_used"]: r for r in v["rings"]}
    listed = {k["index"]: H(k["key"]) for k in v["pin_keys"]}
    ring = PinKeyRing(R)
    used = 0
    last = max(want)
    while True:
        if used in want:
            enc = ring.encode()
            r = want[used]
            C.eq(f"ring after {used} used: q", ring.q, used)
            C.eq(f"ring after {used} used: length", len(enc), r["encoding_len"])
            C.eq(f"ring after {used} used: BLAKE3", blake3(enc).hexdigest(), r["encoding_blake3"])
            C.eq(f"ring after {used} used: kept ring == definition", enc,
                 ring_encoding_direct(R, used))
            C.true(f"ring after {used} used: at most 766 keys", (len(enc) - 4) // 32 <= 766)
            C.true(f"ring after {used} used: no used key in it",
                   all(listed[i] not in enc[4:] for i in listed if i < used))
        if used >= last:
            break
        p, key = ring.take()
        if p in listed:
            C.eq(f"key taken from the ring for index {p} == M_{p}", key, listed[p])
        used += 1
    # the end of the tree: the last index, then u32(2^24) alone
    C.eq("ring before the last index", ring_encoding_direct(R, PIN_INDICES - 1),
         u32(PIN_INDICES - 1) + pin_key(R, PIN_INDICES - 1))
    C.eq("ring after the last index", ring_encoding_direct(R, PIN_INDICES), u32(PIN_INDICES))
    # a ring walked across depth-1 and depth-2 boundaries agrees with the definition
    for start in (65536 - 2, PIN_INDICES - 257):
        rr = PinKeyRing(R)
        d1, d2, d3 = pin_digits(start)      # fast-forward a kept ring to `start`
        n1 = pin_child(R, 1, d1)
        n2 = pin_child(n1, 2, d2)
        rr.l1 = [(d, pin_child(R, 1, d)) for d in range(d1 + 1, 256)]
        rr.l2 = [(d, pin_child(n1, 2, d)) for d in range(d2 + 1, 256)]
        rr.l3 = [(d, pin_child(n2, 3, d)) for d in range(d3, 256)]
        rr.q = start
        ok = True
        while rr.q < PIN_INDICES and rr.q < start + 300:
            p, key = rr.take()
            ok = ok and key == pin_key(R, p) and rr.encode() == ring_encoding_direct(R, rr.q)
        C.true(f"ring walked from {start} to {rr.q} == definition", ok)
    C.eq("last walk reached the end: u32(2^24) alone", rr.encode(), u32(PIN_INDICES))
    try:
        rr.take()
        C.true("no index after the last", False)
    except ValueError:
        C.true("no index after the last", True)

    C.group("pin.json §6.1 verifiers / §6.3 proofs")
    for case in v["cases"]:
        ver = pin_verifier(case["pin"], tid)
        C.eq(f"verifier({case['pin']!r})", ver, H(case["verifier"]))
        for p in case["proofs"]:
            m_p = pin_key(R, p["pin_index"])
            C.eq(f"M_{p['pin_index']} for proof", m_p, H(p["pin_key"]))
            C.eq(f"proof({case['pin']!r},{p['type']},{p['counter']},p={p['pin_index']})",
                 pin_proof(ver, m_p, TYPES[p["type"]], tid, p["counter"]), H(p["proof"]))

    C.group("pin.json §6.3 sealed verifier block")
    sv = v["sealed_verifiers"]
    hdr, block, sealed = H(sv["header"]), H(sv["block"]), H(sv["sealed"])
    m_p = pin_key(R, sv["pin_index"])
    C.eq("M_p", m_p, H(sv["pin_key"]))
    C.eq("seal key", pin_seal_key(m_p), H(sv["seal_key"]))
    C.eq("header is a request header (§2.1)", (hdr[0], hdr[2:8], len(hdr)),
         (VERSION, bytes(6), 32))
    C.eq("header token_id", hdr[8:24], tid)
    C.true("block is a valid verifier block (§5.5)", verifier_block_ok(block))
    C.eq("block length", len(block), 72)
    C.eq("sealed (seal)", seal_verifiers(m_p, hdr, block), sealed)
    C.eq("sealed length", len(sealed), 88)
    C.eq("opened", open_verifiers(m_p, hdr, sealed), block)
    for i in (0, 71, 72, 87):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        C.eq(f"bit flipped in sealed byte {i} does not open",
             open_verifiers(m_p, hdr, bytes(bad)), None)
    h = parse_header(hdr)
    others = {
        "next counter": header(h["type"], 0, h["token_id"], h["counter"] + 1),
        "other type": header(0x02, 0, h["token_id"], h["counter"]),
        "other token": header(h["type"], 0, bytes(16), h["counter"]),
        "reply header": header(h["type"] | 0x80, 1, h["token_id"], h["counter"]),
    }
    for why, other in others.items():
        C.eq(f"{why} does not open", open_verifiers(m_p, other, sealed), None)
    C.eq("next index's key does not open",
         open_verifiers(pin_key(R, sv["pin_index"] + 1), hdr, sealed), None)


def check_datagram(label, key, datagram, want_hdr, want_body, is_reply):
    """Seal from (header, body) and compare; then run the receiver path and compare."""
    C.eq(f"{label} datagram (seal)", seal(key, want_hdr, want_body), datagram)
    C.eq(f"{label} cheap checks §9.1", cheap_checks(datagram, is_reply), None)
    opened = unseal(key, datagram)
    if opened is None:
        C.true(f"{label} tag verifies", False)
        return
    h, body = opened
    C.eq(f"{label} decrypted body", body, want_body)
    C.eq(f"{label} header", datagram[:HEADER_LEN], want_hdr)
    C.true(f"{label} zero fields/enums §7.1", body_zero_fields_ok(h["type"] & 0x7F, body, is_reply))
    # a flipped bit anywhere must make the tag fail (§4.2)
    bad = bytearray(datagram)
    bad[len(bad) // 2] ^= 1
    C.eq(f"{label} tampered datagram rejected", unseal(key, bytes(bad)), None)


def check_session():
    """session.json: §5 pairing, §7 every message, §10/§11 codes for the token."""
    v = load("session.json")
    E = H(v["enrollment_secret"])
    tid = H(v["token_id"])
    epoch = v["server_epoch"]

    # §12.1 deeplink: parse, compare with the session's fields, rebuild byte for byte
    C.group("session.json §12.1 deeplink")
    link = parse_deeplink(v["deeplink"])
    C.eq("deeplink secret == enrollment_secret", link["secret"], E)
    C.eq("deeplink service", link["service"], v["service"])
    C.eq("deeplink rebuilt", build_deeplink(link["secret"], link["service"],
                                            link["endpoints"], link["details"]), v["deeplink"])

    # §7.1 length table, every type (the session then checks each datagram against it)
    C.group("§7.1 length table")
    for typ, (req, rep_) in sorted(BODY_LEN.items()):
        C.eq(f"type {typ:#04x} datagram = 32 + body + 16", DATAGRAM_LEN[typ],
             (HEADER_LEN + req + TAG_LEN, HEADER_LEN + rep_ + TAG_LEN))
        C.true(f"type {typ:#04x} §1.5 reply not larger than request, §1.2 ≤ 1200",
               rep_ <= req and DATAGRAM_LEN[typ][0] <= MAX_DATAGRAM)
        for is_reply, n in ((False, DATAGRAM_LEN[typ][0]), (True, DATAGRAM_LEN[typ][1])):
            t = typ | (0x80 if is_reply else 0)
            hdr = header(t, 7 if is_reply else 0, bytes(16), 1)
            for delta in (-1, 1):
                d = hdr + bytes(n - HEADER_LEN + delta)
                C.eq(f"type {t:#04x} datagram of {n + delta} bytes dropped",
                     cheap_checks(d, is_reply), "length")
            C.eq(f"type {t:#04x} datagram of {n} bytes passes",
                 cheap_checks(hdr + bytes(n - HEADER_LEN), is_reply), None)

    # §2.2, §5.1
    C.group("session.json §2.2 token id, §5.1 pairing id")
    C.eq("token_id", token_id(v["service"], v["username"]), tid)
    ek = enrollment_keys(E)
    C.eq("pairing_id", ek["pairing_id"], H(v["pairing_id"]))

    # §5.2–§5.4 PAIR_INIT
    C.group("session.json §5.2–5.4 PAIR_INIT and token secret")
    pi = v["pair_init"]
    dsk, dpk = x25519_keypair(H(pi["device_ephemeral_random"]))
    ssk, spk = x25519_keypair(H(pi["server_ephemeral_random"]))
    C.eq("device_public", dpk, H(pi["device_public"]))
    C.eq("server_public", spk, H(pi["server_public"]))
    K_dev, pad_dev = pairing_secrets(dsk, spk, ek["pairing_id"], dpk, spk)
    K_srv, pad_srv = pairing_secrets(ssk, dpk, ek["pairing_id"], dpk, spk)
    C.eq("K (device side)", K_dev, H(pi["token_secret"]))
    C.eq("K (server side)", K_srv, H(pi["token_secret"]))
    C.eq("PIN root pad (device side)", pad_dev, H(pi["pin_root_pad"]))
    C.eq("PIN root pad (server side)", pad_srv, H(pi["pin_root_pad"]))
    C.true("pad is not K", pad_dev != K_dev)

    req_body = pair_init_body(pi["device_time_ms"], dpk)
    C.eq("PAIR_INIT request body", req_body, H(pi["request"]["body"]))
    req_hdr = header(0x01, 0, ek["pairing_id"], pi["counter"])
    check_datagram("PAIR_INIT request", ek["d2s"], H(pi["request"]["datagram"]),
                   req_hdr, req_body, False)
    for i in (40, 111):  # §5.2: the 72 bytes after device_public are zero
        bad = bytearray(req_body)
        bad[i] = 0x01
        C.eq(f"PAIR_INIT request with byte {i} non-zero rejected",
             body_zero_fields_ok(0x01, bytes(bad), False), False)

    rf = pi["reply"]["fields"]
    st = rf["status"]
    C.eq("PAIR_INIT reply status block as §5.3 prescribes",
         (st["status"], st["state"], st["attempts_left"], st["open_until_ms"]), (0, 0, 3, 0))
    C.eq("PAIR_INIT reply token_id", H(rf["token_id"]), tid)
    # §5.3 step 8 / §5.4: the server seals R with the pad; the device recovers R
    R = H(rf["pin_root"])
    sealed_root = xor(R, pad_srv)
    C.eq("pin_root_sealed = R XOR pad (server)", sealed_root, H(rf["pin_root_sealed"]))
    rep_body = pair_init_reply_body(status_from_fields(st), spk, H(rf["token_id"]),
                                    rf["otp_length"], rf["otp_alphabet"], rf["otp_period_s"],
                                    rf["window_s"], rf["service_flags"], sealed_root)
    C.eq("PAIR_INIT reply body", rep_body, H(pi["reply"]["body"]))
    rep_hdr = header(0x81, epoch, ek["pairing_id"], pi["counter"])
    check_datagram("PAIR_INIT reply", ek["s2d"], H(pi["reply"]["datagram"]),
                   rep_hdr, rep_body, True)
    # the device's side: open the reply and recover R from its pin_root_sealed field
    _, dev_body = unseal(ek["s2d"], H(pi["reply"]["datagram"]))
    R_dev = xor(dev_body[80:112], pad_dev)
    C.eq("R recovered by the device = pin_root_sealed XOR pad", R_dev, R)
    C.true("R is neither K nor pad", R_dev not in (K_dev, pad_dev))

    # §5.3 step 7: clock offset O = device_time_ms - server_time_ms
    offset = pi["device_time_ms"] - st["server_time_ms"]
    window_ms = rf["window_s"] * 1000
    keys = token_keys(H(pi["token_secret"]))

    # §5.5–§7.11: every message
    server_window = ReplayWindow()
    ring = PinKeyRing(R_dev)      # §5.4: the device builds its ring from R (and erases R)
    C.group("session.json §7 messages: bodies, sealed datagrams, decryption")
    sem = []  # semantic checks, reported in their own group
    pin_msgs = []  # PIN-bearing requests, for the body-rule checks below
    for m in v["messages"]:
        typ = TYPES[m["type"]]
        ctr = m["counter"]
        label = f"#{ctr} {m['type']}"
        f = m["request"]["fields"]
        hdr = header(typ, 0, tid, ctr)

        proof = sealed = m_p = None
        if typ in PIN_INDEX_OFFSET:  # §6.3: each PIN-bearing request takes the next index
            p, m_p = ring.take()
            C.eq(f"{label} pin_index = next unused index", p, f["pin_index"])
            C.eq(f"{label} M_p from the device's ring", m_p, H(f["pin_key"]))
            C.eq(f"{label} M_p from R (server side)", pin_key(R, f["pin_index"]), H(f["pin_key"]))
        else:
            C.true(f"{label} no PIN key for a request without PIN",
                   "pin_index" not in f and "pin_key" not in f)
        if "pin" in f:  # §6.3 PIN proof
            ver = pin_verifier(f["pin"], tid)
            proof = pin_proof(ver, m_p, typ, tid, ctr)
            C.eq(f"{label} proof", proof, H(f["proof"]))
        if typ == 0x02:  # §5.5 verifiers from the session PINs, sealed under M_p
            C.eq(f"{label} pin_verifier", pin_verifier(v["pins"]["pin"], tid), H(f["pin_verifier"]))
            C.eq(f"{label} duress_verifier", pin_verifier(v["pins"]["duress_pin"], tid),
                 H(f["duress_verifier"]))
            block = verifier_block(H(f["pin_verifier"]), H(f["duress_verifier"]), f["flags"])
            sealed = seal_verifiers(m_p, hdr, block)
        if typ == 0x0A:  # §7.11 new verifiers, sealed under the same M_p as the proof
            C.eq(f"{label} new_pin_verifier", pin_verifier(f["new_pin"], tid),
                 H(f["new_pin_verifier"]))
            C.eq(f"{label} new_duress_verifier", pin_verifier(f["new_duress_pin"], tid),
                 H(f["new_duress_verifier"]))
            block = verifier_block(H(f["new_pin_verifier"]), H(f["new_duress_verifier"]),
                                   f["flags"])
            sealed = seal_verifiers(m_p, hdr, block)

        body = request_body(typ, f, proof, sealed)
        C.eq(f"{label} request body", body, H(m["request"]["body"]))
        C.eq(f"{label} §7.1 request lengths", (len(body), len(H(m["request"]["datagram"]))),
             (BODY_LEN[typ][0], DATAGRAM_LEN[typ][0]))
        check_datagram(f"{label} request", keys["d2s"], H(m["request"]["datagram"]),
                       hdr, body, False)
        # the server's path: tag, body rules, and the verifier block opened under M_p of R
        why, sbody, sblock = server_receive(H(m["request"]["datagram"]), keys["d2s"], R)
        C.eq(f"{label} accepted by the server path (§9.2)", why, None)
        if typ in SEALED_OFFSET:
            C.eq(f"{label} verifier block opened by the server", sblock, block)
        if typ in PIN_INDEX_OFFSET or typ == 0x09:
            pin_msgs.append((label, typ, ctr, sbody))

        rf = m["reply"]["fields"]
        rbody = reply_body(typ, rf)
        C.eq(f"{label} reply body", rbody, H(m["reply"]["body"]))
        C.eq(f"{label} §7.1 reply lengths", (len(rbody), len(H(m["reply"]["datagram"]))),
             (BODY_LEN[typ][1], DATAGRAM_LEN[typ][1]))
        check_datagram(f"{label} reply", keys["s2d"], H(m["reply"]["datagram"]),
                       header(typ | 0x80, m["reply"]["epoch"], tid, ctr), rbody, True)
        C.true(f"{label} §1.5 reply not larger than request",
               len(H(m["reply"]["datagram"])) <= len(H(m["request"]["datagram"])))
        sem.append((label, typ, m, rf))

    # §6.3 the ring the device keeps after the session
    C.group("session.json §6.3 PIN key ring after the session")
    ra = v["ring_after_session"]
    C.eq("next unused index", ring.q, ra["next_index"])
    enc = ring.encode()
    C.eq("ring encoding BLAKE3", blake3(enc).hexdigest(), ra["encoding_blake3"])
    C.eq("ring == definition for its next index", enc, ring_encoding_direct(R, ring.q))
    C.eq("ring encoding length (the vector gives none): 4 + 32 × (255 + 255 + 250)",
         len(enc), 4 + 32 * (255 + 255 + 250))
    C.true("ring holds no key the session used",
           all(H(m["request"]["fields"]["pin_key"]) not in enc[4:]
               for m in v["messages"] if "pin_key" in m["request"]["fields"]))

    # §6.3/§7.1/§7.10 body rules for the new layouts, on the session's own requests:
    # mutate the body, seal it again under the right key, run the server's path.
    C.group("session.json §6.3/§7.1 body rules: pin_index, padding, TX_DENY, verifier block")
    cases = 0
    for label, typ, ctr, body in pin_msgs:
        hdr = header(typ, 0, tid, ctr)

        def verdict(b, h=hdr):
            return server_receive(seal(keys["d2s"], h, bytes(b)), keys["d2s"], R)[0]

        if typ in PIN_INDEX_OFFSET:
            o = PIN_INDEX_OFFSET[typ]
            for idx in (PIN_INDICES, PIN_INDICES + 1, 0xFFFFFFFF):
                b = bytearray(body)
                b[o:o + 4] = u32(idx)
                C.eq(f"{label} pin_index {idx:#x} rejected", verdict(b), "body")
            for i in range(4):
                b = bytearray(body)
                b[o + 4 + i] = 0x01
                C.eq(f"{label} padding byte {i} non-zero rejected", verdict(b), "body")
            if typ not in SEALED_OFFSET:
                # the largest index is well formed (the proof is then simply wrong)
                b = bytearray(body)
                b[o:o + 4] = u32(PIN_INDICES - 1)
                C.eq(f"{label} pin_index 2^24-1 well formed", verdict(b), None)
            else:
                # the verifier block is bound to M_p of the named index and to the header
                b = bytearray(body)
                b[o:o + 4] = u32(struct.unpack(">I", body[o:o + 4])[0] + 1)
                C.eq(f"{label} another pin_index: verifiers do not open", verdict(b),
                     "verifiers do not open")
                so = SEALED_OFFSET[typ]
                b = bytearray(body)
                b[so + 10] ^= 0x01
                C.eq(f"{label} bit flipped in the sealed block", verdict(b),
                     "verifiers do not open")
                h2 = header(typ, 0, tid, ctr + 1000)
                C.eq(f"{label} sealed block moved to another counter", verdict(body, h2),
                     "verifiers do not open")
                p = struct.unpack(">I", body[o:o + 4])[0]
                m_p = pin_key(R, p)
                good = open_verifiers(m_p, hdr, body[so:so + 88])
                bad_blocks = {
                    "flags bit 1": good[:64] + u8(good[64] | 0x02) + good[65:],
                    "zero byte 71 non-zero": good[:71] + b"\x01",
                    "duress verifier with bit 0 clear": good[:64] + u8(0) + good[65:],
                }
                for why, blk in bad_blocks.items():
                    b = bytearray(body)
                    b[so:so + 88] = seal_verifiers(m_p, hdr, blk)
                    C.eq(f"{label} verifier block {why} rejected", verdict(b), "verifier block")
                nod = bytes(32) + bytes(32) + u8(0) + bytes(7)  # no duress: bit 0 clear, zero
                b = bytearray(body)
                b[so:so + 88] = seal_verifiers(m_p, hdr, good[:32] + nod[32:])
                C.eq(f"{label} verifier block without duress accepted", verdict(b), None)
            cases += 1
        if typ == 0x09:  # §7.10: a deny names no PIN index and carries no proof
            for why, off, val in (("pin_index 1", 24, u32(1)), ("padding", 28, b"\x01"),
                                  ("proof byte", 32, b"\x01"), ("last proof byte", 47, b"\x01")):
                b = bytearray(body)
                b[off:off + len(val)] = val
                C.eq(f"{label} with {why} rejected", verdict(b), "body")
            cases += 1
    C.true("every PIN-bearing type and TX_DENY exercised",
           {t for _, t, _, _ in pin_msgs} >= {0x02, 0x03, 0x08, 0x09, 0x0A}, str(cases))

    # Semantic consistency of the session with §7/§8 rules
    C.group("session.json §7.5/§8 semantics (replay, freshness, open window)")
    for label, typ, m, rf in sem:
        st = rf["status"] if "status" in rf and isinstance(rf["status"], dict) else rf
        C.true(f"{label} §8.1 counter accepted", server_window.accept(m["counter"]))
        C.true(f"{label} §8.3 fresh", fresh(m["request"]["fields"]["device_time_ms"],
                                           st["server_time_ms"], offset))
        C.eq(f"{label} reply epoch == server_epoch", m["reply"]["epoch"], epoch)
        if typ == 0x03 and st["status"] == 0:
            # §7.5: open_until_ms = server_time_ms + window_s × 1000, "the same
            # server_time_ms as in the reply".
            C.eq(f"{label} §7.5 vector open_until_ms vs server_time_ms + window",
                 st["server_time_ms"] + window_ms, st["open_until_ms"])

    # §10 one-time codes for this token
    C.group("session.json §10 one-time codes")
    oc = v["one_time_codes"]
    C.eq("otp parameters match PAIR_INIT reply",
         (oc["length"], ALPHABETS[oc["alphabet"]], oc["period_s"]),
         (pi["reply"]["fields"]["otp_length"], ALPHABETS[pi["reply"]["fields"]["otp_alphabet"]],
          pi["reply"]["fields"]["otp_period_s"]))
    v_pin = pin_verifier(v["pins"]["pin"], tid)
    v_dur = pin_verifier(v["pins"]["duress_pin"], tid)
    for c in oc["codes"]:
        t = c["device_time_ms"]
        C.eq(f"step at {t}", otp_step(t, oc["period_s"]), c["step"])
        C.eq(f"code_pin at {t}", one_time_code(keys["otp"], v_pin, t, oc["period_s"],
                                               oc["length"], ALPHABETS[oc["alphabet"]]),
             c["code_pin"])
        C.eq(f"code_duress_pin at {t}", one_time_code(keys["otp"], v_dur, t, oc["period_s"],
                                                      oc["length"], ALPHABETS[oc["alphabet"]]),
             c["code_duress_pin"])

    # §11 offline exchange for this token (PIN = pins.pin, the PIN at pairing)
    C.group("session.json §11 offline exchange")
    off = v["offline"]
    C.eq("response_pin", offline_response(keys["offline"], v_pin, off["validation_code"]),
         off["response_pin"])
    C.eq("response_duress_pin", offline_response(keys["offline"], v_dur, off["validation_code"]),
         off["response_duress_pin"])


def check_codes():
    """codes.json: §10 one-time codes, §11 offline codes, §12.2 manual codes."""
    v = load("codes.json")
    C.group("codes.json §10.1 alphabets")
    C.eq("digits", v["alphabets"]["digits"], DIGITS)
    C.eq("base32", v["alphabets"]["base32"], BASE32)

    C.group("codes.json §10.3 validation: window, never twice, duress")
    ov = v["otp_validation"]
    otp_key, ver, dur = H(v["otp_key"]), H(v["verifier"]), H(v["duress_verifier"])
    last = None
    for a in ov["attempts"]:
        C.eq("last accepted step before", a["last_accepted_step_before"], last)
        accepted, pin = None, None
        # §10.3: try expected-1, expected, expected+1 with both verifiers; only steps > last.
        for step in range(a["expected_step"] - ov["search_radius"],
                          a["expected_step"] + ov["search_radius"] + 1):
            if last is not None and step <= last:
                continue
            for name, vv in (("normal", ver), ("duress", dur)):
                code = sample_symbols(otp_key, vv + u64(step), ov["length"], DIGITS)
                if accepted is None and hmac.compare_digest(code, a["code"]):
                    accepted, pin = step, name
        C.eq(f"code {a['code']} made at {a['made_at_step']} with {a['made_with']}",
             (accepted, pin), (a["accepted_step"], a["pin"]))
        if accepted is not None:
            last = accepted

    C.group("codes.json §10.2 one-time codes")
    for c in v["one_time_codes"]:
        C.eq(f"step({c['unix_ms']},{c['period_s']})", otp_step(c["unix_ms"], c["period_s"]),
             c["step"])
        C.eq(f"code({c['alphabet']},{c['length']},{c['unix_ms']},{c['period_s']})",
             one_time_code(otp_key, ver, c["unix_ms"], c["period_s"], c["length"],
                           ALPHABETS[c["alphabet"]]), c["code"])

    C.group("codes.json §11 validation codes and offline responses")
    off_key = H(v["offline_key"])
    for c in v["offline"]:
        C.eq(f"validation code from {c['random']}", validation_code(H(c["random"])),
             c["validation_code"])
        C.eq(f"response to {c['validation_code']}",
             offline_response(off_key, ver, c["validation_code"]), c["response"])
        # §11.1: normalisation of a sloppily typed code gives the same response
        sloppy = c["validation_code"].lower().replace("-", " ").replace("0", "o").replace("1", "l")
        C.eq(f"response to sloppy {sloppy!r}", offline_response(off_key, ver, sloppy),
             c["response"])

    C.group("codes.json §12.2 manual codes")
    for c in v["manual_codes"]:
        C.eq(f"manual code from {c['random']}", manual_code(H(c["random"])), c["code"])
        C.eq(f"E of {c['code']}", manual_code_secret(c["code"]), H(c["enrollment_secret"]))
        # a mistyped check symbol must be rejected
        s = normalise(c["code"])
        wrong = s[:19] + BASE32[(BASE32.index(s[19]) + 1) % 32]
        try:
            manual_code_secret(wrong)
            C.true(f"mistyped {wrong} rejected", False)
        except ValueError:
            C.true(f"mistyped {wrong} rejected", True)


def check_totp():
    """totp.json: §10.5 RFC 6238 and the otpauth URI."""
    v = load("totp.json")
    C.group("totp.json §10.5 RFC 6238 Appendix B")
    # RFC 6238 Appendix B table, independently of the JSON
    rfc = {59: ("94287082", "46119246", "90693936"),
           1111111109: ("07081804", "68084774", "25091201"),
           1111111111: ("14050471", "67062674", "99943326"),
           1234567890: ("89005924", "91819424", "93441116"),
           2000000000: ("69279037", "90698825", "38618901"),
           20000000000: ("65353130", "77737706", "47863826")}
    alg_idx = {"SHA1": 0, "SHA256": 1, "SHA512": 2}
    for c in v["cases"]:
        got = totp(H(c["seed"]), c["unix_s"], c["digits"], c["algorithm"])
        C.eq(f"{c['algorithm']} t={c['unix_s']}", got, c["totp"])
        C.eq(f"{c['algorithm']} t={c['unix_s']} vs RFC table", c["totp"],
             rfc[c["unix_s"]][alg_idx[c["algorithm"]]])

    C.group("totp.json §10.5 otpauth URI")
    o = v["otpauth"]
    C.eq("URI built from its inputs",
         otpauth_uri(o["issuer"], o["account"], H(o["secret"]), o["algorithm"], o["digits"],
                     o["period_s"]), o["uri"])
    p = parse_otpauth(o["uri"])
    C.eq("issuer in label == issuer parameter", p["issuer"], p["q_issuer"])
    C.eq("URI parsed back", (p["issuer"], p["account"], p["secret"]),
         (o["issuer"], o["account"], H(o["secret"])))


def check_replay():
    """replay.json: §8.1 window decisions, §8.3 skew."""
    v = load("replay.json")
    C.group("replay.json §8.1 replay window")
    C.eq("window size", v["window"], WINDOW)
    C.eq("freshness max skew", v["freshness"]["max_skew_ms"], MAX_SKEW_MS)
    w = ReplayWindow()
    for i, s in enumerate(v["steps"]):
        C.eq(f"step {i} counter {s['counter']} (H={w.H})", w.accept(s["counter"]), s["accepted"])

    C.group("replay.json §8.3 freshness boundary")
    for c in v["freshness"]["cases"]:
        C.eq(f"fresh({c['device_time_ms']}, {c['server_time_ms']}, {c['offset_ms']})",
             fresh(c["device_time_ms"], c["server_time_ms"], c["offset_ms"]), c["fresh"])


def check_deeplinks():
    """deeplinks.json: §12.1 build and parse."""
    v = load("deeplinks.json")
    C.group("deeplinks.json §12.1 build and parse")
    for d in v["links"]:
        secret = H(d["secret"])
        C.eq(f"build {d['service']!r}", build_deeplink(secret, d["service"], d["endpoints"],
                                                        d["details_url"]), d["uri"])
        p = parse_deeplink(d["uri"])
        C.eq(f"parse {d['service']!r}", (p["secret"], p["service"], p["endpoints"], p["details"]),
             (secret, d["service"], d["endpoints"], d["details_url"]))
        C.true(f"length <= 2048", len(d["uri"]) <= 2048)
        C.eq("s is 43 characters", len(b64url(secret)), 43)
        # MUST-reject rules of §12.1, applied to mutations of the vector
        base = d["uri"]
        bad = {
            "repeated v": base + "&v=1",
            "version 2": base.replace("v=1&", "v=2&", 1),
            "missing s": re.sub(r"&s=[^&]*", "", base),
            "short s": re.sub(r"&s=[^&]*", "&s=" + b64url(secret[:31]), base),
            "no ep": re.sub(r"&ep=[^&]*", "", base),
            "bad port": re.sub(r"(&ep=[^&]*)%3A[0-9]+", r"\1%3A70000", base, count=1),
        }
        for why, u in bad.items():
            try:
                parse_deeplink(u)
                C.true(f"reject {why}", False)
            except ValueError:
                C.true(f"reject {why}", True)
        p2 = parse_deeplink(base + "&future=x")
        C.eq("unknown parameter ignored", p2["secret"], secret)


def main():
    for fn in (check_keys, check_pin, check_session, check_codes, check_totp, check_replay,
               check_deeplinks):
        try:
            fn()
        except Exception as e:  # an exception is a failed check, not a crash
            C.true(f"{fn.__name__} raised {type(e).__name__}: {e}", False)
    C.end_group()
    # every vector file must have been checked
    expected = {"keys.json", "pin.json", "session.json", "codes.json", "totp.json",
                "replay.json", "deeplinks.json"}
    extra = sorted(p.name for p in VECTORS.glob("*.json") if p.name not in expected)
    if extra:
        C.group("unknown vector files")
        C.true(f"no unchecked vector files {extra}", False)
        C.end_group()
    print(f"{C.passed} passed, {C.failed} failed")
    return 1 if C.failed else 0


if __name__ == "__main__":
    sys.exit(main())
