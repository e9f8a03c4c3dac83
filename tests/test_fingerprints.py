"""Gaussian symmetry functions: values against an independent reference implementation,
analytic derivatives against finite differences, invariances, the function sets, and the
sparse derivative storage."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from hpcpot.potential.fingerprints import (
    compute_fingerprints,
    derivative_value_count,
    fingerprint_derivatives_dense,
    fingerprints,
    neighbour_statistics,
)
from hpcpot.potential.structures import structure_arrays
from hpcpot.potential.symmetry import SymmetryFunctions
from hpcpot.training.config import FingerprintConfig
from hpcpot.training.descriptors import symmetry_functions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF_TRAJ = DATA / "o_pt111_emt_3000.traj"

# A set that exercises Rs != 0, a non-integer zeta, several G4 etas and a different number
# of functions per element (so the shorter rows are padded).
CUSTOM_CUTOFF = 5.2
CUSTOM = {
    "H": {
        "g2_etas": [0.3, 7.0],
        "g2_offsets": [0.0, 1.1],
        "g4_etas": [0.01],
        "g4_zetas": [2.5],
        "g4_gammas": [1.0, -1.0],
    },
    "O": {
        "g2_etas": [0.3, 7.0],
        "g2_offsets": [0.0, 1.1],
        "g4_etas": [0.01, 0.4],
        "g4_zetas": [1.0, 2.5],
        "g4_gammas": [1.0, -1.0],
    },
    "Pt": {
        "g2_etas": [1.5],
        "g2_offsets": [0.7, 2.3, 3.0],
        "g4_etas": [0.02],
        "g4_zetas": [1.7, 4.0, 8.0, 16.0],  # 4, 16: one fused loop; 8: repeated squaring by rows
        "g4_gammas": [-1.0, 1.0],
    },
}
DEFAULT_SET = {
    "g2_etas": [0.05, 4.0, 20.0, 80.0],
    "g2_offsets": [0.0],
    "g4_etas": [0.005],
    "g4_zetas": [1.0, 4.0],
    "g4_gammas": [1.0, -1.0],
}


# --------------------------------------------------------------------------- reference


def _images(atoms: Atoms, cutoff: float):
    """Per centre i: (j indices, displacement vectors D = r_j + T - r_i) of every periodic image
    within the cutoff, built from explicit lattice translations n1 a1 + n2 a2 + n3 a3."""
    pos = atoms.get_positions()
    n = len(atoms)
    pbc = np.asarray(atoms.pbc, bool)
    cell = np.asarray(atoms.cell.array, float)
    nmax = [0, 0, 0]
    if pbc.any():
        inv = np.linalg.inv(cell)  # columns: reciprocal vectors b_k, a_i . b_k = delta_ik
        frac = pos @ inv
        for k in range(3):
            if pbc[k]:
                d_plane = 1.0 / np.linalg.norm(inv[:, k])  # distance between lattice planes
                span = frac[:, k].max() - frac[:, k].min()
                nmax[k] = math.ceil(cutoff / d_plane + span) + 1
    ranges = [range(-m, m + 1) for m in nmax]
    shifts = np.array([n1 * cell[0] + n2 * cell[1] + n3 * cell[2] for n1, n2, n3 in itertools.product(*ranges)])
    zero = [k for k, t in enumerate(itertools.product(*ranges)) if t == (0, 0, 0)][0]
    out = []
    for i in range(n):
        D = pos[None, :, :] + shifts[:, None, :] - pos[i]  # (n_shifts, n, 3)
        r = np.linalg.norm(D, axis=2)
        keep = r < cutoff
        keep[zero, i] = False  # the atom itself
        s_idx, j_idx = np.nonzero(keep)
        out.append((j_idx, D[s_idx, j_idx]))
    return out


def _fc(r, rc):
    return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)


def reference_fingerprints(atoms: Atoms, cutoff: float, per_element: dict) -> np.ndarray:
    """Straightforward G2/G4 (Amp 1.0.1 conventions), shape (n_atoms, max functions), padded with 0."""
    els = sorted(set(per_element))
    ne = len(els)
    funcs = {}
    for el in els:
        p = per_element[el]
        fl = [("G2", eta, rs, e) for eta in p["g2_etas"] for rs in p["g2_offsets"] for e in range(ne)]
        pairs = [(e1, e2) for e1 in range(ne) for e2 in range(e1, ne)]
        fl += [
            ("G4", eta, zeta, gamma, pr)
            for eta in p["g4_etas"]
            for zeta in p["g4_zetas"]
            for gamma in p["g4_gammas"]
            for pr in pairs
        ]
        funcs[el] = fl
    nmax = max(len(f) for f in funcs.values())
    species = np.array([els.index(s) for s in atoms.get_chemical_symbols()])
    rc2 = cutoff**2
    G = np.zeros((len(atoms), nmax))
    for i, (j, D) in enumerate(_images(atoms, cutoff)):
        ej = species[j]
        r = np.linalg.norm(D, axis=1)
        fc = _fc(r, cutoff)
        # all pairs of distinct neighbour entries q < s
        q, s = np.triu_indices(len(j), k=1)
        rjk = np.linalg.norm(D[s] - D[q], axis=1)
        cos = np.einsum("ij,ij->i", D[q], D[s]) / (r[q] * r[s])
        fcs = fc[q] * fc[s] * _fc(rjk, cutoff)
        rsum = r[q] ** 2 + r[s] ** 2 + rjk**2
        lo, hi = np.minimum(ej[q], ej[s]), np.maximum(ej[q], ej[s])
        for f, fn in enumerate(funcs[els[species[i]]]):
            if fn[0] == "G2":
                _, eta, rs, e = fn
                m = ej == e
                G[i, f] = np.sum(np.exp(-eta * (r[m] - rs) ** 2 / rc2) * fc[m])
            else:
                _, eta, zeta, gamma, (e1, e2) = fn
                m = (lo == e1) & (hi == e2)
                base = np.maximum(1.0 + gamma * cos[m], 0.0)  # >= 0 up to rounding
                G[i, f] = 2.0 ** (1.0 - zeta) * np.sum(base**zeta * np.exp(-eta * rsum[m] / rc2) * fcs[m])
    return G


# --------------------------------------------------------------------------- geometries


def _slab():
    import ase.io

    if not REF_TRAJ.exists():
        pytest.skip(f"reference data {REF_TRAJ} not found")
    atoms = ase.io.read(str(REF_TRAJ), 0)
    atoms.set_constraint()  # FixAtoms would silently keep the bottom layer in place when we move atoms
    return atoms


def _small_bulk():
    """2-atom triclinic Pt/O cell with ~3 Å edges: many periodic images, incl. of the atom itself."""
    cell = [[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [0.5, 0.7, 3.1]]
    return Atoms("PtO", positions=[[0.1, 0.05, 0.0], [1.3, 1.7, 1.45]], cell=cell, pbc=True)


def _cluster():
    """Non-periodic Pt/O cluster, no cell."""
    pos = [
        [0.0, 0.0, 0.0],
        [2.7, 0.1, 0.2],
        [1.3, 2.4, -0.1],
        [1.4, 0.8, 2.2],
        [-1.2, 1.9, 1.4],
        [3.9, 2.1, 1.0],
        [1.2, 1.0, -1.6],
    ]
    return Atoms("Pt4O3", positions=pos, pbc=False)


def _mixed():
    """pbc (True, False, True) with a non-orthogonal cell; one atom outside the cell."""
    cell = [[4.1, 0.0, 0.0], [1.1, 3.8, 0.4], [0.9, -0.6, 3.7]]
    pos = [[0.2, 0.3, 0.1], [2.1, 1.9, 1.0], [1.0, 3.1, 2.6], [3.0, 5.2, 1.2]]
    return Atoms("Pt2O2", positions=pos, cell=cell, pbc=[True, False, True])


def _three_elements():
    """Non-periodic H/O/Pt cluster: three elements, all six neighbour-element pairs."""
    pos = [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.3, 0.92, 0.0], [2.1, 1.6, 0.5], [-1.5, -1.2, 1.3], [1.1, -1.7, -1.0]]
    return Atoms("OHHPtPtO", positions=pos, pbc=False)


GEOMETRIES = {
    "slab": _slab,
    "small_bulk": _small_bulk,
    "cluster": _cluster,
    "mixed_pbc": _mixed,
    "h2o": lambda: molecule("H2O"),
    "three_elements": _three_elements,
}
FOUR = ["slab", "small_bulk", "cluster", "mixed_pbc"]


def _sf_and_lists(atoms: Atoms, which: str):
    els = sorted(set(atoms.get_chemical_symbols()))
    if which == "default":
        per = {e: DEFAULT_SET for e in els}
        return symmetry_functions(FingerprintConfig(preset="default"), els), 6.5, per
    per = {e: CUSTOM[e] for e in els}
    return SymmetryFunctions.from_lists(els, CUSTOM_CUTOFF, per), CUSTOM_CUTOFF, per


def _fd_derivatives(atoms: Atoms, sf: SymmetryFunctions, h: float = 1e-5) -> np.ndarray:
    n = len(atoms)
    out = np.zeros((n, sf.n_max, n, 3))
    pos0 = atoms.get_positions()
    for m in range(n):
        for x in range(3):
            a = atoms.copy()
            p = pos0.copy()
            p[m, x] += h
            a.set_positions(p, apply_constraint=False)
            gp = fingerprints(a, sf)
            p[m, x] -= 2 * h
            a.set_positions(p, apply_constraint=False)
            gm = fingerprints(a, sf)
            out[:, :, m, x] = (gp - gm) / (2 * h)
    return out


_FD_CACHE: dict = {}


def _fd_cached(name: str, which: str):
    if (name, which) not in _FD_CACHE:
        atoms = GEOMETRIES[name]()
        sf, _, _ = _sf_and_lists(atoms, which)
        _FD_CACHE[name, which] = (atoms, sf, _fd_derivatives(atoms, sf))
    return _FD_CACHE[name, which]


# --------------------------------------------------------------------------- 1. values


def test_reference_sees_self_images_in_small_cell():
    # sanity of the reference itself: in a 3 Å cell each atom has images of itself within 6.5 Å
    j, D = _images(_small_bulk(), 6.5)[0]
    assert np.sum(j == 0) > 10
    assert len(j) > 60
    assert np.linalg.norm(D, axis=1).max() < 6.5


@pytest.mark.parametrize("which", ["default", "custom"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_values_match_reference(name, which):
    atoms = GEOMETRIES[name]()
    sf, rc, per = _sf_and_lists(atoms, which)
    G = fingerprints(atoms, sf)
    R = reference_fingerprints(atoms, rc, per)
    assert G.shape == R.shape == (len(atoms), sf.n_max)
    assert np.abs(R).max() > 0.1
    # relative to each function's scale (tiny-eta and large-eta functions differ by orders)
    scale = np.maximum(np.abs(R).max(axis=0), 1e-300)
    np.testing.assert_allclose(G / scale, R / scale, rtol=0, atol=1e-10)
    np.testing.assert_allclose(G, R, rtol=1e-10, atol=1e-14)


def test_custom_set_padding_is_zero():
    atoms = _cluster()
    sf, _, _ = _sf_and_lists(atoms, "custom")
    G = fingerprints(atoms, sf)
    n_fun = dict(zip(sf.elements, sf.n_functions))
    assert n_fun["O"] != n_fun["Pt"]
    for i, s in enumerate(atoms.get_chemical_symbols()):
        assert np.all(G[i, n_fun[s] :] == 0.0)


def test_isolated_atom_and_cutoff_edge():
    sf = symmetry_functions(FingerprintConfig(cutoff=3.0, preset="default"), ["O", "Pt"])
    # neighbours just beyond the cutoff contribute nothing
    a = Atoms("PtO", positions=[[0, 0, 0], [3.0001, 0, 0]])
    assert np.all(fingerprints(a, sf) == 0.0)
    b = Atoms("PtO", positions=[[0, 0, 0], [2.9, 0, 0]])
    G = fingerprints(b, sf)
    fc = 0.5 * (math.cos(math.pi * 2.9 / 3.0) + 1)
    # Pt centre, G2 eta=0.05 with neighbour O is column 0
    assert G[0, 0] == pytest.approx(math.exp(-0.05 * 2.9**2 / 9.0) * fc, rel=1e-12)
    assert G[0, 1] == 0.0  # no Pt neighbour
    assert np.all(G[:, 8:] == 0.0)  # one neighbour: no angle


def test_g4_needs_the_third_side_inside_the_cutoff():
    """A triplet counts only when all three distances are below Rc: the kernel keeps just the
    neighbour pairs (q, s) within Rc of each other (compacted per element block), so a
    partner at Rc + 0.05 Å from q must drop out and one at Rc - 0.05 Å must count, as in the
    reference, for every element pair."""
    sf, rc, per = _sf_and_lists(Atoms("PtO"), "default")
    c = sf.elements.index("Pt")
    for far in (True, False):
        for third in ("O", "Pt"):
            d = (rc + (0.05 if far else -0.05)) / math.sqrt(3.0)  # 120° at the centre: |q - s| = √3 d
            s_pos = [d * math.cos(2 * math.pi / 3), d * math.sin(2 * math.pi / 3), 0.0]
            a = Atoms("PtO" + third, positions=[[0, 0, 0], [d, 0, 0], s_pos])
            G = fingerprints(a, sf)
            R = reference_fingerprints(a, rc, per)
            np.testing.assert_allclose(G, R, rtol=1e-10, atol=1e-14)
            g4 = G[0, sf.n_g2[c] : sf.n_functions[c]]
            assert (np.abs(g4).max() == 0.0) == far


# --------------------------------------------------------------------------- 2. derivatives


@pytest.mark.parametrize("which", ["default", "custom"])
@pytest.mark.parametrize("name", [*FOUR, "three_elements"])
def test_derivatives_match_finite_differences(name, which):
    atoms, sf, fd = _fd_cached(name, which)
    G, dG = fingerprint_derivatives_dense(atoms, sf)
    np.testing.assert_allclose(G, fingerprints(atoms, sf), rtol=1e-13, atol=0)
    assert dG.shape == (len(atoms), sf.n_max, len(atoms), 3)
    scale = np.abs(dG).max()
    assert scale > 1e-3
    assert np.abs(dG - fd).max() <= 1e-6 * scale


def test_derivative_translation_sum_rule():
    # moving every atom together leaves G unchanged: sum_m dG[i, f, m, :] = 0
    for name in FOUR:
        atoms = GEOMETRIES[name]()
        sf, _, _ = _sf_and_lists(atoms, "custom")
        _, dG = fingerprint_derivatives_dense(atoms, sf)
        assert np.abs(dG.sum(axis=2)).max() <= 1e-10 * np.abs(dG).max()


# --------------------------------------------------------------------------- 3. invariances


def _random_orthogonal(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("name", FOUR)
def test_rotation_invariance(name):
    rng = np.random.default_rng(7)
    atoms = GEOMETRIES[name]()
    sf, _, _ = _sf_and_lists(atoms, "custom")
    G, dG = fingerprint_derivatives_dense(atoms, sf)
    for _ in range(2):
        Q = _random_orthogonal(rng)
        b = atoms.copy()
        b.set_cell(atoms.cell.array @ Q.T, scale_atoms=False)
        b.set_positions(atoms.get_positions() @ Q.T)
        Gb, dGb = fingerprint_derivatives_dense(b, sf)
        np.testing.assert_allclose(Gb, G, rtol=1e-10, atol=1e-12)
        # derivatives rotate as vectors
        np.testing.assert_allclose(dGb, dG @ Q.T, rtol=0, atol=1e-10 * np.abs(dG).max())


@pytest.mark.parametrize("name", FOUR)
def test_translation_invariance(name):
    atoms = GEOMETRIES[name]()
    sf, _, _ = _sf_and_lists(atoms, "default")
    G = fingerprints(atoms, sf)
    t = np.array([1.7, -2.3, 0.9])
    if atoms.pbc.any():
        t += 2 * atoms.cell.array[np.argmax(atoms.pbc)]  # certainly outside the cell
    b = atoms.copy()
    b.translate(t)
    np.testing.assert_allclose(fingerprints(b, sf), G, rtol=1e-10, atol=1e-12)
    if atoms.pbc.any():
        # wrapping atoms back into the cell along periodic directions changes nothing either
        b.wrap()
        assert not np.allclose(b.positions, atoms.positions + t)
        np.testing.assert_allclose(fingerprints(b, sf), G, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["slab", "cluster", "mixed_pbc", "three_elements"])
def test_permutation_equivariance(name):
    rng = np.random.default_rng(3)
    atoms = GEOMETRIES[name]()
    sf, _, _ = _sf_and_lists(atoms, "custom" if name != "slab" else "default")
    G, dG = fingerprint_derivatives_dense(atoms, sf)
    syms = np.array(atoms.get_chemical_symbols())
    # permute like atoms only (the element sequence stays the same) ...
    perm = np.arange(len(atoms))
    for el in set(syms):
        idx = np.nonzero(syms == el)[0]
        perm[idx] = rng.permutation(idx)
    assert not np.array_equal(perm, np.arange(len(atoms)))
    # ... and also an arbitrary reordering
    for p in (perm, rng.permutation(len(atoms))):
        b = atoms[p]
        Gb, dGb = fingerprint_derivatives_dense(b, sf)
        np.testing.assert_allclose(Gb, G[p], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dGb, dG[p][:, :, p], rtol=0, atol=1e-10 * np.abs(dG).max())


def test_non_periodic_cell_vector_is_irrelevant():
    # a slab/wire with a zero (or any) cell vector along its non-periodic directions
    sf = SymmetryFunctions.from_lists(["O", "Pt"], CUSTOM_CUTOFF, CUSTOM)
    pos = [[0.0, 0.0, 0.0], [1.4, 0.8, 1.2], [2.0, -0.5, 2.5]]
    for pbc, zero, full in (
        ([True, True, False], [[3.1, 0, 0], [1.2, 2.9, 0], [0, 0, 0]], [[3.1, 0, 0], [1.2, 2.9, 0], [0.3, 0.2, 7.0]]),
        ([True, False, False], [[2.8, 0, 0], [0, 0, 0], [0, 0, 0]], [[2.8, 0, 0], [0.5, 9.0, 0], [0, 1.0, 9.0]]),
    ):
        a = Atoms("PtOO", positions=pos, cell=zero, pbc=pbc)
        b = Atoms("PtOO", positions=pos, cell=full, pbc=pbc)
        Ga, dGa = fingerprint_derivatives_dense(a, sf)
        Gb, dGb = fingerprint_derivatives_dense(b, sf)
        np.testing.assert_allclose(Ga, Gb, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dGa, dGb, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            Gb, reference_fingerprints(b, CUSTOM_CUTOFF, {e: CUSTOM[e] for e in ("O", "Pt")}), rtol=1e-10
        )


def test_like_atoms_in_equivalent_sites_have_equal_fingerprints():
    # a symmetric molecule: the two H of water are equivalent, the O differs
    G = fingerprints(molecule("H2O"), symmetry_functions(FingerprintConfig(preset="default"), ["H", "O"]))
    np.testing.assert_allclose(G[1], G[2], rtol=1e-12)
    assert not np.allclose(G[0], G[1])


# --------------------------------------------------------------------------- 4. function sets


def test_default_set_order():
    sf = symmetry_functions(FingerprintConfig(preset="default"), ["Pt", "O"])
    assert sf.elements == ("O", "Pt")
    assert sf.cutoff == 6.5
    assert list(sf.n_functions) == [20, 20]
    d = sf.to_dict()
    assert d["elements"] == ["O", "Pt"] and d["cutoff"] == 6.5
    for el in ("O", "Pt"):
        fs = d["functions"][el]
        assert len(fs) == 20
        assert [f["type"] for f in fs] == ["G2"] * 8 + ["G4"] * 12
        # G2: eta outer, element inner
        assert [(f["eta"], f["element"]) for f in fs[:8]] == [
            (0.05, "O"), (0.05, "Pt"), (4.0, "O"), (4.0, "Pt"),
            (20.0, "O"), (20.0, "Pt"), (80.0, "O"), (80.0, "Pt"),
        ]  # fmt: skip
        assert all(f["Rs"] == 0.0 for f in fs[:8])
        # G4: eta, zeta, gamma, pair (O,O), (O,Pt), (Pt,Pt)
        expect = [
            (0.005, z, g, pr) for z in (1.0, 4.0) for g in (1.0, -1.0) for pr in (["O", "O"], ["O", "Pt"], ["Pt", "Pt"])
        ]
        assert [(f["eta"], f["zeta"], f["gamma"], f["elements"]) for f in fs[8:]] == expect


def test_amp_preset_etas():
    sf = symmetry_functions(FingerprintConfig(preset="amp"), ["O", "Pt"])
    expected = [0.05 * 100 ** (k / 3) for k in range(4)]  # logspace(log10 0.05, log10 5, 4)
    etas = sf.to_dict()["functions"]["Pt"]
    got = [etas[2 * k]["eta"] for k in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(0.05) and got[-1] == pytest.approx(5.0)
    np.testing.assert_allclose(got[1], 0.23207944168063893, rtol=1e-12)
    assert list(sf.n_functions) == [20, 20]
    # G4 part is the same as the default set's
    d = symmetry_functions(FingerprintConfig(preset="default"), ["O", "Pt"]).to_dict()["functions"]["Pt"]
    assert etas[8:] == d[8:]
    assert etas[:8] != d[:8]


def test_explicit_etas_override_preset():
    sf = symmetry_functions(FingerprintConfig(preset="amp", g2_etas=[1.0, 2.0]), ["O"])
    assert [f["eta"] for f in sf.to_dict()["functions"]["O"] if f["type"] == "G2"] == [1.0, 2.0]


def test_dict_roundtrip():
    sf = SymmetryFunctions.from_lists(["Pt", "O", "H"], CUSTOM_CUTOFF, CUSTOM)
    sf2 = SymmetryFunctions.from_dict(sf.to_dict())
    assert sf2.to_dict() == sf.to_dict()
    atoms = _three_elements()
    np.testing.assert_array_equal(fingerprints(atoms, sf2), fingerprints(atoms, sf))


def test_unknown_element_in_structure_is_error():
    sf = symmetry_functions(FingerprintConfig(preset="default"), ["O", "Pt"])
    with pytest.raises(ValueError, match="H"):
        fingerprints(molecule("H2O"), sf)


# --------------------------------------------------------------------------- 5. sparse storage


def _involves(fn: dict, el: str) -> bool:
    return fn["element"] == el if fn["type"] == "G2" else el in fn["elements"]


@pytest.mark.parametrize("name", ["slab", "small_bulk", "mixed_pbc", "three_elements"])
def test_sparse_blocks_hold_partner_element_functions(name):
    atoms, sf, fd = _fd_cached(name, "default")
    st = structure_arrays(atoms, sf.elements)
    G, b = compute_fingerprints(st, sf)
    sub_idx, sub_len = sf.block_tables()
    ne = len(sf.elements)
    n = len(atoms)
    fdesc = sf.to_dict()["functions"]
    syms = atoms.get_chemical_symbols()

    # one entry per (centre, partner), grouped by centre; image_ptr covers all
    codes = b.centre.astype(np.int64) * n + b.partner
    assert len(np.unique(codes)) == len(codes)
    assert np.all(np.diff(b.centre) >= 0)
    assert list(b.image_ptr) == [0, len(b.centre)]
    assert len(b.ptr) == len(b.centre) + 1 and b.ptr[-1] == len(b.values)

    # pairs = every (i, m ≠ i) with some image of m within the cutoff of i (no self pairs:
    # dG_i/dr_i follows from translation invariance)
    nb = _images(atoms, sf.cutoff)
    expect_pairs = {(i, int(m)) for i in range(n) for m in nb[i][0] if int(m) != i}
    assert set(zip(b.centre.tolist(), b.partner.tolist())) == expect_pairs

    stored = {}
    for p in range(len(b.centre)):
        i, m, k = int(b.centre[p]), int(b.partner[p]), int(b.kind[p])
        c = int(st.species[i])
        L = (b.ptr[p + 1] - b.ptr[p]) // 3
        assert sub_len[c, k] == L
        idx = sub_idx[c, k, :L]
        assert i != m and k == st.species[m]
        want = [f for f, fn in enumerate(fdesc[syms[i]]) if _involves(fn, syms[m])]
        assert list(idx) == want
        if ne == 2:
            assert L == 12  # 4 G2 + 2 of 3 pairs x 4 G4
        stored[i, m] = set(idx.tolist())

    # the dropped entries really are zero: finite differences of G (independent of the blocks)
    scale = np.abs(fd).max()
    for i in range(n):
        for m in range(n):
            if m == i:
                continue  # not stored: −Σ of the others (the dense helper's test checks it)
            dropped = [f for f in range(sf.n_max) if f not in stored.get((i, m), set())]
            # (finite differences of unchanged sums are exactly 0 up to summation-order rounding,
            # ~eps |G| / h ~ 1e-10; a structurally non-zero entry is of order `scale`)
            assert np.abs(fd[i, dropped, m, :]).max(initial=0.0) <= 1e-8 * scale
    # and the kept ones are not all zero
    assert any(np.abs(fd[i, sorted(s), m]).max() > 1e-6 for (i, m), s in stored.items() if i != m)


def test_block_tables_three_elements():
    sf = symmetry_functions(FingerprintConfig(preset="default"), ["Pt", "H", "O"])
    sub_idx, sub_len = sf.block_tables()
    # 3 elements: 12 G2 + 6 pairs x 4 G4 = 36; a partner element appears in 4 G2 and 3 pairs (12 G4)
    assert list(sf.n_functions) == [36, 36, 36]
    assert sub_len.shape == (3, 4)
    assert np.all(sub_len[:, :3] == 16) and np.all(sub_len[:, 3] == 36)
    fs = sf.to_dict()["functions"]["H"]
    assert [f["elements"] for f in fs[12:18]] == [
        ["H", "H"],
        ["H", "O"],
        ["H", "Pt"],
        ["O", "O"],
        ["O", "Pt"],
        ["Pt", "Pt"],
    ]
    assert sorted(sub_idx[0, 2, :16]) == [f for f, fn in enumerate(fs) if _involves(fn, "Pt")]


def test_multi_image_chunks_and_float32():
    if not REF_TRAJ.exists():
        pytest.skip(f"reference data {REF_TRAJ} not found")
    from hpcpot.training.data import read_structures

    st, _ = read_structures([str(REF_TRAJ)], need_forces=False, index=":5")
    sf = symmetry_functions(FingerprintConfig(preset="default"), list(st.elements))
    G, b = compute_fingerprints(st, sf)
    # chunking (one image per chunk) gives identical results
    G1, b1 = compute_fingerprints(st, sf, chunk_pairs=1)
    np.testing.assert_array_equal(G1, G)
    np.testing.assert_array_equal(b1.values, b.values)
    np.testing.assert_array_equal(b1.image_ptr, b.image_ptr)
    # the value count a training passes (from neighbour_statistics) is exact; a wrong one
    # (too small: the array grows, too large: it is trimmed) changes nothing either
    _, counts = neighbour_statistics(st, sf.cutoff)
    exact = int((counts * sf.block_tables()[1]).sum()) * 3
    assert exact == len(b.values)
    for n in (exact, 7, exact + 1000):
        _, bn = compute_fingerprints(st, sf, chunk_pairs=1, n_values=n)
        np.testing.assert_array_equal(bn.values, b.values)
    # pairs of image j have centre and partner inside image j
    for j in range(st.n_images):
        sl = slice(b.image_ptr[j], b.image_ptr[j + 1])
        assert b.image_ptr[j + 1] > b.image_ptr[j]
        for arr in (b.centre[sl], b.partner[sl]):
            assert arr.min() >= st.atom_ptr[j] and arr.max() < st.atom_ptr[j + 1]
    # multi-image G equals per-image G
    import ase.io

    for j, atoms in enumerate(ase.io.read(str(REF_TRAJ), ":5")):
        np.testing.assert_allclose(G[st.atom_ptr[j] : st.atom_ptr[j + 1]], fingerprints(atoms, sf), rtol=1e-13)
    # float32 storage
    G32, b32 = compute_fingerprints(st, sf, dtype=np.float32)
    assert b32.values.dtype == np.float32
    np.testing.assert_array_equal(G32, G)
    np.testing.assert_allclose(b32.values, b.values, rtol=1e-6, atol=1e-7 * np.abs(b.values).max())
    # without derivatives
    G0, b0 = compute_fingerprints(st, sf, with_derivs=False)
    assert b0 is None
    np.testing.assert_array_equal(G0, G)


def test_pair_kind_counts_give_the_exact_derivative_size(ref_structures):
    """The memory forecast's count: pairs by (centre element, partner kind) times the
    functions each kind moves equals the stored derivatives, on slabs, a cell smaller than the
    cutoff (periodic images fold into one pair) and a molecule."""
    from ase.build import bulk

    from hpcpot.potential.fingerprints import pair_kind_counts
    from hpcpot.potential.structures import concat_structures

    small = bulk("Pt", "fcc", a=3.9)
    small.append("O")
    small.positions[-1] = [1.0, 1.0, 1.0]
    mol = molecule("H2O")
    mol.symbols = ["O", "O", "O"]  # Pt/O model: an O3 molecule in no cell
    st = concat_structures([ref_structures.subset(np.arange(5)), structure_arrays(small, ("O", "Pt")),
                            structure_arrays(mol, ("O", "Pt"))], ("O", "Pt"))  # fmt: skip
    sf = symmetry_functions(FingerprintConfig(preset="default", cutoff=6.5), ["O", "Pt"])
    _, sub_len = sf.block_tables()
    counts = pair_kind_counts(st, 6.5)
    _, blocks = compute_fingerprints(st, sf, True)
    assert counts.sum() == len(blocks.centre)
    assert (counts * sub_len).sum() * 3 == len(blocks.values)
    assert derivative_value_count(counts, sf) == len(blocks.values)
