"""A site's side of secure aggregation (SecAgg+): session, state and message handlers.

The modules, one concept each:

- ``handlers``: The site's side of secure aggregation (SecAgg+ sessions) in the ClientApp.
- ``session``: A training site's side of a secure-aggregation (SecAgg+) session.
- ``state``: What a site must remember of a secure-aggregation session between messages.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.secure_aggregation.handlers import (
        SecureRound as SecureRound,
    )
    from consortia.client.secure_aggregation.handlers import (
        mask_update as mask_update,
    )
    from consortia.client.secure_aggregation.handlers import (
        open_round as open_round,
    )
    from consortia.client.secure_aggregation.handlers import (
        plain_update_refusal as plain_update_refusal,
    )
    from consortia.client.secure_aggregation.handlers import (
        secagg_keys as secagg_keys,
    )
    from consortia.client.secure_aggregation.handlers import (
        secagg_unmask as secagg_unmask,
    )
    from consortia.client.secure_aggregation.session import (
        SecAggClient as SecAggClient,
    )
    from consortia.client.secure_aggregation.state import (
        SECURE_RECORDS_DIR as SECURE_RECORDS_DIR,
    )
    from consortia.client.secure_aggregation.state import (
        ClientState as ClientState,
    )
    from consortia.client.secure_aggregation.state import (
        Peer as Peer,
    )
    from consortia.client.secure_aggregation.state import (
        SecureRecord as SecureRecord,
    )
    from consortia.client.secure_aggregation.state import (
        Stage as Stage,
    )

__all__ = [
    "SECURE_RECORDS_DIR",
    "ClientState",
    "Peer",
    "SecAggClient",
    "SecureRecord",
    "SecureRound",
    "Stage",
    "mask_update",
    "open_round",
    "plain_update_refusal",
    "secagg_keys",
    "secagg_unmask",
]

_EXPORTS = {
    "ClientState": "state",
    "Peer": "state",
    "SECURE_RECORDS_DIR": "state",
    "SecAggClient": "session",
    "SecureRecord": "state",
    "SecureRound": "handlers",
    "Stage": "state",
    "mask_update": "handlers",
    "open_round": "handlers",
    "plain_update_refusal": "handlers",
    "secagg_keys": "handlers",
    "secagg_unmask": "handlers",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
