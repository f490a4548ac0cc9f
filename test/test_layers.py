"""The layers of the tree, read from the code's own imports (issue 10).

``common`` is shared by every protocol and imports none; SixChat uses IRP only through
its client API; the intermediary (issue 12) uses IRP only through its client API and never
SixChat (it stores sealed messages it cannot open), while SixChat's agent uses the
intermediary's client; sixid (issue 13) uses IRP only through its client API, its server
not even that (the registry that hosts it passes its parts in), and SixChat uses sixid's
core and client but never its server; IRP's wire format knows nothing of its server or client; nothing installed
imports the tests or the tools. A module that breaks a rule fails here with the import that
does.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial import unittest

from test.helpers import REPOSITORY

#: (package of the importing module, prefixes it may not import, prefixes allowed anyway).
RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("common", ("irp", "sixchat", "intermediary", "sixid", "test", "tools"), ()),
    ("irp", ("sixchat", "intermediary", "test", "tools"), ()),
    ("intermediary", ("irp", "sixchat", "sixid", "test", "tools"), ("irp.client", "irp.DEFAULT_PORT")),
    ("irp.wire", ("irp.server", "irp.client", "irp.cli", "irp.tap"), ()),
    ("irp.client", ("irp.server", "irp.cli", "irp.tap"), ()),
    ("sixchat", ("irp", "sixid.server", "test", "tools"), ("irp.client", "irp.DEFAULT_PORT")),
    ("sixid", ("irp", "sixchat", "intermediary", "test", "tools"), ("irp.client", "irp.DEFAULT_PORT")),
    ("sixid.server", ("irp",), ()),
)


def _modules() -> Iterator[tuple[str, str]]:
    """(dotted name, path) of every module of the installed packages."""
    for top in ("common", "irp", "sixchat", "intermediary", "sixid"):
        for folder, _, files in os.walk(os.path.join(REPOSITORY, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    relative = os.path.relpath(path, REPOSITORY)[: -len(".py")]
                    yield relative.replace(os.sep, ".").removesuffix(".__init__"), path


def _imports(module: str, path: str) -> Iterator[str]:
    """Every name ``path`` imports, absolute (``from x import y`` gives x.y: a module or a
    name defined in x)."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class LayerTests(unittest.TestCase):
    """Which way imports run."""

    def test_rules(self) -> None:
        """No module imports across a layer it may not; the message names each offence."""
        offences = []
        for module, path in _modules():
            for imported in set(_imports(module, path)):
                for package, refused, allowed in RULES:
                    if not _under(module, package):
                        continue
                    if any(_under(imported, prefix) for prefix in refused) and not any(
                        _under(imported, prefix) for prefix in allowed
                    ):
                        offences.append(f"{module} imports {imported} (rule of {package})")
        self.assertEqual(sorted(set(offences)), [])


    def test_imports_read(self) -> None:
        """The reader sees each form of import, relative ones made absolute (a rule never
        passes for want of reading)."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as source:
            source.write("import a.b\nfrom irp import errors\nfrom . import sibling\nfrom ..wire import framing\n")
        found = set(_imports("common.pki.trust", path))
        self.assertEqual(found, {"a.b", "irp.errors", "common.pki.sibling", "common.wire.framing"})
        self.assertTrue(_under("irp.client.api", "irp.client"))
        self.assertFalse(_under("irpx", "irp"))
