"""The import graph of ``gemma_chat`` (grimp, as import-linter sees it): no module takes part in
an import cycle. Imports under ``if TYPE_CHECKING`` count: a cycle through annotations still
ties modules together for a reader and for ``typing.get_type_hints``. The layers themselves are
import-linter's contracts (pyproject.toml, run by scripts/check.sh)."""

from __future__ import annotations

import grimp


def _cycles(imports: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module, or of one importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in imports.get(module, ()):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1 or module in imports.get(module, ()):
                found.add(frozenset(component))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return found


def _import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("gemma_chat", cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def test_the_cycle_finder_finds_cycles() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": {"a"}}
    assert _cycles(imports) == {frozenset("abc"), frozenset("d")}


def test_no_module_of_gemma_chat_is_in_an_import_cycle() -> None:
    assert _cycles(_import_graph()) == set()
