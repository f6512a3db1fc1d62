"""Who takes part in a run: the sites that answered, their node ids, who is connected.

Sites join when the run starts; during the run a node that connects is asked who it is,
so a site back after a restart (maybe with a new node id) rejoins, and a round waits,
up to `connect_timeout_s`, for enough connected training sites to meet its quorum.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict

from flwr.serverapp import Grid

from consortia.common.audit.log import SITE_JOINED, SITE_REFUSED, SITE_REJOINED
from consortia.common.config.roster import admitted_by_roster, roster_node_ids
from consortia.common.config.settings import Role, RunSettings
from consortia.common.errors import ConsortiaError
from consortia.common.wire.run_identity import RunIdentity
from consortia.server.exchange.discovery import SiteAnswer, query_messages, read_answers
from consortia.server.exchange.sites import Site
from consortia.server.exchange.verified_exchange import VerifiedExchange
from consortia.server.run.folder import RunFolder
from consortia.server.run.privacy import RunPrivacy

__all__ = ["NoTrainingSiteError", "QuorumLostError", "SiteRoster"]

logger = logging.getLogger("consortia.server")


class NoTrainingSiteError(ConsortiaError):
    """Too few sites connected, or none of them trains: the run cannot start."""


class QuorumLostError(ConsortiaError):
    """Too few training sites answer for a round: the run stops, resumable later."""


class SiteRoster:
    """The run's sites by node id, kept current as nodes leave and come back."""

    def __init__(
        self,
        grid: Grid,
        settings: RunSettings,
        identity: RunIdentity,
        folder: RunFolder,
        channel: VerifiedExchange,
        privacy: RunPrivacy,
    ) -> None:
        self.grid = grid
        self.settings = settings
        self.identity = identity
        self.folder = folder
        self.channel = channel
        self.privacy = privacy
        self.sites: dict[int, Site] = {}
        self.refused_nodes: set[int] = set()  # asked once, left out: not asked again
        self.refusals: dict[int, str] = {}  # why each of them was left out

    def wait_for_nodes(self) -> list[int]:
        """Node ids once `min_sites` nodes are connected; error after `connect_timeout_s`."""
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            node_ids = self.in_roster(self.grid.get_node_ids())
            if len(node_ids) >= self.settings.min_sites:
                return node_ids
            if time.monotonic() > deadline:
                raise NoTrainingSiteError(
                    f"only {len(node_ids)} of min_sites={self.settings.min_sites} sites "
                    f"connected within {self.settings.connect_timeout_s:.0f} s"
                )
            time.sleep(0.2)

    def in_roster(self, node_ids: Iterable[int]) -> list[int]:
        """The nodes the run may ask: all of them without a roster; with one, only those
        whose registered name and key match a roster entry (never asked otherwise). A
        server without a site registry (--insecure) checks the names in the answers."""
        registry = self.channel.verifier.registry
        if not self.settings.sites or registry is None:
            return sorted(node_ids)
        allowed = roster_node_ids(
            self.settings.sites,
            ((s.name, s.fingerprint, s.flower_node_id) for s in registry.sites()),
        )
        return sorted(set(node_ids) & allowed)

    def ask(self, node_ids: Sequence[int], timeout_s: float, group: str) -> list[SiteAnswer]:
        node_ids = self.in_roster(node_ids)
        messages = query_messages(self.settings, self.identity, node_ids, group)
        replies = self.channel(messages, timeout_s)
        return read_answers(replies, self.channel.rejected, signed=self.channel.verifier.enabled)

    def admit(self, answers: Sequence[SiteAnswer], round_number: int = 0) -> None:
        """Let the sites that answered in: new ones join, known ones whose node changed
        (a restart) rejoin under their new node id; refusals are recorded."""
        known = {site.name: node_id for node_id, site in self.sites.items()}
        for answer in answers:
            site = answer.site
            if site is None or answer.privacy is None:
                self.leave_out(answer.node_id, answer.refusal or "no usable answer")
                continue
            outside = admitted_by_roster(self.settings, site.name, site.role)
            if outside is not None:
                self.leave_out(answer.node_id, outside)
                continue
            if site.name in known and round_number == 0:
                self.leave_out(answer.node_id, f"duplicate site name {site.name}")
                continue
            if site.name in known and known[site.name] != answer.node_id:
                previous = self.sites[known[site.name]]
                if previous.data_fingerprint != site.data_fingerprint or previous.role != site.role:
                    self.leave_out(
                        answer.node_id,
                        f"{site.name} rejoins with other data or another role than it joined with",
                    )
                    continue
                if site.num_train > previous.num_train:
                    # The count declared on joining bounds the site's weight (F5).
                    self.leave_out(
                        answer.node_id,
                        f"{site.name} rejoins declaring {site.num_train} training examples, "
                        f"more training examples than the {previous.num_train} it joined with",
                    )
                    continue
                del self.sites[known[site.name]]
                self.register(site)
                logger.info(
                    "round %d: %s rejoined (node %d)", round_number, site.name, site.node_id
                )
                self.folder.event(
                    SITE_REJOINED, round=round_number, site=site.name, node_id=site.node_id
                )
                continue
            if site.name in known:
                continue
            self.register(site)
            known[site.name] = site.node_id
            if site.role is Role.TRAIN:
                self.privacy.add_site(site.name, answer.privacy)
            self.folder.event(
                SITE_JOINED,
                site=site.name,
                role=site.role.value,
                node_id=site.node_id,
                dataset_fingerprint=site.data_fingerprint,
                round=round_number,
            )
        self.folder.update(
            sites=[asdict(site) | {"role": site.role.value} for site in self.sites.values()],
            privacy=self.privacy.section(),
        )

    def leave_out(self, node_id: int, reason: str) -> None:
        """A node that answered but does not take part: recorded, never asked again."""
        self.refused_nodes.add(node_id)
        self.refusals[node_id] = reason
        self.folder.event(SITE_REFUSED, node_id=node_id, reason=reason)
        logger.warning("node %d left out: %s", node_id, reason)

    def example_cap_refusal(self, site: Site) -> str | None:
        """Why `site` may not take part in a secure round: it declared more training
        examples than its roster entry's `max_examples` (fixed out of band, approved with
        the study); None when it may. Under secure aggregation the declared counts set
        every site's weight: a site declaring too many would scale the others down."""
        for entry in self.settings.sites:
            cap = entry.max_examples
            if entry.name == site.name and cap is not None and site.num_train > cap:
                return (
                    f"declares {site.num_train} training examples, more than the roster's "
                    f"max_examples = {cap} for {site.name}"
                )
        return None

    def _who(self, node_id: int) -> str:
        """A node as the coordinator knows it: its registered site name, if any."""
        registry = self.channel.verifier.registry
        names = (
            [s.name for s in registry.sites() if s.flower_node_id == node_id] if registry else []
        )
        return f"{names[0]} (node {node_id})" if names else f"node {node_id}"

    def register(self, site: Site) -> None:
        self.sites[site.node_id] = site
        self.channel.names[site.node_id] = site.name

    def discover_sites(self) -> list[Site]:
        """Ask every connected node who it is; keep the ones whose data fit the task."""
        node_ids = self.wait_for_nodes()
        self.admit(self.ask(node_ids, self.settings.connect_timeout_s, "discover"))
        if not any(site.role is Role.TRAIN for site in self.sites.values()):
            why = "; ".join(f"{self._who(n)}: {r}" for n, r in sorted(self.refusals.items()))
            raise NoTrainingSiteError(
                "no training site answered; nothing to train"
                + (f". Sites that answered and why they did not take part: {why}" if why else "")
            )
        return list(self.sites.values())

    def online(self, round_number: int) -> set[int]:
        """Node ids connected now; nodes new to the run are asked who they are first
        (a site back after a restart, or one that joins late)."""
        connected = set(self.grid.get_node_ids())
        new = self.in_roster(connected - set(self.sites) - self.refused_nodes)
        if new:
            timeout = min(self.settings.connect_timeout_s, self.settings.straggler_timeout_s)
            self.admit(self.ask(new, timeout, f"rejoin-{round_number}"), round_number)
        return connected & set(self.sites)

    def quorum_size(self, asked: int) -> int:
        return max(1, math.ceil(self.settings.quorum * asked - 1e-9))

    def check_round_quorum(
        self, round_number: int, usable: int, asked: Sequence[Site], left_out: Mapping[str, str]
    ) -> None:
        """Raise `QuorumLostError` when `usable` updates miss the quorum of the training
        sites `asked` (those whose privacy policy refused leave training and do not count)."""
        answerable = [s for s in asked if s.name not in self.privacy.excluded]
        needed = self.quorum_size(len(answerable)) if answerable else 0
        if usable < needed:
            raise QuorumLostError(
                f"round {round_number}: {usable} usable update(s) of the "
                f"{len(answerable)} training sites asked, the quorum needs {needed} "
                f"(quorum = {self.settings.quorum}); left out: "
                + "; ".join(f"{name}: {reason}" for name, reason in sorted(left_out.items()))
            )

    def too_few_trainers(self) -> str | None:
        """Why training ends: fewer eligible training sites than `min_training_sites`."""
        eligible = self.privacy.eligible(
            site.name for site in self.sites.values() if site.role is Role.TRAIN
        )
        needed = self.settings.min_training_sites
        if len(eligible) >= needed:
            return None
        return (
            f"{len(eligible)} training site(s) left, fewer than min_training_sites={needed} "
            f"(left training: {', '.join(sorted(self.privacy.excluded)) or 'none'})"
        )

    def await_quorum(self, round_number: int) -> set[int]:
        """The connected node ids once enough training sites are connected for the
        round's quorum; waits up to `connect_timeout_s`, then raises `QuorumLostError`."""
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            online = self.online(round_number)
            eligible = self.eligible_trainers()
            wanted = min(self.settings.sites_per_round or len(eligible), len(eligible))
            needed = self.quorum_size(wanted)
            connected = [s for s in eligible if s.node_id in online]
            if len(connected) >= needed:
                return online
            if time.monotonic() > deadline:
                raise QuorumLostError(
                    f"round {round_number}: {len(connected)} of {len(eligible)} training sites "
                    f"connected, the quorum needs {needed} (quorum = {self.settings.quorum}); "
                    f"none came back within connect_timeout_s = "
                    f"{self.settings.connect_timeout_s:.0f} s"
                )
            time.sleep(1.0)

    def eligible_trainers(self) -> list[Site]:
        return sorted(
            (
                s
                for s in self.sites.values()
                if s.role is Role.TRAIN and s.name not in self.privacy.excluded
            ),
            key=lambda s: s.name,
        )

    def select_training_sites(
        self, round_number: int, online: Iterable[int] | None = None
    ) -> list[Site]:
        """The round's training sites: `sites_per_round` of the eligible ones (all by
        default) drawn with the run's seed, among those connected when `online` is given."""
        trainers = self.eligible_trainers()
        if online is not None:
            connected = set(online)
            trainers = [s for s in trainers if s.node_id in connected]
        k = self.settings.sites_per_round or len(trainers)
        if k >= len(trainers):
            return trainers
        rng = random.Random(self.settings.seed * 100_003 + round_number)
        return sorted(rng.sample(trainers, k), key=lambda s: s.name)
