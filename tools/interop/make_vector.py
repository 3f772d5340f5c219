"""Writes the worked-example vector of docs/FORMAT.md from the specification (coffer_spec.py), not from Coffer."""
import json
import sys

import coffer_spec as spec

data_key = bytes(range(32))
prefix = bytes(range(0xA0, 0xB0))
plaintext = b"Hello, Coffer! " * 300  # 4500 bytes: two chunks of 4 KiB
shift = 12
sealed = spec.seal_detached(plaintext, data_key, prefix, shift)
header, header_len = spec.parse_header(sealed)
vector = dict(
    data_key=data_key.hex(), nonce_prefix=prefix.hex(), chunk_shift=shift, plaintext=plaintext.hex(),
    header_mac=header["mac"].hex(),
    mac_key=spec.derive(data_key, "coffer/v1/header-mac", prefix).hex(),
    payload_key=spec.derive(data_key, "coffer/v1/payload", prefix).hex(),
    chunk0_nonce=spec.chunk_nonce(prefix, 0, False).hex(), chunk1_nonce=spec.chunk_nonce(prefix, 1, True).hex(),
    header=sealed[:header_len].hex(), sealed=sealed.hex())
json.dump(vector, sys.stdout, indent=1)
print()
