"""Checkpoints written by PyPI's safetensors (numpy) read by Coffer (`coffer checkpoint inspect`)."""
import hashlib
import json
import subprocess

import numpy as np
from safetensors.numpy import save_file

from test_interop import COFFER


def test_coffer_reads_safetensors_written_by_the_reference(tmp_path):
    rng = np.random.default_rng(7)
    tensors = {
        "trunk.0.weight": rng.standard_normal((64, 256), dtype=np.float32),
        "trunk.0.bias": rng.standard_normal(256, dtype=np.float32),
        "heads.visits.weight": rng.standard_normal((1, 256), dtype=np.float32),
        "counts": np.arange(10, dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float64),
    }
    metadata = {"coffer.architecture": json.dumps({"trunk": [64, 256]}), "format": "np"}
    save_file(tensors, tmp_path / "model.safetensors", metadata=metadata)
    out = subprocess.run([COFFER, "checkpoint", "inspect", "--json", str(tmp_path / "model.safetensors")], capture_output=True, text=True, check=True)
    inspected = json.loads(out.stdout)
    assert inspected["metadata"] == metadata
    by_name = {t["name"]: t for t in inspected["tensors"]}
    assert set(by_name) == set(tensors)
    dtypes = {np.float32: "F32", np.int64: "I64", np.float64: "F64"}
    for name, array in tensors.items():
        assert by_name[name]["shape"] == list(array.shape), name
        assert by_name[name]["dtype"] == dtypes[array.dtype.type], name
        assert by_name[name]["sha256"] == hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest(), name


def test_truncated_file_is_refused_with_one_line(tmp_path):
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    out = subprocess.run([COFFER, "checkpoint", "inspect", str(tmp_path / "cut.safetensors")], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["coffer: invalid safetensors checkpoint: tensors cover 64 bytes of data, the file has 59"]
