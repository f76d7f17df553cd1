"""Memory the process holds: a 4-bit model does not keep its checkpoint mapped, and a training
step's activations go back to the system when freed."""
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lune_core.models import load_model
from tests.tiny import save_tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server


def _has_glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


# Run in a fresh interpreter: glibc serves a block from a free chunk of its heap when it has one,
# whatever the threshold, and after other tests the heap is full of them.
_PROBE = """
import ctypes, torch
from lune_core.memory import allocator_for_generation, allocator_for_training

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def own_mapping(nbytes):  # is a block of this size given its own mapping (returned to the system on free)?
    before = libc.mallinfo2().hblkhd
    block = torch.empty(nbytes // 4)
    grew = libc.mallinfo2().hblkhd - before >= nbytes
    del block
    return grew

block = torch.empty(8 * 2**20 // 4)
del block  # glibc now serves blocks up to 8 MB from the heap, where they stay resident
allocator_for_training()
during = own_mapping(2 * 2**20)
allocator_for_generation()
print(during, own_mapping(2 * 2**20), own_mapping(64 * 2**20))
"""


@pytest.mark.skipif(not _has_glibc(), reason="glibc's allocator only")
def test_training_gives_each_activation_block_its_own_mapping_and_generation_does_not():
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    during, after, huge = result.stdout.split()
    assert during == "True"  # a step's activations
    assert after == "False"  # the KV cache's per-token blocks: from the heap again
    assert huge == "True"


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's list of mappings")
def test_a_4bit_model_keeps_no_weight_in_the_checkpoint_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNE_MODEL_ROOTS", str(tmp_path))
    folder = save_tiny_model(tmp_path / "tiny")
    lm = load_model(str(folder), device="cpu")
    maps = []
    for line in open("/proc/self/maps"):
        if str(folder) in line:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            maps.append((lo, hi))
    pointers = [p.data_ptr() for p in lm.model.parameters()]
    assert not [p for p in pointers for lo, hi in maps if lo <= p < hi]
