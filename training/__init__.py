"""ganserve training: data, models, losses, trainers, evaluator, export and publish.

`python -m training.run <config>` trains a model. This package's torch-free modules (`training.data`,
`training.metrics`) are also used by the server; importing `training` itself imports nothing heavy.
"""
