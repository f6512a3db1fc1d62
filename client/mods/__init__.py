"""ClientApp mods, each wrapping the handler: errors, approval, signing.

The modules, one concept each:

- ``approval``: A ClientApp mod that lets only runs this hospital approved reach the handlers.
- ``error``: The outermost ClientApp mod: an exception no handler or mod caught leaves the site
  as a generic reason, never as its text.
- ``refusal``: The innermost ClientApp mod: a refusal a handler raises becomes a clear error
  reply.
- ``signing``: A ClientApp mod that signs every reply with the site's key (the one registered
  with the server, `[node] key`): the server accepts an update only with a valid signature over
  its content, the run, the round, this node and the nonce it sent with the request.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.mods.approval import (
        approval_mod as approval_mod,
    )
    from consortia.client.mods.approval import (
        instruction_mismatches as instruction_mismatches,
    )
    from consortia.client.mods.error import (
        GENERIC_REASON as GENERIC_REASON,
    )
    from consortia.client.mods.error import (
        error_mod as error_mod,
    )
    from consortia.client.mods.refusal import (
        REFUSALS as REFUSALS,
    )
    from consortia.client.mods.refusal import (
        Refusal as Refusal,
    )
    from consortia.client.mods.refusal import (
        handler_name as handler_name,
    )
    from consortia.client.mods.refusal import (
        refusal_mod as refusal_mod,
    )
    from consortia.client.mods.refusal import (
        refuse as refuse,
    )
    from consortia.client.mods.signing import (
        signing_mod as signing_mod,
    )

__all__ = [
    "GENERIC_REASON",
    "REFUSALS",
    "Refusal",
    "approval_mod",
    "error_mod",
    "handler_name",
    "instruction_mismatches",
    "refusal_mod",
    "refuse",
    "signing_mod",
]

_EXPORTS = {
    "GENERIC_REASON": "error",
    "REFUSALS": "refusal",
    "Refusal": "refusal",
    "approval_mod": "approval",
    "error_mod": "error",
    "handler_name": "refusal",
    "instruction_mismatches": "approval",
    "refusal_mod": "refusal",
    "refuse": "refusal",
    "signing_mod": "signing",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
