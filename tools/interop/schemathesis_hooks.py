"""Schemathesis hooks for tools/interop/test_openapi.py (loaded through SCHEMATHESIS_HOOKS): the federation's binary
bodies (docs/FORMAT.md) are bytes, sent as schemathesis sends application/octet-stream."""
import schemathesis

schemathesis.serializer.alias("application/vnd.coffer.fl.v1+binary", "application/octet-stream")
