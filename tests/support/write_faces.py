"""Write every room's face (its ``__init__.py``) from its modules' docstrings and ``__all__``.

Run ``python -m tests.support.write_faces`` after adding a module or a public name to a room;
``tests/unit/test_layout.py`` fails until the faces match (docs/adr/0008-package-layout.md).
The first paragraph of an existing face's docstring (what the room is for) is kept.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("server", "client", "common")
# Modules a face leaves out: command modules (Typer apps, imported by the CLI only), the
# record-key constants (read as a namespace, `records as rk`) and the face helper itself.
NOT_IN_FACES = {"cli", "approve_cli", "records", "faces"}


def declared_all(tree: ast.Module) -> list[str]:
    """The names a module's literal `__all__` lists."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def _first_sentence(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree) or ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    return first.split(". ")[0].rstrip(".:") + "."


def face_text(room: Path) -> str:
    """The face of ``room``: its purpose, one line per module, lazy re-exports."""
    package = "consortia." + ".".join(room.relative_to(ROOT).parts)
    old = ast.get_docstring(ast.parse((room / "__init__.py").read_text())) or ""
    purpose = old.split("\n\nThe modules")[0].replace("\n", " ")
    lines = [textwrap.fill(purpose, 96), "", "The modules, one concept each:", ""]
    taken = {p.stem for p in room.glob("*.py")} | {p.name for p in room.iterdir() if p.is_dir()}
    exports: dict[str, str] = {}
    for module in sorted(p for p in room.glob("*.py") if p.name != "__init__.py"):
        tree = ast.parse(module.read_text())
        entry = f"- ``{module.stem}``: {_first_sentence(tree)}"
        lines.append(textwrap.fill(entry, 96, subsequent_indent="  "))
        if module.stem not in NOT_IN_FACES:
            for name in declared_all(tree):
                if name not in taken:
                    exports.setdefault(name, module.stem)
    text = '"""' + "\n".join(lines) + '\n"""\n\nfrom typing import TYPE_CHECKING\n\n'
    text += "from consortia.common.faces import lazy_face\n\n"
    if exports:
        text += "if TYPE_CHECKING:\n"
        for stem in dict.fromkeys(exports.values()):
            names = sorted(n for n, s in exports.items() if s == stem)
            text += f"    from {package}.{stem} import (\n"
            text += "".join(f"        {n} as {n},\n" for n in names) + "    )\n"
    text += "\n__all__ = [\n" + "".join(f'    "{n}",\n' for n in sorted(exports)) + "]\n"
    text += "\n_EXPORTS = {\n"
    text += "".join(f'    "{n}": "{exports[n]}",\n' for n in sorted(exports)) + "}\n"
    return text + "\n__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)\n"


def rooms() -> list[Path]:
    """Every sub-package with a face: all packages but the three tops and client/data."""
    return sorted(
        init.parent
        for top in TOPS
        for init in (ROOT / top).rglob("*/__init__.py")
        if init.parent.relative_to(ROOT).parts != ("client", "data")
    )


def main() -> None:
    for room in rooms():
        (room / "__init__.py").write_text(face_text(room))


if __name__ == "__main__":
    main()
