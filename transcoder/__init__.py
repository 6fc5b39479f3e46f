"""transcoder: move neural-network weights between PyTorch and Keras, and prove they still compute the same."""
from ._version import __version__
