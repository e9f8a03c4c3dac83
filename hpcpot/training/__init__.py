"""Fitting a model: the training half, built on :mod:`hpcpot.potential`.

config        the TOML config, validated up front
descriptors   the symmetry-function set a config asks for
data, hdf5    reading and validating reference data (ASE formats, prepared HDF5)
shard         which images each MPI rank owns
loss          Amp's loss and its gradient on one shard
optimizers    rank-0 optimisers behind one driver loop
anneal        simulated annealing
checkpoint    atomic checkpoints
cache         the fingerprint cache
trainer       a whole run: data -> fingerprints -> optimiser -> model
"""
