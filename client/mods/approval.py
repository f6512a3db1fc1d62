"""A ClientApp mod that lets only runs this hospital approved reach the handlers.

A run is approved by the hash of its config and of the code that runs it
(`consortia node approve RUN.toml`). Every message is checked: the run config carried by
Flower must be approved, and the instructions in the message must be the ones that
config implies (a server cannot send approved settings and train with others). Under
Flower's simulation engine the coordinator runs every site itself: nothing to approve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message

from consortia.client.node.audit import node_audit_for
from consortia.client.node.study_fit import study_refusals
from consortia.client.secure_aggregation.handlers import plain_update_refusal
from consortia.client.site_context import is_simulated, site_settings
from consortia.common.audit.approvals import ApprovalStore, RunNotApprovedError
from consortia.common.audit.log import RUN_APPROVED, RUN_REFUSED, AuditLogError
from consortia.common.config.roster import own_entry_refusal, site_fingerprint
from consortia.common.config.settings import RunSettings, SiteSettings, run_settings_from_json
from consortia.common.errors import ConfigError
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.record_fields import RecordFieldError, get_config_record
from consortia.common.wire.run_identity import RunIdentity

__all__ = ["approval_mod", "instruction_mismatches"]

logger = logging.getLogger("consortia.client")

Handler = Callable[[Message, Context], Message]


def instruction_mismatches(instruction: Instruction, settings: RunSettings) -> list[str]:
    """The instruction fields that differ from what the approved settings imply."""
    expected: dict[str, object] = {
        "task": settings.task,
        "model": settings.model.to_model_settings(),
        "batch_size": settings.training.batch_size,
        "dataset": settings.dataset,
        "seed": settings.seed,
        "total_rounds": settings.rounds,
        "privacy": settings.privacy,
    }
    if instruction.local_epochs:  # a train message
        expected["local_epochs"] = settings.training.local_epochs
        expected["learning_rate"] = settings.training.learning_rate
        expected["proximal_mu"] = settings.strategy.proximal_mu
    return sorted(name for name, value in expected.items() if getattr(instruction, name) != value)


def _refuse(msg: Message, reason: str) -> Message:
    return Message(Error(code=rk.ERROR_NOT_APPROVED, reason=reason), reply_to=msg)


def _check(
    msg: Message,
    context: Context,
    site: SiteSettings,
    settings: RunSettings,
    identity: RunIdentity,
) -> str | None:
    """None when the message may be handled, else the reason to refuse it."""
    ApprovalStore.for_site(site).check(identity.config_hash, identity.app_hash)
    refusal = own_entry_refusal(
        settings, site.site.name, site.site.role, site_fingerprint(site.node.key)
    )
    if refusal is not None:
        return refusal
    unfit = study_refusals(settings, site, name_files=False)  # as `node approve` checks
    if unfit:
        return "the study does not fit this site: " + "; ".join(unfit)
    config = msg.content.config_records.get(rk.CONFIG_KEY)
    claimed = config.get(rk.CFG_APP_HASH) if config is not None else None
    if isinstance(claimed, str) and claimed and claimed != identity.app_hash:
        return (
            f"the server runs other Consortia code (app {claimed[:12]}) than this site "
            f"(app {identity.app_hash[:12]}); both must run the approved code"
        )
    category = msg.metadata.message_type.partition(".")[0]
    if category == "query" and config is not None:
        asked = {"task": config.get(rk.CFG_TASK), "dataset": config.get(rk.CFG_DATASET)}
        approved = {"task": settings.task.value, "dataset": settings.dataset}
        wrong = sorted(key for key in asked if asked[key] != approved[key])
        if wrong:
            return f"the query asks for another {' and '.join(wrong)} than the approved run"
    has_instruction = config is not None and rk.CFG_MODEL_SETTINGS in config
    if category in ("train", "evaluate") and has_instruction:
        instruction = Instruction.from_config(get_config_record(msg.content, rk.CONFIG_KEY))
        wrong = instruction_mismatches(instruction, settings)
        if wrong:
            return f"the message's instructions differ from the approved run: {', '.join(wrong)}"
        if msg.metadata.message_type == "train" and not instruction.secure:
            # Secure aggregation is the site's rule, not the server's choice (F6).
            return plain_update_refusal(
                settings,
                site.state_path,
                identity.config_hash,
                rk.SECAGG_STATE_KEY in context.state,
            )
    return None


def approval_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Refuse (error 4105) any message of a run this site has not approved."""
    if is_simulated(context):
        return call_next(msg, context)
    site: SiteSettings | None = None
    identity: RunIdentity | None = None
    try:
        site = site_settings(context)
        settings = run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS]))
        identity = RunIdentity.of(settings)
        reason = _check(msg, context, site, settings, identity)
    except RunNotApprovedError as err:
        reason = str(err)
    except (ConfigError, RecordFieldError) as err:
        logger.error("cannot check the run's approval: %s", err)
        reason = "the site cannot check this run's approval; see node log"
    if site is None:  # no site config to read: no audit log to write either
        return _refuse(msg, str(reason))
    try:
        audit = node_audit_for(site)
    except AuditLogError as err:
        logger.error("the node's audit log is damaged; refusing all work: %s", err)
        return _refuse(msg, "the site's audit log is damaged; see node log")
    if reason is not None:
        logger.warning("refused %s message: %s", msg.metadata.message_type, reason)
        audit.append(
            RUN_REFUSED,
            flower_run=msg.metadata.run_id,
            kind=msg.metadata.message_type,
            reason=reason,
        )
        return _refuse(msg, reason)
    if msg.metadata.message_type.startswith("query") and identity is not None:
        audit.append(
            RUN_APPROVED,
            flower_run=msg.metadata.run_id,
            config_hash=identity.config_hash,
            app_hash=identity.app_hash,
        )
    return call_next(msg, context)
