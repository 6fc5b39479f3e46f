"""HDF5: safety checks before libhdf5 reads, attribute and heap walkers, and the Keras layouts inside (.weights.h5 variables, model configs)."""
