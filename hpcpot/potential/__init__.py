"""Running a trained model: what ASE, ``hpcpot.evaluate`` and the LAMMPS pair style need.

structures    atoms as flat arrays (Å, eV, eV/Å)
symmetry      the symmetry-function definition (parameters and order)
fingerprints  symmetry functions and their sparse position derivatives (numba)
network       per-element networks and the flat parameter layout
predict       energies and forces of a batch of structures
modelfile     the model file (docs/model-format.md)
calculator    the ASE calculator

Nothing here imports the training half, the MPI layer or the training config.
"""
