"""The rooms of the code (docs/adr/0008-package-layout.md): sub-packages that stay small,
faces that re-export every public name without importing it, arrows between rooms that point
only where the architecture allows, and no class or function that outgrows a screen or two."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.write_faces import NOT_IN_FACES, ROOT, TOPS, declared_all, rooms

MAX_MODULES_PER_FOLDER = 12
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def _packages() -> list[Path]:
    return sorted(init.parent for top in TOPS for init in (ROOT / top).rglob("__init__.py"))


def _dotted(folder: Path) -> str:
    return "consortia." + ".".join(folder.relative_to(ROOT).parts)


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # module.name: a name imported from a package face counts as the face's import.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_folder_holds_more_than_twelve_modules() -> None:
    crowded = {
        str(p.relative_to(ROOT)): len(_modules(p))
        for p in _packages()
        if len(_modules(p)) > MAX_MODULES_PER_FOLDER
    }
    assert not crowded, f"folders over {MAX_MODULES_PER_FOLDER} modules: {crowded}"


def test_every_source_folder_is_a_package() -> None:
    loose = [
        str(folder.relative_to(ROOT))
        for top in TOPS
        for folder in (ROOT / top).rglob("*")
        if folder.is_dir()
        and folder.name != "__pycache__"
        and any(folder.glob("*.py"))
        and not (folder / "__init__.py").is_file()
    ]
    assert not loose, f"folders with modules but no __init__.py (not installed): {loose}"


@pytest.mark.parametrize("room", rooms(), ids=lambda p: str(p.relative_to(ROOT)))
def test_face_re_exports_every_public_name(room: Path) -> None:
    face = importlib.import_module(_dotted(room))
    exports: dict[str, str] = face._EXPORTS
    # ruff (RUF022) keeps __all__ sorted; it must name exactly what the face maps.
    assert len(face.__all__) == len(set(face.__all__)) and set(face.__all__) == set(exports)
    # A name that is also a module of the room (a function named after its module) is not
    # re-exported: importing that module would rebind the face's attribute to the module.
    taken = {m.stem for m in _modules(room)} | {p.name for p in room.iterdir() if p.is_dir()}
    expected: dict[str, str] = {}
    for module in _modules(room):
        if module.stem not in NOT_IN_FACES:
            for name in declared_all(ast.parse(module.read_text(encoding="utf-8"))):
                if name not in taken:
                    expected.setdefault(name, module.stem)
    assert exports == expected, f"{room}: face out of date (python -m tests.support.write_faces)"
    for name, stem in exports.items():
        defined = importlib.import_module(f"{_dotted(room)}.{stem}")
        assert getattr(face, name) is getattr(defined, name)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = face.not_a_name


def test_importing_a_face_imports_none_of_its_modules() -> None:
    faces = [_dotted(room) for room in rooms()]
    probe = (
        "import importlib, sys\n"
        f"faces = {faces!r}\n"
        "for face in faces:\n"
        "    importlib.import_module(face)\n"
        "loaded = [m for m in sys.modules if any(m.startswith(f + '.') for f in faces)]\n"
        "print(' '.join(sorted(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(result.stdout.split())
    # A face may import another face (a sub-package), never a module of its own.
    assert all(m in faces for m in loaded), sorted(set(loaded) - set(faces))


def _server_imports(room: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "server" / room).rglob("*.py"):
        others = {
            m
            for m in _imports(path)
            if m.startswith("consortia.server.") and not m.startswith(f"consortia.server.{room}")
        }
        if others:
            found[str(path.relative_to(ROOT))] = others
    return found


@pytest.mark.parametrize(
    ("room", "allowed"),
    [
        # The report and the audit only read run folders (and may stop a run it follows).
        (
            "report",
            (
                "consortia.server.run.record",
                "consortia.server.run.folder",
                "consortia.server.control",
            ),
        ),
        ("audit", ("consortia.server.run.record", "consortia.server.run.folder")),
        # The register of sites stands alone: it needs only the SuperLink's control API.
        ("registry", ("consortia.server.control",)),
    ],
)
def test_server_rooms_import_only_what_they_may(room: str, allowed: tuple[str, ...]) -> None:
    found = _server_imports(room)
    bad = {
        path: sorted(m for m in mods if not m.startswith(allowed)) for path, mods in found.items()
    }
    bad = {path: mods for path, mods in bad.items() if mods}
    assert not bad, f"server/{room} may import only {allowed} from server/: {bad}"


def test_client_data_never_imports_its_parent() -> None:
    bad = {
        str(path.relative_to(ROOT)): sorted(
            m
            for m in _imports(path)
            if m.startswith("consortia.client") and not m.startswith("consortia.client.data")
        )
        for path in (ROOT / "client" / "data").rglob("*.py")
    }
    bad = {path: mods for path, mods in bad.items() if mods}
    assert not bad, f"client/data imports the rest of client/: {bad}"


def test_common_rooms_do_not_reach_into_each_others_commands() -> None:
    # common/ rooms share code, never a command: only the CLI root imports command modules.
    bad = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if "cli" in m.split(".")[:-1])
        for path in (ROOT / "common").rglob("*.py")
        if path.name != "cli.py"
    }
    bad = {path: mods for path, mods in bad.items() if mods}
    assert not bad, bad


def _oversized() -> list[str]:
    found = []
    for top in TOPS:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                if lines > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    return sorted(found)


def test_no_class_or_function_outgrows_its_limit() -> None:
    oversized = _oversized()
    assert not oversized, (
        f"classes over {MAX_CLASS_LINES} or functions over {MAX_FUNCTION_LINES} lines: {oversized}"
    )


def test_architecture_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(ROOT))
        for top in TOPS
        for path in sorted((ROOT / top).rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.relative_to(ROOT)}`" not in text
    ]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_server_and_client_never_import_each_other() -> None:
    forbidden = {
        "server": ("consortia.client",),
        "client": ("consortia.server",),
        "common": ("consortia.client", "consortia.server"),
    }
    for side, prefixes in forbidden.items():
        for path in (ROOT / side).rglob("*.py"):
            bad = [m for m in _imports(path) if m.startswith(prefixes)]
            assert not bad, f"{path} imports {bad}"
