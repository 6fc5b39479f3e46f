"""transcoder: move neural-network weights between PyTorch and Keras, and prove they still compute the same."""
__version__ = "0.1.0"
