"""Secure aggregation (SecAgg+) at the server: the session and the secure round over the Grid.

The modules, one concept each:

- ``masked_sum``: One SecAgg+ round's sum at the server: the masked vectors added up, the
  encrypted shares kept for the unmasking exchange, and the masks removed from the sum with the
  shares the active sites return.
- ``secure_round``: Secure aggregation (SecAgg+) over the Grid, in our Message-API round loop.
- ``session``: The server's side of a secure-aggregation (SecAgg+) session.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.secure_aggregation.masked_sum import (
        MASKED_STAGE as MASKED_STAGE,
    )
    from consortia.server.secure_aggregation.masked_sum import (
        UNMASK_STAGE as UNMASK_STAGE,
    )
    from consortia.server.secure_aggregation.masked_sum import (
        MaskedAnswers as MaskedAnswers,
    )
    from consortia.server.secure_aggregation.masked_sum import (
        MaskedSum as MaskedSum,
    )
    from consortia.server.secure_aggregation.masked_sum import (
        UnmaskAnswers as UnmaskAnswers,
    )
    from consortia.server.secure_aggregation.masked_sum import (
        refuse_stranger as refuse_stranger,
    )
    from consortia.server.secure_aggregation.secure_round import (
        NOT_IN_SECURE_ROUND as NOT_IN_SECURE_ROUND,
    )
    from consortia.server.secure_aggregation.secure_round import (
        SecureAggregation as SecureAggregation,
    )
    from consortia.server.secure_aggregation.secure_round import (
        SecureAggregator as SecureAggregator,
    )
    from consortia.server.secure_aggregation.secure_round import (
        secure_aggregation_decision as secure_aggregation_decision,
    )
    from consortia.server.secure_aggregation.secure_round import (
        secure_average as secure_average,
    )
    from consortia.server.secure_aggregation.session import (
        SecAggServer as SecAggServer,
    )

__all__ = [
    "MASKED_STAGE",
    "NOT_IN_SECURE_ROUND",
    "UNMASK_STAGE",
    "MaskedAnswers",
    "MaskedSum",
    "SecAggServer",
    "SecureAggregation",
    "SecureAggregator",
    "UnmaskAnswers",
    "refuse_stranger",
    "secure_aggregation_decision",
    "secure_average",
]

_EXPORTS = {
    "MASKED_STAGE": "masked_sum",
    "MaskedAnswers": "masked_sum",
    "MaskedSum": "masked_sum",
    "NOT_IN_SECURE_ROUND": "secure_round",
    "SecAggServer": "session",
    "SecureAggregation": "secure_round",
    "SecureAggregator": "secure_round",
    "UNMASK_STAGE": "masked_sum",
    "UnmaskAnswers": "masked_sum",
    "refuse_stranger": "masked_sum",
    "secure_aggregation_decision": "secure_round",
    "secure_average": "secure_round",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
