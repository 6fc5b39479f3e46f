"""transcoder: move neural-network weights between PyTorch and Keras, and prove they still compute the same.

The stages, and the one direction of imports between them. Layers, bottom to top; a module
imports only modules of its own layer or of lower ones (imports inside functions included,
``tests/test_structure.py`` checks it), and no two modules import each other:

  1. errors, _version, printing      the exception family; the version; printing rows
  2. checkpoint                      Checkpoint and lazy TensorRef: what every stage speaks
  3. frameworks, options             importing torch/keras quietly; the options users give
  4. formats, rules                  readers and writers; the rule table, ops and plans (numpy)
  5. models                          live PyTorch and Keras models, inputs, the Keras rebuild
  6. pipeline, live                  read -> plan -> write; live models in the pipeline
  7. checks                          the forward check and its report
  8. bulk, tables                    a tree of checkpoints; printed tables
  9. cli, __main__                   the ``transcode`` command
"""
from ._version import __version__
