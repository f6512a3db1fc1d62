"""Secure aggregation (SecAgg+) at the server: the session and the secure round over the Grid.

The modules, one concept each:

- ``secure_round``: Secure aggregation (SecAgg+) over the Grid, in our Message-API round loop.
- ``session``: The server's side of a secure-aggregation (SecAgg+) session.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.secure_aggregation.secure_round import (
        SecureAggregator as SecureAggregator,
    )
    from consortia.server.secure_aggregation.secure_round import (
        secure_average as secure_average,
    )
    from consortia.server.secure_aggregation.session import (
        SecAggServer as SecAggServer,
    )

__all__ = [
    "SecAggServer",
    "SecureAggregator",
    "secure_average",
]

_EXPORTS = {
    "SecAggServer": "session",
    "SecureAggregator": "secure_round",
    "secure_average": "secure_round",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
