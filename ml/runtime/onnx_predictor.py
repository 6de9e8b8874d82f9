"""``OnnxPredictor``: the prediction contract (``contract.PredictorContract``) on ONNX Runtime.

Same public API and results as ``ml.predict.Predictor`` (the PyTorch one) to float32 rounding, which
``python -m ml export`` measures on real test images and records in the model card. No torch import.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .contract import PredictorContract
from .export_files import ExportFiles, read_runtime_files

THREADS_ENV = "ML_RUNTIME_THREADS"


def intra_op_threads() -> int:
    """Threads for one forward pass: ``ML_RUNTIME_THREADS``, else ``OMP_NUM_THREADS``, else 0 (ONNX
    Runtime's default: one per physical core). A worker running N processes on C cores sets C // N."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def session(onnx_file: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads() if threads is None else threads
    options.inter_op_num_threads = 1  # one graph at a time: the parallelism is inside the operators
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxPredictor(PredictorContract):
    runtime = "onnx"

    def __init__(self, model_file: str | Path, with_domain: bool = True, threads: int | None = None):
        """``model_file`` is the ``NAME.pt`` the export was made from (only its sha256 is read);
        raises ``StaleExport`` when the export beside it is missing or belongs to another version."""
        self.files = ExportFiles.beside(model_file)
        self.path = self.files.model
        payload, self.record = read_runtime_files(self.files)
        self._read_payload(payload, with_domain)
        self.session = session(self.files.onnx, threads)
        self.threads = (intra_op_threads() if threads is None else threads) or os.cpu_count() or 1
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self.input_name = self.record["input"]
        self.output_names = list(self.record["outputs"])

    def _pool(self) -> ThreadPoolExecutor:
        """Preparation threads, one pool per process (threads do not survive a worker's fork)."""
        pid = os.getpid()
        if pid not in self._pools:
            self._pools = {pid: ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="ml-prepare")}
        return self._pools[pid]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a float32 (N, 3, S, S) batch: the bare runtime call.
        InferenceSession.run is thread-safe, so threads of one process share the session unlocked."""
        logits, embeddings = self.session.run(self.output_names, {self.input_name: batch})
        return logits, embeddings

    def predict_outputs(self, images, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = list(images)
        if not images:
            return self._empty_outputs()
        logits, embeddings, stats = [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = np.empty((len(chunk), 3, self.input_size, self.input_size), dtype=np.float32)
            # Decoding, resizing and numpy release the GIL, so a batch is prepared on as many threads as the
            # forward pass gets: preparation is most of predict()'s cost beside the network (python -m ml bench).
            prepare = lambda pair: self.prepare_array(pair[0], out=pair[1])[1]  # noqa: E731
            pairs = list(zip(chunk, batch))
            stats += list(self._pool().map(prepare, pairs)) if len(pairs) > 1 and self.threads > 1 \
                else [prepare(pair) for pair in pairs]
            batch_logits, batch_embeddings = self.forward(batch)
            logits.append(batch_logits.astype(np.float64))
            embeddings.append(batch_embeddings.astype(np.float64))
        return np.concatenate(logits), np.concatenate(embeddings), np.stack(stats)
