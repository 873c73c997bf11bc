"""ganserve training: networks, losses, trainers, evaluator, export and publish (torch lives here).

`python -m training.run <config>` trains a model. What serving shares with training (data, metrics, the store,
the inversion runtime) lives in the torch-free floor, `ganserve/`; importing `training` itself imports nothing heavy.
"""
