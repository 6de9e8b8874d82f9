"""The runtime install profile has no PyTorch: serving (the worker's predictions and heat maps) must not
need it, and the web process must not even load the model runtime. Each check runs in a fresh
interpreter, with torch, torchvision and timm made unimportable where serving is checked."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TRAINING_PACKAGES = """
import sys
class NoTrainingPackages:  # as in the runtime profile: these are not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "pytorch_grad_cam"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTrainingPackages())
"""


def run_python(code, **env):
    import os

    result = subprocess.run([sys.executable, "-c", BLOCK_TRAINING_PACKAGES + textwrap.dedent(code)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_serving_predictions_and_heat_maps_need_no_pytorch():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    out = run_python("""
        import sys
        from PIL import Image, ImageDraw
        import ml
        from ml.explain import heatmap, overlay
        field = Image.new("RGB", (300, 260), (230, 215, 225))
        ImageDraw.Draw(field).ellipse([80, 70, 200, 190], fill=(120, 60, 150))
        for name in ("staging", "screening"):
            predictor = ml.load_predictor(name)
            result = predictor.predict([field])[0]
            assert predictor.runtime == "onnx" and "in_domain" in result, result
            assert overlay(field, heatmap(predictor, field)).size == field.size
        print(sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_the_runtime_imports_no_ml_module_outside_it():
    out = run_python("""
        import pkgutil, sys
        import ml, ml.runtime
        for module in pkgutil.iter_modules(ml.runtime.__path__):
            __import__(f"ml.runtime.{module.name}")
        print(sorted(m for m in sys.modules if m.startswith("ml.") and not m.startswith("ml.runtime")))
    """)
    assert out.strip() == "[]"


def test_without_pytorch_a_stale_export_is_refused_with_the_reason(tmp_path):
    import shutil

    from ml.runtime.export_files import ExportFiles
    from ml.runtime.loader import WEIGHTS_DIR

    shipped = ExportFiles.beside(WEIGHTS_DIR / "staging.pt")
    copy = ExportFiles.beside(tmp_path / "staging.pt")
    for source, target in zip((shipped.model, shipped.onnx, shipped.meta, shipped.arrays),
                              (copy.model, copy.onnx, copy.meta, copy.arrays)):
        shutil.copyfile(source, target)
    with open(copy.model, "ab") as handle:
        handle.write(b"retrained")
    out = run_python(f"""
        import ml
        try:
            ml.load_predictor({str(copy.model)!r})
        except ValueError as exc:
            print(exc)
    """)
    assert "exported from another staging.pt" in out and "PyTorch is not installed" in out


def test_the_web_process_and_the_task_module_load_no_model_runtime():
    out = run_python("""
        import sys
        import django
        django.setup()
        import leukportal.urls, leukportal.wsgi, diagnosis.views, diagnosis.review_views, diagnosis.tasks
        print(sorted(m for m in ("torch", "timm", "onnxruntime", "ml.runtime", "ml.predict") if m in sys.modules))
    """, DJANGO_SETTINGS_MODULE="leukportal.settings")
    assert out.strip().splitlines()[-1] == "[]"
