"""The softmax family's kind strings, parsed once for the losses (dlcpu.nn.softmax_cross_entropy),
the row kernels (dlcpu.approx.softmax) and the command line (`dlcpu train digits --loss`).

    softmax           p_i = e^{z_i} / sum_j e^{z_j}
    taylor:n          p_i = f_n(z_i) / sum_j f_n(z_j), f_n(z) = sum_{k<=n} z^k/k!, n even in 2..10
    sm-softmax:m      soft-margin softmax: the target logit enters as z_y - m (numerator and sum)
    sm-taylor:n:m     both: f_n with the target logit z_y - m
"""
import math
import re
from dataclasses import dataclass

import numpy as np

#: the orders taylor kinds accept (the paper expands up to ten terms; odd orders are refused)
TAYLOR_ORDERS = (2, 4, 6, 8, 10)
_FORMS = "softmax, taylor:<n>, sm-softmax:<m> or sm-taylor:<n>:<m>"


@dataclass(frozen=True)
class LossKind:
    """A parsed loss kind: name 'softmax', 'taylor', 'sm-softmax' or 'sm-taylor'; order the
    Taylor order (None for the exp kinds); margin the target-class margin (0.0 without one).
    str() gives the canonical kind string, which parse_loss_kind reads back to an equal kind."""

    name: str
    order: int | None = None
    margin: float = 0.0

    @property
    def taylor(self):
        return self.order is not None

    def __str__(self):
        m = f"{self.margin:g}" if float(f"{self.margin:g}") == self.margin else repr(self.margin)
        return {"softmax": "softmax", "taylor": f"taylor:{self.order}", "sm-softmax": f"sm-softmax:{m}",
                "sm-taylor": f"sm-taylor:{self.order}:{m}"}[self.name]


def _order(text, kind):
    if not re.fullmatch(r"\+?\d+", text.strip()):
        raise ValueError(f"loss kind {kind!r}: the order must be an even integer from 2 to 10, got {text!r}")
    n = int(text)
    if n % 2:
        raise ValueError(f"loss kind {kind!r}: the order must be even, got {n}: a Taylor polynomial of odd order "
                         f"has a real root, so it goes negative and the probabilities are not defined")
    if not 2 <= n <= 10:
        raise ValueError(f"loss kind {kind!r}: the order must be an even integer from 2 to 10, got {n}")
    return n


def _margin(text, kind):
    try:
        m = float(text)
    except ValueError:
        raise ValueError(f"loss kind {kind!r}: the margin must be a finite number >= 0, got {text!r}") from None
    if not (math.isfinite(m) and m >= 0):
        raise ValueError(f"loss kind {kind!r}: the margin must be a finite number >= 0, got {m!r}")
    return m + 0.0  # -0.0 -> 0.0


def parse_loss_kind(kind):
    """'softmax', 'taylor:<n>', 'sm-softmax:<m>' or 'sm-taylor:<n>:<m>' (or a LossKind, returned
    as it is) -> LossKind.  n: an even order from 2 to 10; m: a finite margin >= 0.  ValueError
    naming the rule and the value otherwise; TypeError for a non-string."""
    if isinstance(kind, LossKind):
        return kind
    if not isinstance(kind, str):
        raise TypeError(f"loss kind must be a string such as 'taylor:4', got {type(kind).__name__}")
    text = kind.strip().lower()
    name, *parts = text.split(":")
    shapes = {"softmax": (0, "softmax"), "taylor": (1, "taylor:<n>"), "sm-softmax": (1, "sm-softmax:<m>"),
              "sm-taylor": (2, "sm-taylor:<n>:<m>")}
    if name not in shapes:
        raise ValueError(f"unknown loss kind {kind!r}: expected {_FORMS} (n an even order 2..10, m a margin >= 0)")
    count, form = shapes[name]
    if len(parts) != count or any(not p.strip() for p in parts):
        raise ValueError(f"malformed loss kind {kind!r}: expected {form} (n an even order 2..10, m a margin >= 0)")
    if name == "softmax":
        return LossKind("softmax")
    if name == "taylor":
        return LossKind("taylor", _order(parts[0], kind))
    if name == "sm-softmax":
        return LossKind("sm-softmax", None, _margin(parts[0], kind))
    return LossKind("sm-taylor", _order(parts[0], kind), _margin(parts[1], kind))


def taylor_terms(z, n):
    """(f_n(z), f_{n-1}(z)) in float64, f_n(z) = sum_{k<=n} z^k/k!, summing the terms
    t_k = t_{k-1} z / k (no max subtracted: Taylor softmax is not shift-invariant)."""
    z = np.asarray(z, dtype=np.float64)
    term = np.ones_like(z)
    total = np.ones_like(z)
    prev = total
    for k in range(1, n + 1):
        term = term * z / k
        prev = total
        total = total + term
    return total, prev
