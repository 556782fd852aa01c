"""A value the user asked for (a model, device, dtype or decode path) and where it was asked.

Why: a kernel takes each from the call (a flag, or an API argument), then an environment
variable, then `%config Qwen3Magics.*`, and a message about a bad value must name the one the
user set: `%config Qwen3Magics.device = 'mps'` in an early cell was refused as "--device mps",
a flag never typed, and a configured `'tiny '` failed in the magic but worked from Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CALL, ENVIRONMENT, CONFIG = "call", "environment", "config"


@dataclass(frozen=True)
class Asked:
    """One option's value (trimmed) and where it came from: CALL, ENVIRONMENT or CONFIG."""

    option: str
    value: str
    where: str
    variable: str
    """The environment variable that may set the option."""

    @classmethod
    def first(
        cls, option: str, given: str | None, variable: str, configured: str | None
    ) -> Asked | None:
        """The call's value, then `variable`'s, then the configured one (the order the README
        gives everywhere); blank ones say nothing. None where none says anything."""
        for where, value in (
            (CALL, given),
            (ENVIRONMENT, os.environ.get(variable)),
            (CONFIG, configured),
        ):
            if value is not None and value.strip():
                return cls(option, value.strip(), where, variable)
        return None

    @property
    def place(self) -> str:
        """Where it was asked, as a message names it: `--device`, `$QWEN3_JUPYTER_DEVICE` or
        `%config Qwen3Magics.device` (a Python caller's `device=` is worded so by api_call)."""
        if self.where == ENVIRONMENT:
            return f"${self.variable}"
        if self.where == CONFIG:
            return f"%config Qwen3Magics.{self.option}"
        return "decode=" if self.option == "decode" else f"--{self.option}"

    def says(self, quoted: bool = False) -> str:
        """The setting as the user wrote it: `--device mps`, `$QWEN3_JUPYTER_DEVICE=mps`,
        `%config Qwen3Magics.device = 'mps'`; `quoted`: the value in quotes for the first two
        as well (one that may not be a word: `--device 'gpu'`)."""
        value = repr(self.value) if quoted else self.value
        if self.where == ENVIRONMENT:
            return f"${self.variable}={value}"
        if self.where == CONFIG:
            return f"{self.place} = {self.value!r}"
        if self.option == "decode":  # no such flag: the API's argument (the flags are valid)
            return f"decode={self.value!r}"
        return f"--{self.option} {value}"
