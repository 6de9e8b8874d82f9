"""The layout of diagnosis/models/: one module per workflow stage, each importing only the stages before it
at module level, every model and constant importable from the package, as migrations and callers name them."""
import ast
import re
from pathlib import Path

import pytest
from django.apps import apps

from diagnosis import models

PACKAGE = Path(models.__file__).resolve().parent
#: The order of models/__init__.py: a module imports only modules before it (Case's methods import later ones when called).
ORDER = ["vocabulary", "cases", "intake", "classification", "records", "review"]


def module_level_imports(path):
    """Modules named by `from .x import ...` at the top level of a file (not inside functions)."""
    return [node.module for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module]


def test_the_package_holds_exactly_the_workflow_modules():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ORDER)


@pytest.mark.parametrize("module", ORDER)
def test_a_stage_module_imports_only_modules_before_it(module):
    allowed = set(ORDER[: ORDER.index(module)])
    for name in module_level_imports(PACKAGE / f"{module}.py"):
        assert name.split(".")[0] in allowed, f"{module} imports .{name}"


def test_every_model_of_the_app_is_importable_from_the_package():
    for model in apps.get_app_config("diagnosis").get_models():
        assert getattr(models, model.__name__) is model
        assert model._meta.app_label == "diagnosis"


def test_every_name_in_all_is_importable_from_the_package():
    assert len(models.__all__) == len(set(models.__all__))
    for name in models.__all__:
        assert hasattr(models, name), name


def test_the_upload_paths_migrations_name_still_resolve():
    # Migrations serialise upload_to as diagnosis.models.<function>; moving one without re-exporting it
    # would break every fresh migrate.
    migrations = (PACKAGE.parent / "migrations").glob("*.py")
    named = {name for path in migrations for name in
             re.findall(r"diagnosis\.models\.(\w+)", path.read_text())}
    assert named, "no upload path found in the migrations"
    for name in named:
        assert callable(getattr(models, name)), name
