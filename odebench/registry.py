"""A registry of named plugins (teacher families, student kinds): built-in modules that register themselves
when imported, then installed packages' entry points, both loaded on first use so `import odebench` stays light."""
from __future__ import annotations

from typing import Generic, Iterable, TypeVar

from odebench.errors import OdebenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items by `.name`, in registration order; `what` names an item in messages ("teacher family")."""

    def __init__(self, what: str, builtin: Iterable[str], group: str) -> None:
        self.what, self.builtin, self.group = what, tuple(builtin), group
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        """Add an item (a later registration of the same name replaces the earlier one)."""
        if not getattr(item, "name", None):
            raise ValueError(f"a {self.what} needs a name")
        self._items[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def items(self) -> list[T]:
        self._load()
        return list(self._items.values())

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise OdebenchError(f"unknown {self.what} {name!r}: known {', '.join(self._items)}") from None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the built-in modules call register() while they import
        import importlib

        for module in self.builtin:
            importlib.import_module(module)
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group=self.group):
                item = ep.load()
                self.register(item() if isinstance(item, type) else item)
        except Exception as e:  # a broken plugin must not pass silently, nor take the built-in items down with a traceback
            raise OdebenchError(f"cannot load a {self.what} plugin ({self.group}): {e}") from None
