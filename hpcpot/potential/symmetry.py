"""The symmetry-function definition of a model: which functions each element has, with
their parameters, in their order (formulas in :mod:`hpcpot.potential.fingerprints` and in
docs/model-format.md).  Built from plain values; the training config translates into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SymmetryFunctions:
    """The fingerprint definition for every element, as padded arrays for the kernels.

    ``g2[c, k] = (eta, Rs)`` with neighbour element ``g2_el[c, k]``, ``k < n_g2[c]``;
    ``g4[c, k] = (eta, zeta, gamma)`` with neighbour elements ``g4_el[c, k] = (e1, e2)``,
    ``e1 <= e2``, ``k < n_g4[c]``.  Function ``f`` of element ``c`` is G2 ``f`` when
    ``f < n_g2[c]``, else G4 ``f - n_g2[c]``.
    """

    elements: tuple[str, ...]
    cutoff: float
    g2: np.ndarray
    g2_el: np.ndarray
    n_g2: np.ndarray
    g4: np.ndarray
    g4_el: np.ndarray
    n_g4: np.ndarray

    @property
    def n_functions(self) -> np.ndarray:
        """Functions per element, shape (n_elements,)."""
        return self.n_g2 + self.n_g4

    @property
    def n_max(self) -> int:
        return int(self.n_functions.max())

    @classmethod
    def from_lists(cls, elements: list[str], cutoff: float, per_element: dict[str, dict[str, list]]) -> SymmetryFunctions:
        """Build from ``{element: {g2_etas, g2_offsets, g4_etas, g4_zetas, g4_gammas}}``."""
        els = tuple(sorted(elements))
        ne = len(els)
        g2s, g4s = [], []
        for c in els:
            p = per_element[c]
            g2 = [(eta, rs, e) for eta in p["g2_etas"] for rs in p["g2_offsets"] for e in range(ne)]
            g4 = [
                (eta, zeta, gamma, e1, e2)
                for eta in p["g4_etas"]
                for zeta in p["g4_zetas"]
                for gamma in p["g4_gammas"]
                for e1 in range(ne)
                for e2 in range(e1, ne)
            ]
            g2s.append(g2)
            g4s.append(g4)
        m2 = max(1, max(len(g) for g in g2s))
        m4 = max(1, max(len(g) for g in g4s))
        g2a = np.zeros((ne, m2, 2))
        g2e = np.zeros((ne, m2), np.int64)
        g4a = np.zeros((ne, m4, 3))
        g4e = np.zeros((ne, m4, 2), np.int64)
        for c in range(ne):
            for k, (eta, rs, e) in enumerate(g2s[c]):
                g2a[c, k] = eta, rs
                g2e[c, k] = e
            for k, (eta, zeta, gamma, e1, e2) in enumerate(g4s[c]):
                g4a[c, k] = eta, zeta, gamma
                g4e[c, k] = e1, e2
        n2 = np.array([len(g) for g in g2s], np.int64)
        n4 = np.array([len(g) for g in g4s], np.int64)
        return cls(els, float(cutoff), g2a, g2e, n2, g4a, g4e, n4)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (each function listed explicitly)."""
        out: dict[str, Any] = {"cutoff": self.cutoff, "elements": list(self.elements), "functions": {}}
        for c, el in enumerate(self.elements):
            fs = []
            for k in range(self.n_g2[c]):
                eta, rs = self.g2[c, k]
                fs.append({"type": "G2", "eta": eta, "Rs": rs, "element": self.elements[self.g2_el[c, k]]})
            for k in range(self.n_g4[c]):
                eta, zeta, gamma = self.g4[c, k]
                e1, e2 = self.g4_el[c, k]
                fs.append(
                    {"type": "G4", "eta": eta, "zeta": zeta, "gamma": gamma,
                     "elements": [self.elements[e1], self.elements[e2]]}
                )
            out["functions"][el] = fs
        return out

    def label(self, c: int, f: int) -> str:
        """Short name of function ``f`` of element ``c``, e.g. ``Pt G2[3](O, eta=4, Rs=0)``
        (``[3]``: the component index ``f``)."""
        el = self.elements
        if f < self.n_g2[c]:
            eta, rs = self.g2[c, f]
            return f"{el[c]} G2[{f}]({el[self.g2_el[c, f]]}, eta={eta:g}, Rs={rs:g})"
        k = f - self.n_g2[c]
        eta, zeta, gamma = self.g4[c, k]
        e1, e2 = self.g4_el[c, k]
        return f"{el[c]} G4[{f}]({el[e1]}-{el[e2]}, eta={eta:g}, zeta={zeta:g}, gamma={gamma:+g})"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SymmetryFunctions:
        els = tuple(d["elements"])
        ne = len(els)
        idx = {e: i for i, e in enumerate(els)}
        funcs = [d["functions"][e] for e in els]
        m2 = max(1, max(sum(f["type"] == "G2" for f in fs) for fs in funcs))
        m4 = max(1, max(sum(f["type"] == "G4" for f in fs) for fs in funcs))
        g2a, g2e = np.zeros((ne, m2, 2)), np.zeros((ne, m2), np.int64)
        g4a, g4e = np.zeros((ne, m4, 3)), np.zeros((ne, m4, 2), np.int64)
        n2, n4 = np.zeros(ne, np.int64), np.zeros(ne, np.int64)
        for c, fs in enumerate(funcs):
            for f in fs:
                if f["type"] == "G2":
                    g2a[c, n2[c]] = f["eta"], f["Rs"]
                    g2e[c, n2[c]] = idx[f["element"]]
                    n2[c] += 1
                else:
                    g4a[c, n4[c]] = f["eta"], f["zeta"], f["gamma"]
                    g4e[c, n4[c]] = sorted(idx[e] for e in f["elements"])
                    n4[c] += 1
        return cls(els, float(d["cutoff"]), g2a, g2e, n2, g4a, g4e, n4)

    def g4_pair_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """G4 functions of centre c for neighbour pair (e1 <= e2):
        ``g4_list[c, e1 * n_el + e2, :g4_nlist[c, e1 * n_el + e2]]`` (built once, then cached:
        the calculator asks for it at every MD step)."""
        if "_g4_pair_tables" not in self.__dict__:
            self.__dict__["_g4_pair_tables"] = self._build_g4_pair_tables()
        return self.__dict__["_g4_pair_tables"]

    def _build_g4_pair_tables(self) -> tuple[np.ndarray, np.ndarray]:
        ne = len(self.elements)
        lst = np.zeros((ne, ne * ne, max(1, self.g4.shape[1])), np.int64)
        cnt = np.zeros((ne, ne * ne), np.int64)
        for c in range(ne):
            for k in range(self.n_g4[c]):
                e1, e2 = self.g4_el[c, k]
                p = e1 * ne + e2
                lst[c, p, cnt[c, p]] = k
                cnt[c, p] += 1
        return lst, cnt

    def block_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Which functions a partner can move: ``sub_idx[c, k, :sub_len[c, k]]``.

        ``k < n_elements``: a partner m ≠ i of element k (functions that involve k);
        ``k == n_elements``: the self pair (all functions).  Built once, then cached.
        """
        if "_block_tables" not in self.__dict__:
            self.__dict__["_block_tables"] = self._build_block_tables()
        return self.__dict__["_block_tables"]

    def _build_block_tables(self) -> tuple[np.ndarray, np.ndarray]:
        ne = len(self.elements)
        nmax = self.n_max
        sub_idx = np.zeros((ne, ne + 1, nmax), np.int64)
        sub_len = np.zeros((ne, ne + 1), np.int64)
        for c in range(ne):
            for k in range(ne + 1):
                fl = []
                for f in range(self.n_g2[c]):
                    if k == ne or self.g2_el[c, f] == k:
                        fl.append(f)
                for f in range(self.n_g4[c]):
                    if k == ne or k in self.g4_el[c, f]:
                        fl.append(self.n_g2[c] + f)
                sub_idx[c, k, : len(fl)] = fl
                sub_len[c, k] = len(fl)
        return sub_idx, sub_len
