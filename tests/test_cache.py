"""Fingerprint cache: identical results, reuse across runs and rank counts, damage detected."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REF, need, run_mpi

from hpcpot.potential.fingerprints import compute_fingerprints
from hpcpot.training.cache import FingerprintCache
from hpcpot.training.config import FingerprintConfig
from hpcpot.training.descriptors import symmetry_functions


def _same(a, b):
    Ga, ba = a
    Gb, bb = b
    assert np.array_equal(Ga, Gb)
    for f in ("centre", "partner", "kind", "ptr", "values", "image_ptr"):
        assert np.array_equal(getattr(ba, f), getattr(bb, f)), f


def test_cache_gives_identical_fingerprints_and_skips_work(ref_structures, tmp_path):
    st = ref_structures.subset(np.arange(12))
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    ref = compute_fingerprints(st, sf, True)
    c1 = FingerprintCache(str(tmp_path), sf, True, np.float64)
    _same(c1.compute(st.subset(np.arange(5))), compute_fingerprints(st.subset(np.arange(5)), sf, True))
    assert (c1.hits, c1.misses) == (0, 5)
    c2 = FingerprintCache(str(tmp_path), sf, True, np.float64)
    _same(c2.compute(st), ref)  # 5 from the cache, 7 new
    assert (c2.hits, c2.misses) == (5, 7)
    c3 = FingerprintCache(str(tmp_path), sf, True, np.float64)
    _same(c3.compute(st.subset(np.arange(12)[::-1])), compute_fingerprints(st.subset(np.arange(12)[::-1]), sf, True))
    assert (c3.hits, c3.misses) == (12, 0)
    # another definition does not reuse these entries
    sf2 = symmetry_functions(FingerprintConfig(cutoff=6.0, preset="default"), list(st.elements))
    c4 = FingerprintCache(str(tmp_path), sf2, True, np.float64)
    c4.compute(st.subset(np.arange(3)))
    assert c4.hits == 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_file_is_ignored(ref_structures, tmp_path, damage):
    st = ref_structures.subset(np.arange(4))
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    FingerprintCache(str(tmp_path), sf, True, np.float64).compute(st)
    (f,) = list(tmp_path.glob("fp-*.h5"))
    import h5py

    with h5py.File(f, "r") as h:
        offset = h["values"].id.get_offset() + 8 * 100  # the 100th stored derivative value
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    else:
        data[offset + 3] ^= 0xFF
        f.write_bytes(bytes(data))
    msgs = []
    c = FingerprintCache(str(tmp_path), sf, True, np.float64, log=msgs.append)
    _same(c.compute(st), compute_fingerprints(st, sf, True))
    assert c.hits == 0 and any("damaged" in m for m in msgs)


@pytest.mark.slow
@pytest.mark.mpi
def test_cache_reused_across_rank_counts(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[data]
train = ["{need(REF)}"]
index = ":300"
[fingerprints]
cache = "fpcache"
[optimizer]
max_iterations = 3
[output]
dir = "out"
""")
    r1 = run_mpi(2, ["-m", "hpcpot.train", str(cfg)])
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert "0 images reused, 300 computed" in r1.stdout
    r2 = run_mpi(1, ["-m", "hpcpot.train", str(cfg), "--overwrite"])
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "300 images reused, 0 computed" in r2.stdout

    def loss_history(out):
        return [line.split()[3] for line in out.splitlines() if line.startswith("iter ")]

    assert loss_history(r1.stdout) == loss_history(r2.stdout)
