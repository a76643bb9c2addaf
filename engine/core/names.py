"""Names a user types: when one is unknown, say which valid name was probably meant.

One home for the "did you mean" rule, used by the engine's own errors (inits,
kernels, datasets, presets, optimizers, layer types) and by the server's
answers: a name that differs only in case, `-` or spaces from a valid one
points to it; otherwise the closest valid name by spelling, if any is close.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def _folded(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def closest(name, choices: Iterable[str]) -> str | None:
    """The valid name `name` most probably meant, or None when none is close."""
    if not isinstance(name, str):
        return None
    choices = [str(choice) for choice in choices]
    folded = {_folded(choice): choice for choice in choices}
    if _folded(name) in folded:
        return folded[_folded(name)]
    match = difflib.get_close_matches(_folded(name), list(folded), n=1, cutoff=0.7)
    return folded[match[0]] if match else None


def unknown(what: str, name, choices: Iterable[str], listed: str = "valid names") -> str:
    """ "unknown init 'He_Normal'; did you mean 'he_normal'? valid names: ..." for one unknown name."""
    choices = [str(choice) for choice in choices]
    guess = closest(name, choices)
    hint = f"; did you mean {guess!r}?" if guess is not None else ";"
    return f"unknown {what} {name!r}{hint} {listed}: {', '.join(choices)}"
