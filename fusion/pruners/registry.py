"""The one registry of compression methods: ``name -> factory``.

A factory takes ``retention`` plus the method's own keyword parameters and returns a
:class:`~fusion.pruners.base.Compressor`. Registering a name twice raises; asking for an unknown name
lists the known ones; a parameter the factory does not declare is an error naming the accepted ones.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping

from fusion.errors import DuplicateMethodError, MethodConfigError, UnknownMethodError
from fusion.pruners.budget import check_retention


def _nearest(name, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Mapping[str, Callable]):
    """A name -> factory mapping with loud errors."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable] = {}

    def register(self, name: str, factory: Callable | None = None):
        """Register ``factory`` under ``name``; usable as a decorator (``@METHODS.register("x")``)."""

        def add(f: Callable) -> Callable:
            if name in self._factories:
                raise DuplicateMethodError(
                    f"a method named '{name}' is already registered ({self._factories[name]!r}); pick another name"
                )
            self._factories[name] = f
            return f

        return add if factory is None else add(factory)

    def __getitem__(self, name: str) -> Callable:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownMethodError(
                f"unknown method {name!r}{_nearest(name, self._factories)}; known methods: "
                f"{', '.join(sorted(self._factories))}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))

    def __len__(self) -> int:
        return len(self._factories)

    def parameters(self, name: str) -> list[str]:
        """Names of the keyword parameters the method accepts (besides ``retention``)."""
        sig = inspect.signature(self[name])
        return [p for p in sig.parameters if p not in ("self", "retention")]

    def build(self, name: str, retention: float = 1.0, **params):
        """Instantiate method ``name`` at ``retention`` with its own parameters."""
        factory = self[name]
        retention = check_retention(retention)
        sig = inspect.signature(factory)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        unknown = sorted(set(params) - set(sig.parameters)) if not takes_any else []
        if unknown:
            raise MethodConfigError(
                f"method '{name}' has no parameter(s) {unknown}{_nearest(unknown[0], self.parameters(name))}; "
                f"its parameters are: {', '.join(self.parameters(name)) or '(none)'}"
            )
        return factory(retention=retention, **params)


METHODS = Registry()
