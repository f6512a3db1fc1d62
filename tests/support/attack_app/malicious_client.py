"""Consortia's ClientApp with an attacker inside: shipped in a test run's Flower App (FAB).

`app` is built from the real handlers of `consortia.client.client_app` and its real mods,
outermost first: `approval_mod`, `signing_mod`, `attack_mod`, then `refusal_mod` (which
answers a handler's refusal with its error code, as in Consortia's app). For the training
replies of one site (run config `attack-site`) the attack mod replaces the returned
weights ``w`` (the global weights ``g`` plus the site's update) before the signing mod
signs them, so the server sees an authenticated but malicious site:

- ``sign_flip``: ``g - (w - g)``, the update pointing the other way;
- ``scale_100``: ``g + 100 (w - g)``, the update a hundred times larger.

This file is copied into the FAB's folder and loaded by Flower as the `clientapp`
component (`malicious_client:app`), so it imports nothing from `tests`. Under secure
aggregation the reply is a masked vector the mod cannot poison meaningfully; it leaves
it alone and logs a warning (the attack tests run with secure aggregation off).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from consortia.client import client_app as consortia_client
from consortia.client.mods.approval import approval_mod
from consortia.client.mods.refusal import refusal_mod
from consortia.client.mods.signing import signing_mod
from consortia.client.site_context import site_settings
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.record_fields import get_array, get_array_record, get_config_record

__all__ = [
    "ATTACKS",
    "ATTACK_KIND_KEY",
    "ATTACK_SITE_KEY",
    "COMPONENT",
    "NO_ATTACK",
    "SCALE_100",
    "SIGN_FLIP",
    "app",
    "attack_mod",
    "poison",
]

logger = logging.getLogger("consortia.client.attack")

Handler = Callable[[Message, Context], Message]

# Run-config keys (`[tool.flwr.app.config]` of the test's FAB) naming the attack.
ATTACK_KIND_KEY: Final = "attack-kind"
ATTACK_SITE_KEY: Final = "attack-site"
NO_ATTACK: Final = "none"
SIGN_FLIP: Final = "sign_flip"
SCALE_100: Final = "scale_100"
ATTACKS: Final = (NO_ATTACK, SIGN_FLIP, SCALE_100)
# The FAB component that loads this module's `app`.
COMPONENT: Final = "malicious_client:app"

_SCALE: Final = 100.0


def poison(kind: str, global_weights: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weights a malicious site returns instead of `weights` (same shape and dtype)."""
    if global_weights.shape != weights.shape:
        raise ValueError(f"shapes differ: global {global_weights.shape}, local {weights.shape}")
    update = weights.astype(np.float64) - global_weights.astype(np.float64)
    if kind == NO_ATTACK:
        return weights
    if kind == SIGN_FLIP:
        poisoned = global_weights - update
    elif kind == SCALE_100:
        poisoned = global_weights + _SCALE * update
    else:
        raise ValueError(f"unknown attack {kind!r}; one of {', '.join(ATTACKS)}")
    return np.asarray(poisoned, dtype=weights.dtype)


def attack_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Poison the targeted site's plain training replies; pass everything else on."""
    reply = call_next(msg, context)
    kind = str(context.run_config.get(ATTACK_KIND_KEY, NO_ATTACK))
    if kind == NO_ATTACK or reply.has_error() or msg.metadata.message_type != MessageType.TRAIN:
        return reply
    site = site_settings(context).site.name
    if site != context.run_config.get(ATTACK_SITE_KEY):
        return reply
    instruction = Instruction.from_config(get_config_record(msg.content, rk.CONFIG_KEY))
    if instruction.secure:
        logger.warning("round %d: masked update, %s not applied", instruction.round, kind)
        return reply
    global_weights = get_array(get_array_record(msg.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    weights = get_array(get_array_record(reply.content, rk.ARRAYS_KEY), rk.WEIGHTS_ARRAY)
    poisoned = poison(kind, global_weights, weights)
    reply.content[rk.ARRAYS_KEY] = ArrayRecord({rk.WEIGHTS_ARRAY: Array(poisoned)})
    logger.warning("round %d: site %s sends a %s update", instruction.round, site, kind)
    return reply


# Outermost first, as in Consortia's app; the attack runs inside the signature.
app = ClientApp(mods=[approval_mod, signing_mod, attack_mod, refusal_mod])
app.query()(consortia_client.query)
app.train()(consortia_client.train)
app.train(rk.ACTION_SECAGG_KEYS)(consortia_client.secagg_keys_stage)
app.train(rk.ACTION_SECAGG_UNMASK)(consortia_client.secagg_unmask_stage)
app.evaluate()(consortia_client.evaluate)
