"""Serving without PyTorch: the models run on ONNX Runtime with numpy/Pillow preprocessing.

Imports numpy, Pillow and (in ``onnx_predictor``) onnxruntime only: never torch, timm, sklearn, Django or an
``ml`` module outside ``ml/runtime`` (``tests/test_runtime_profile.py`` checks). ``python -m ml export
--model NAME`` (``ml.onnx_export``, training profile) writes, beside each shipped ``NAME.pt``:

- ``NAME.onnx``: the network, input ``input`` (N, 3, S, S) float32, outputs ``logits`` and ``embedding``
  (what the domain check scores), batch size dynamic;
- ``NAME.runtime.json`` + ``NAME.runtime.npz``: the model file minus its weights (classes, temperature,
  threshold, input normalisation, the fitted domain check...), with the sha256 of the ``.pt`` it came
  from, so a retrained ``.pt`` next to a stale export is never served (``export_files.check``).

``ml.load_predictor(name)`` serves the export on ONNX Runtime when it is there and current, PyTorch
otherwise (``loader.choose_runtime``); ``ML_RUNTIME=auto|onnx|torch`` forces one.
"""
