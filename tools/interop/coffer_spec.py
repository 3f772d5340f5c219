"""An independent reader of Coffer's formats, written from docs/FORMAT.md alone, on PyNaCl.

Nothing here imports or calls Coffer: it is the proof that the specification is complete.
"""
import base64
import hashlib
import json
import struct

from nacl import bindings, pwhash
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import VerifyKey

SEALED_MAGIC = b"\x89CFS\r\n\x1a\n"
KEY_MAGIC = b"\x89CFK\r\n\x1a\n"
TAG = 16


class FormatError(Exception):
    pass


def blake2b_256(key, message):
    return hashlib.blake2b(message, key=key, digest_size=32).digest()


def derive(data_key, label, prefix):
    return blake2b_256(data_key, label.encode() + prefix)


# --- Identity files -------------------------------------------------------------------------------

def read_key_file(data, passphrase):
    """Returns dict(name, ed25519_seed, x25519_secret, p256_scalar, ed25519, x25519, p256)."""
    if data[:8] != KEY_MAGIC:
        raise FormatError("not a Coffer identity file")
    version, kdf, reserved = data[8], data[9], data[10:12]
    if version != 1 or kdf != 1 or reserved != b"\0\0":
        raise FormatError("unsupported key file")
    ops, mem = struct.unpack_from("<QQ", data, 12)
    salt, nonce = data[28:44], data[44:68]
    (name_len,) = struct.unpack_from("<H", data, 68)
    pos = 70 + name_len
    name = data[70:pos].decode()
    ed_pub, x_pub, p256_pub = data[pos:pos + 32], data[pos + 32:pos + 64], data[pos + 64:pos + 129]
    header_len = pos + 129
    key = pwhash.argon2id.kdf(32, passphrase, salt, opslimit=ops, memlimit=mem)
    secrets = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(data[header_len:], data[:header_len], nonce, key)
    return dict(name=name, ed25519_seed=secrets[:32], x25519_secret=secrets[32:64], p256_scalar=secrets[64:96],
                ed25519=ed_pub, x25519=x_pub, p256=p256_pub)


def key_id(ed25519, x25519, p256):
    return hashlib.sha256(b"coffer/v1/identity" + ed25519 + x25519 + p256).digest()[:16].hex()


def read_public_identity(text):
    obj = json.loads(text)
    if obj["type"] != "coffer.identity.v1":
        raise FormatError("not a public identity")
    keys = {k: base64.b64decode(obj[k]) for k in ("ed25519", "x25519", "p256")}
    if key_id(keys["ed25519"], keys["x25519"], keys["p256"]) != obj["id"]:
        raise FormatError("identity id does not match its keys")
    return dict(name=obj["name"], id=obj["id"], **keys)


# --- Sealed files ---------------------------------------------------------------------------------

def parse_header(data):
    """Returns (header dict, header length)."""
    if data[:8] != SEALED_MAGIC:
        raise FormatError("not a Coffer sealed file")
    version, suite, shift, reserved = data[8], data[9], data[10], data[11]
    if version != 1 or suite != 1 or reserved != 0 or not 12 <= shift <= 24:
        raise FormatError("unsupported header")
    prefix = data[12:28]
    (count,) = struct.unpack_from("<H", data, 28)
    pos, stanzas = 30, []
    for _ in range(count):
        stype, sreserved, length = data[pos], data[pos + 1], struct.unpack_from("<H", data, pos + 2)[0]
        if sreserved != 0:
            raise FormatError("stanza reserved byte")
        stanzas.append((stype, data[pos + 4:pos + 4 + length]))
        pos += 4 + length
    mac = data[pos:pos + 32]
    return dict(chunk_size=1 << shift, prefix=prefix, stanzas=stanzas, mac=mac, unauthenticated=data[:pos]), pos + 32


def unwrap_x25519(stanzas, x25519_secret, x25519_public):
    hint = hashlib.sha256(x25519_public).digest()[:8]
    for stype, body in stanzas:
        if stype == 1 and body[:8] == hint:
            return SealedBox(PrivateKey(x25519_secret)).decrypt(body[8:])
    raise FormatError("not a recipient")


def chunk_nonce(prefix, index, last):
    return prefix + index.to_bytes(7, "little") + (b"\x01" if last else b"\x00")


def open_payload(data, header, header_len, data_key):
    if blake2b_256(derive(data_key, "coffer/v1/header-mac", header["prefix"]), header["unauthenticated"]) != header["mac"]:
        raise FormatError("header MAC")
    payload_key = derive(data_key, "coffer/v1/payload", header["prefix"])
    stride = header["chunk_size"] + TAG
    payload = data[header_len:]
    if len(payload) < TAG:
        raise FormatError("truncated")
    count = -(-len(payload) // stride)
    out = []
    for i in range(count):
        chunk = payload[i * stride:(i + 1) * stride]
        last = i == count - 1
        if last and i > 0 and len(chunk) == TAG:
            raise FormatError("empty final chunk")
        out.append(bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            chunk, header["mac"], chunk_nonce(header["prefix"], i, last), payload_key))
    return b"".join(out)


def open_sealed(data, identity):
    header, header_len = parse_header(data)
    data_key = unwrap_x25519(header["stanzas"], identity["x25519_secret"], identity["x25519"])
    return open_payload(data, header, header_len, data_key)


def x25519_stanza(data_key, x25519_public):
    body = hashlib.sha256(x25519_public).digest()[:8] + SealedBox(PublicKey(x25519_public)).encrypt(data_key)
    return (1, body)


def seal_detached(plaintext, data_key, prefix, chunk_shift, stanzas=()):
    """Seals with the given stanzas; with none (the key kept elsewhere) it is the worked example of docs/FORMAT.md."""
    unauthenticated = SEALED_MAGIC + bytes([1, 1, chunk_shift, 0]) + prefix + struct.pack("<H", len(stanzas))
    for stype, body in stanzas:
        unauthenticated += bytes([stype, 0]) + struct.pack("<H", len(body)) + body
    mac = blake2b_256(derive(data_key, "coffer/v1/header-mac", prefix), unauthenticated)
    payload_key = derive(data_key, "coffer/v1/payload", prefix)
    size = 1 << chunk_shift
    chunks = [plaintext[i:i + size] for i in range(0, len(plaintext), size)] or [b""]
    body = b"".join(bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        c, mac, chunk_nonce(prefix, i, i == len(chunks) - 1), payload_key) for i, c in enumerate(chunks))
    return unauthenticated + mac + body


# --- DSSE -----------------------------------------------------------------------------------------

def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def verify_dsse(envelope, public_identity):
    payload = base64.b64decode(envelope["payload"])
    message = pae(envelope["payloadType"], payload)
    for sig in envelope["signatures"]:
        if sig["keyid"] == public_identity["id"]:
            VerifyKey(public_identity["ed25519"]).verify(message, base64.b64decode(sig["sig"]))
            return json.loads(payload)
    raise FormatError("no signature by that identity")
