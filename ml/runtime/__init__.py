"""Serving without PyTorch: the models run on ONNX Runtime with numpy/Pillow preprocessing.

Nothing in this package imports torch. ``python -m ml export --model NAME`` (training profile) writes,
beside each shipped ``NAME.pt``:

- ``NAME.onnx``: the network, inputs ``input`` (N, 3, S, S) float32, outputs ``logits`` and ``embedding``
  (what the domain check scores), batch size dynamic;
- ``NAME.runtime.json`` + ``NAME.runtime.npz``: the model file minus its weights (classes, temperature,
  threshold, input normalisation, the fitted domain check...), with the sha256 of the ``.pt`` it came
  from, so a retrained ``.pt`` next to a stale export is never served (``export.check``).

``ml.load_predictor(name)`` (``loader.py``) serves the export on ONNX Runtime when it is there and
current, PyTorch otherwise; ``ML_RUNTIME=auto|onnx|torch`` forces one.
"""
