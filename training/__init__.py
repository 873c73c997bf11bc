"""ganserve training: data, models, losses, trainers, evaluator, export and publish.

`python -m training.run <config>` trains a model. This package's torch-free module `training.data` is
also used by the server (estimators live in `ganserve.metrics`); importing `training` itself imports nothing heavy.
"""
