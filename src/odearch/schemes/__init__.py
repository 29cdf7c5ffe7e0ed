"""Numerical schemes as data: Butcher tableaux, linear multistep coefficients, and the paper's LM, PolyNet and
RevNet schemes and the official code's DenseResNet scheme. Nothing here imports ``torch.nn``;
:class:`odearch.nn.Stage` interprets these objects.

``SCHEMES`` maps a name to a scheme object; :func:`get_scheme` accepts a name or an object.
"""

from __future__ import annotations

import dataclasses
import difflib

from .dense import DenseScheme
from .lm import MRESNETC_K_INIT, LMScheme
from .multistep import AB2, LinearMultistep
from .poly import PolyScheme
from .rev import RevScheme
from .tableau import EULER, HEUN, MIDPOINT, RK4, ButcherTableau

Scheme = ButcherTableau | LinearMultistep | LMScheme | PolyScheme | RevScheme | DenseScheme
_FAMILIES = ("ButcherTableau", "LinearMultistep", "LMScheme", "PolyScheme", "RevScheme", "DenseScheme")

SCHEMES: dict[str, Scheme] = {
    "euler": EULER,  # ResNet / ResNeXt: u_{n+1} = u_n + f(u_n)
    "rk2": HEUN,  # Heun; FractalNet with a distinct function per inner stage
    "midpoint": MIDPOINT,
    "rk4": RK4,
    "ab2": AB2,  # Adams-Bashforth 2
    "lm": LMScheme(),  # LM-ResNet: u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + f_n(u_n)
    "lm_channel": LMScheme(name="lm_channel", per_channel=True),  # one k per channel, k ~ U[-0.1, 0]
    # the official MResNetC's per-channel initialisation, k ~ U[1.0, 1.1] (see odearch.schemes.lm)
    "lm_channel_mresnetc": LMScheme(name="lm_channel_mresnetc", k_init=MRESNETC_K_INIT, per_channel=True),
    "poly2": PolyScheme(),  # PolyNet: u + F(u) + F(F(u))
    "rev": RevScheme(),  # RevNet: coupled forward Euler
    # DenseResNet (official code): u_{n+1} = (sum_{j<=n} k_{nj} u_j) / (sum_{j<=n} k_{nj}) + f_n(u_n)
    "dense": DenseScheme(),
}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """Return the scheme object for a name in :data:`SCHEMES`, or ``scheme`` itself if it is already one.

    A scheme object is an instance of a (frozen) dataclass: the six families above, or a new family's, which
    :func:`odearch.nn.stage.register_step_runner` teaches the Stage to integrate.
    """
    if dataclasses.is_dataclass(scheme) and not isinstance(scheme, type):
        return scheme  # type: ignore[return-value]
    if isinstance(scheme, str):
        try:
            return SCHEMES[scheme]
        except KeyError:
            close = difflib.get_close_matches(scheme, list(SCHEMES), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown scheme {scheme!r}{hint} (known: {', '.join(sorted(SCHEMES))})") from None
    raise TypeError(
        f"a scheme is a name or a scheme dataclass ({', '.join(_FAMILIES)}, ...), got {type(scheme).__name__}"
    )


__all__ = [
    "AB2",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RK4",
    "SCHEMES",
    "ButcherTableau",
    "DenseScheme",
    "LMScheme",
    "LinearMultistep",
    "PolyScheme",
    "RevScheme",
    "Scheme",
    "get_scheme",
]
