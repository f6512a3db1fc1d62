"""The sites of a run as the server knows them, from their answers to `query`."""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Message

from consortia.common.config.names import check_site_name
from consortia.common.config.settings import Role
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import get_config_record, get_float, get_int, get_str
from consortia.server.run.privacy import SitePrivacy

__all__ = ["Site", "site_from_reply"]


@dataclass(frozen=True)
class Site:
    """A node that answered the `query` message."""

    node_id: int
    name: str
    role: Role
    num_train: int
    num_eval: int
    data_fingerprint: str


def site_from_reply(node_id: int, reply: Message) -> tuple[Site, SitePrivacy]:
    """The site and its privacy policy from a `query` answer (every field checked; the
    site name, which becomes a folder name in the run folder, by `check_site_name`)."""
    info = get_config_record(reply.content, rk.INFO_KEY)
    site = Site(
        node_id=node_id,
        name=check_site_name(get_str(info, rk.SITE_NAME), f"'{rk.SITE_NAME}'"),
        role=Role(get_str(info, rk.SITE_ROLE)),
        num_train=get_int(info, rk.SITE_NUM_TRAIN),
        num_eval=get_int(info, rk.SITE_NUM_EVAL),
        data_fingerprint=get_str(info, rk.SITE_DATA_FINGERPRINT),
    )
    privacy = SitePrivacy(
        dataset_fingerprint=site.data_fingerprint,
        max_epsilon=get_float(info, rk.SITE_MAX_EPSILON),
        delta=get_float(info, rk.SITE_DELTA),
        epsilon_before_run=get_float(info, rk.SITE_EPSILON_SPENT),
    )
    return site, privacy
