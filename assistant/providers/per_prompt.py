"""Values worked out once per prompt, kept as long as the prompt lives."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerPrompt(Generic[T]):
    """What `make()` gives for a prompt, made once per prompt object (from any thread)
    and dropped when the prompt is: a reply's request thread can work it out before
    the I/O loop, which runs every stream, asks for it."""

    def __init__(self) -> None:
        self._values: dict[int, T] = {}
        self._lock = threading.Lock()

    def get(self, prompt: object, make: Callable[[], T]) -> T:
        key = id(prompt)  # not reused while the prompt lives, and dropped as it dies
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = make()
        with self._lock:
            if key not in self._values:
                self._values[key] = value
                weakref.finalize(prompt, self._values.pop, key, None)
            return self._values[key]
