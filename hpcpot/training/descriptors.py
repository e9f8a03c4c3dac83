"""The symmetry-function set a training uses, from the config's [fingerprints] table.

Named presets and explicit lists (global, or per element) become a
:class:`hpcpot.potential.symmetry.SymmetryFunctions`; the potential itself knows nothing of
the config.
"""

from __future__ import annotations

import numpy as np

from ..potential.symmetry import SymmetryFunctions
from .config import ConfigError, FingerprintConfig

DEFAULT_G2_ETAS = [0.05, 4.0, 20.0, 80.0]
AMP_G2_ETAS = list(np.logspace(np.log10(0.05), np.log10(5.0), num=4))  # Amp 1.0.1's default
DEFAULT_G4_ETAS = [0.005]
DEFAULT_G4_ZETAS = [1.0, 4.0]
DEFAULT_G4_GAMMAS = [1.0, -1.0]


def symmetry_functions(cfg: FingerprintConfig, elements: list[str]) -> SymmetryFunctions:
    """The set for ``elements`` (sorted by symbol inside) that ``cfg`` describes."""
    base = {
        "g2_etas": cfg.g2_etas if cfg.g2_etas is not None else (AMP_G2_ETAS if cfg.preset == "amp" else DEFAULT_G2_ETAS),
        "g2_offsets": cfg.g2_offsets,
        "g4_etas": cfg.g4_etas if cfg.g4_etas is not None else DEFAULT_G4_ETAS,
        "g4_zetas": cfg.g4_zetas if cfg.g4_zetas is not None else DEFAULT_G4_ZETAS,
        "g4_gammas": cfg.g4_gammas if cfg.g4_gammas is not None else DEFAULT_G4_GAMMAS,
    }
    unknown = sorted(set(cfg.elements) - set(elements))
    if unknown:
        raise ConfigError(
            f"[fingerprints.elements.{unknown[0]}]: {unknown[0]} is not an element of the model ({', '.join(sorted(elements))})"
        )
    per = {}
    for el in elements:
        p = dict(base)
        over = cfg.elements.get(el)
        if over is not None:
            p.update({k: v for k, v in vars(over).items() if v is not None})
        per[el] = p
    return SymmetryFunctions.from_lists(elements, cfg.cutoff, per)
