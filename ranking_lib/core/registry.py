"""`Registry`: the names of one choice (a `RunConfig` field such as ``backbone``) and what each builds.

Each registry lives in the module that builds its objects (backbones in ``models/backbones.py``,
optimisers in ``training/trainer.py``, ...). It is the one list of valid names: builders take
their object from it with :meth:`Registry.get`, which refuses an unknown name in one line, and
the CLI takes its ``choices`` from :meth:`Registry.names`.

    OPTIMIZERS = Registry("optimizer")

    @OPTIMIZERS.register("sgd")
    def _sgd(params, cfg): ...

    OPTIMIZERS.get(cfg.optimizer)(params, cfg)   # RankingError: optimizer must be one of ...
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ranking_lib.core.errors import RankingError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one choice, in registration order, each with its builder (or value)."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register `item` under `name` (a name is registered once)."""
        if name in self._items:
            raise ValueError(f"{self.field} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def get(self, name: str) -> T:
        """The builder registered as `name`; an unknown name is one RankingError listing the valid ones."""
        if name not in self._items:
            raise RankingError(f"{self.field} must be one of {', '.join(self._items)} (got {name!r})")
        return self._items[name]

    def check(self, name: str) -> str:
        """`name` if registered, else the one-line RankingError of :meth:`get`."""
        self.get(name)
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.field!r}: {', '.join(self._items)})"
