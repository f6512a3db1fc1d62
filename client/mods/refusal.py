"""The innermost ClientApp mod: a refusal a handler raises becomes a clear error reply.

The handlers raise what goes wrong with a message: the site's privacy policy or ledger
forbids the round, the site's data or config is unusable, the message is malformed, the
secure-aggregation session or the evaluation allowance refuses it. This mod answers each
with its error code (`consortia.common.wire.records`) and a reason the server may read:
problems with the site's own data are described generically (the details, with file
names, go to the node's log only). Any other exception passes on to `error_mod`.

It must be the last mod in `ClientApp(mods=[...])`, inside `signing_mod`: a refusal is an
error reply, which `signing_mod` leaves unsigned and `approval_mod` never sees (it has
already let the message through).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from flwr.app import Context, Error, Message
from flwr.clientapp.client_app import DEFAULT_ACTION

from consortia.client.privacy.budget import PrivacyRefusedError
from consortia.client.privacy.evaluation_allowance import EvaluationRefusedError
from consortia.client.release_cache import ReleaseCacheError
from consortia.common.errors import ConfigError, DataError
from consortia.common.privacy.ledger import LedgerError
from consortia.common.secure_aggregation.config import SecAggError
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError

__all__ = ["REFUSALS", "Refusal", "handler_name", "refusal_mod", "refuse"]

logger = logging.getLogger("consortia.client")

Handler = Callable[[Message, Context], Message]


@dataclass(frozen=True)
class Refusal:
    """How the site answers one family of exceptions. `log` (for the node's log) and
    `reason` (sent to the server) are `str.format` templates of `handler` (the message's
    action, else its category: `train`, `secagg_keys`) and `error` (the exception)."""

    errors: tuple[type[Exception], ...]
    code: int
    level: int
    log: str
    reason: str

    def reply(self, msg: Message, error: Exception) -> Message:
        """Log the refusal at the site and answer `msg` with its error."""
        handler = handler_name(msg)
        logger.log(self.level, self.log.format(handler=handler, error=error))
        return refuse(msg, self.code, self.reason.format(handler=handler, error=error))


#: Checked in order; the first family that the exception belongs to answers it.
REFUSALS: Final[tuple[Refusal, ...]] = (
    Refusal(
        errors=(EvaluationRefusedError,),
        code=rk.ERROR_REFUSED,
        level=logging.WARNING,
        log="evaluation refused: {error}",
        reason="{error}",
    ),
    Refusal(
        errors=(ReleaseCacheError,),
        code=rk.ERROR_REFUSED,
        level=logging.ERROR,
        log="round refused: {error}",
        reason="{error}",
    ),
    Refusal(
        errors=(SecAggError,),
        code=rk.ERROR_SECAGG,
        level=logging.ERROR,
        log="secure aggregation: {error}",
        reason="secure aggregation: {error}",
    ),
    Refusal(
        errors=(DataError, ConfigError),
        code=rk.ERROR_SITE_DATA,
        level=logging.ERROR,
        log="site data unusable: {error}",
        reason="site data unusable for this task; see node log",
    ),
    Refusal(  # also the server's model of another layout (`LayoutMismatchError`)
        errors=(RecordFieldError,),
        code=rk.ERROR_BAD_MESSAGE,
        level=logging.ERROR,
        log="malformed {handler} message: {error}",
        reason="malformed {handler} message: {error}",
    ),
    Refusal(
        errors=(PrivacyRefusedError,),
        code=rk.ERROR_PRIVACY_BUDGET,
        level=logging.WARNING,
        log="round refused by the site's privacy policy: {error}",
        reason="{error}",
    ),
    Refusal(
        errors=(LedgerError,),
        code=rk.ERROR_PRIVACY_BUDGET,
        level=logging.ERROR,
        log="privacy ledger unusable, refusing to train: {error}",
        reason="the site's privacy ledger is unusable; see node log",
    ),
)
_REFUSED: Final[tuple[type[Exception], ...]] = tuple(
    error for refusal in REFUSALS for error in refusal.errors
)


def handler_name(msg: Message) -> str:
    """The handler a message goes to: its action (`secagg_keys` of
    `train.secagg_keys`), else its category (`query`, `train`, `evaluate`; also for
    Flower's default action, `train.default`)."""
    category, _, action = msg.metadata.message_type.partition(".")
    return category if action in ("", DEFAULT_ACTION) else action


def refuse(msg: Message, code: int, reason: str) -> Message:
    """The error reply to `msg` with `code` and `reason` (no content)."""
    return Message(Error(code=code, reason=reason), reply_to=msg)


def refusal_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Run the handler; a refusal it raises becomes its error reply (`REFUSALS`)."""
    try:
        return call_next(msg, context)
    except _REFUSED as err:
        refusal = next(r for r in REFUSALS if isinstance(err, r.errors))
        return refusal.reply(msg, err)
