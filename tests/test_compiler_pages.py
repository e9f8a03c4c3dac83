"""Releasing LLVM's code pages after the kernels load: less resident memory, nothing broken."""

from __future__ import annotations

import sys

import pytest
from conftest import fresh_python

CODE = r"""
import numpy as np
from numba import njit
from hpcpot.training.compiler_pages import _mappings, release_compiler_pages

@njit(cache=False)
def before(x):
    return np.sqrt(x).sum()

def llvm_resident():
    return sum(m.get("Rss", 0) for m in _mappings() if "libllvmlite" in m["path"])

x = np.arange(1.0, 1001.0)
a = before(x)
r0 = llvm_resident()
dropped = release_compiler_pages()
r1 = llvm_resident()
b = before(x)  # code loaded before still runs

@njit(cache=False)
def after(x):  # compiling again faults LLVM's pages back in
    return (x * x).sum()

c = after(x)
print(r0 > 0, dropped > 0, r0 - r1 >= dropped // 2, a == b == np.sqrt(x).sum(), c == (x * x).sum(), llvm_resident() > r1)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise: Linux")
def test_release_then_run_and_compile():
    out = fresh_python(CODE)
    assert out == ["True"] * 6
