"""The torch-free floor that server/, training/ and bench/ stand on.

- ganserve.store      the model store: manifests, sha256, atomic publish, resolving and opening a version
- ganserve.metrics    divergence estimators, one module per family, with their intervals
- ganserve.data       MNIST, scikit-learn's digits and the 2-D Gaussian mixtures with their densities
- ganserve.inversion  Invert without torch: the gradient-graph builder and the optimisation runtime

It imports numpy/scipy/onnx/onnxruntime/POT and never server, training, sdk or torch.
"""
