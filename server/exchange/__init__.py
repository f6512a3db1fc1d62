"""Messages with the sites over Flower's Grid: push, pull, signature checks, discovery and the
roster of a run.

The modules, one concept each:

- ``discovery``: Asking nodes who they are: the `query` message and the checks on its answers.
- ``messaging``: One exchange over Flower's Grid: push messages, pull replies as they arrive.
- ``reply_verifier``: Signed replies: a fresh nonce on every message out, a signature check on
  every reply in.
- ``site_roster``: Who takes part in a run: the sites that answered, their node ids, who is
  connected.
- ``sites``: The sites of a run as the server knows them, from their answers to `query`.
- ``updates``: A training site's reply, checked before it may touch the global model.
- ``verified_exchange``: Message exchange with the sites in which every reply is signature-
  checked and audited.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.exchange.discovery import (
        SiteAnswer as SiteAnswer,
    )
    from consortia.server.exchange.discovery import (
        query_messages as query_messages,
    )
    from consortia.server.exchange.discovery import (
        read_answers as read_answers,
    )
    from consortia.server.exchange.messaging import (
        Quorum as Quorum,
    )
    from consortia.server.exchange.messaging import (
        exchange as exchange,
    )
    from consortia.server.exchange.messaging import (
        wait_for_uploads as wait_for_uploads,
    )
    from consortia.server.exchange.reply_verifier import (
        ReplyVerifier as ReplyVerifier,
    )
    from consortia.server.exchange.reply_verifier import (
        VerifiedReply as VerifiedReply,
    )
    from consortia.server.exchange.reply_verifier import (
        signer_of as signer_of,
    )
    from consortia.server.exchange.site_roster import (
        NoTrainingSiteError as NoTrainingSiteError,
    )
    from consortia.server.exchange.site_roster import (
        QuorumLostError as QuorumLostError,
    )
    from consortia.server.exchange.site_roster import (
        SiteRoster as SiteRoster,
    )
    from consortia.server.exchange.sites import (
        Site as Site,
    )
    from consortia.server.exchange.sites import (
        site_from_reply as site_from_reply,
    )
    from consortia.server.exchange.updates import (
        NO_REPLY as NO_REPLY,
    )
    from consortia.server.exchange.updates import (
        AcceptedUpdate as AcceptedUpdate,
    )
    from consortia.server.exchange.updates import (
        UpdateCollector as UpdateCollector,
    )
    from consortia.server.exchange.updates import (
        accept_update as accept_update,
    )
    from consortia.server.exchange.verified_exchange import (
        VerifiedExchange as VerifiedExchange,
    )

__all__ = [
    "NO_REPLY",
    "AcceptedUpdate",
    "NoTrainingSiteError",
    "Quorum",
    "QuorumLostError",
    "ReplyVerifier",
    "Site",
    "SiteAnswer",
    "SiteRoster",
    "UpdateCollector",
    "VerifiedExchange",
    "VerifiedReply",
    "accept_update",
    "exchange",
    "query_messages",
    "read_answers",
    "signer_of",
    "site_from_reply",
    "wait_for_uploads",
]

_EXPORTS = {
    "AcceptedUpdate": "updates",
    "NO_REPLY": "updates",
    "NoTrainingSiteError": "site_roster",
    "Quorum": "messaging",
    "QuorumLostError": "site_roster",
    "ReplyVerifier": "reply_verifier",
    "Site": "sites",
    "SiteAnswer": "discovery",
    "SiteRoster": "site_roster",
    "UpdateCollector": "updates",
    "VerifiedExchange": "verified_exchange",
    "VerifiedReply": "reply_verifier",
    "accept_update": "updates",
    "exchange": "messaging",
    "query_messages": "discovery",
    "read_answers": "discovery",
    "signer_of": "reply_verifier",
    "site_from_reply": "sites",
    "wait_for_uploads": "messaging",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
