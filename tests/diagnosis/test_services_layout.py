"""The layering of diagnosis/services/ and diagnosis/selectors.py: services
write and may read through selectors, selectors never call services, each
stage module imports only the modules before it, and only dispatch reaches
the task module."""
import ast
from pathlib import Path

import pytest

from diagnosis import selectors, services

DIAGNOSIS = Path(services.__file__).resolve().parent.parent
#: The documented order of services/__init__.py: a module imports only modules before it.
ORDER = ["errors", "audit", "transactions", "case_state", "text", "files", "dispatch", "intake", "display",
         "classification", "recovery", "records", "review", "signout", "export", "backup"]


def imported_modules(path):
    """(level, module) of every import in a file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            # "from .. import notifications" counts as importing notifications.
            found += [(node.level, node.module)] if node.module else [(node.level, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
    return found


def test_every_name_in_all_is_importable_from_the_package():
    assert len(services.__all__) == len(set(services.__all__))
    for name in services.__all__:
        assert hasattr(services, name), name


def test_services_keep_the_names_views_tasks_and_tests_use():
    for name in ("review_smear", "sign_out", "add_smears", "check_image", "record_prediction", "InvalidModelOutput",
                 "CaseLocked", "ReviewConflict", "review_queue", "label_display", "export_reviewed",
                 "_refresh_case_by_id", "_inside"):
        assert hasattr(services, name), name


@pytest.mark.parametrize("module", ORDER)
def test_a_stage_module_imports_only_modules_before_it(module):
    """A stage is a module, or a package of modules (backup) whose files import each other and, one level up, only
    the stages before it."""
    allowed = set(ORDER[: ORDER.index(module)])
    lower_layers = {"models", "selectors", "formatting", "notifications", "tasks"}
    package = DIAGNOSIS / "services" / module
    files = sorted(package.glob("*.py")) if package.is_dir() else [DIAGNOSIS / "services" / f"{module}.py"]
    depth = 1 if package.is_dir() else 0  # how much deeper than services/ its files lie
    for path in files:
        for level, name in imported_modules(path):
            if level == 1 + depth and name:  # from .x import ... (a stage module)
                assert name.split(".")[0] in allowed, f"{path.name} of {module} imports {'.' * level}{name}"
            if level == 2 + depth and name:  # from ..x import ...: the app's lower layers only
                assert name.split(".")[0] in lower_layers, name


def test_only_dispatch_imports_the_task_module():
    importers = [
        path.stem for path in (DIAGNOSIS / "services").rglob("*.py")
        if any(name.split(".")[-1] == "tasks" for _, name in imported_modules(path))
    ]
    assert importers == ["dispatch"]


def test_selectors_never_import_services_tasks_or_views():
    for level, name in imported_modules(Path(selectors.__file__)):
        top = name.split(".")[0] if level else name
        assert top not in {"services", "tasks", "views", "review_views", "diagnosis.services", "diagnosis.tasks"}, name
