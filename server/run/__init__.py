"""One run at the coordinator: the ServerApp, its round loop, run folder, state, privacy records
and provenance.

The modules, one concept each:

- ``evaluation``: Turn the sites' metric sums and counts into metrics: per site and pooled
  exactly, and bootstrap confidence intervals for the final model
  (`consortia.common.metrics.bootstrap`).
- ``federation``: The coordinator's round loop over Flower's Grid (Message API).
- ``folder``: The run folder: results written as they arrive, events for live progress,
  checkpoints.
- ``privacy``: The server's side of privacy: what each site reports it spent, kept in the run
  folder, and which sites left training because their privacy policy refused a round.
- ``provenance``: The provenance file a run leaves behind: what ran (config and code hashes),
  who took part, each round's global model hash (round 0 also names the approved warm start, if
  any), the DP parameters, whether updates were securely aggregated, and the head of the audit
  log, signed with the server's key.
- ``record``: The typed run record: one pydantic model for a run folder's `results.json`.
- ``round_aggregation``: Closing a round: its aggregation's plan recorded, the trainers' replies
  checked, the quorum kept, the next model aggregated, checkpointed, audited and recorded.
- ``round_evaluation``: The global model's evaluation in one wave: per site, pooled over held-
  out sites and over training sites (and, for the final model, bootstrap confidence intervals),
  written into the round's entry of results.json.
- ``saliency_store``: Saliency maps that a held-out site chose to share (`[saliency] share =
  true` in its site config): checked to be PNG pictures of bounded size, kept in the run folder
  as `saliency/<site>/case-NN.png` and recorded in the audit log.
- ``server_app``: The coordinator's Flower ServerApp (Message API): wires settings, run folder,
  loop.
- ``state``: What a run resumes from: `checkpoints/state.json`, rewritten after every round.
- ``wave``: One wave of a round: the current global model to every connected site at once.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.run.evaluation import (
        BOOTSTRAP_METHOD as BOOTSTRAP_METHOD,
    )
    from consortia.server.run.evaluation import (
        SiteEvaluation as SiteEvaluation,
    )
    from consortia.server.run.evaluation import (
        metric_intervals as metric_intervals,
    )
    from consortia.server.run.evaluation import (
        pooled_metrics as pooled_metrics,
    )
    from consortia.server.run.evaluation import (
        site_metrics as site_metrics,
    )
    from consortia.server.run.federation import (
        Federation as Federation,
    )
    from consortia.server.run.federation import (
        FederationError as FederationError,
    )
    from consortia.server.run.federation import (
        QuorumLostError as QuorumLostError,
    )
    from consortia.server.run.federation import (
        Site as Site,
    )
    from consortia.server.run.folder import (
        EVENTS_FILE as EVENTS_FILE,
    )
    from consortia.server.run.folder import (
        RESULTS_FILE as RESULTS_FILE,
    )
    from consortia.server.run.folder import (
        SALIENCY_DIR as SALIENCY_DIR,
    )
    from consortia.server.run.folder import (
        SCHEMA as SCHEMA,
    )
    from consortia.server.run.folder import (
        RunFolder as RunFolder,
    )
    from consortia.server.run.folder import (
        read_record as read_record,
    )
    from consortia.server.run.privacy import (
        RunPrivacy as RunPrivacy,
    )
    from consortia.server.run.privacy import (
        SitePrivacy as SitePrivacy,
    )
    from consortia.server.run.privacy import (
        read_privacy_report as read_privacy_report,
    )
    from consortia.server.run.privacy import (
        spend_record as spend_record,
    )
    from consortia.server.run.provenance import (
        build_provenance as build_provenance,
    )
    from consortia.server.run.provenance import (
        write_run_provenance as write_run_provenance,
    )
    from consortia.server.run.record import (
        HOLDOUT as HOLDOUT,
    )
    from consortia.server.run.record import (
        RESULTS_SCHEMA as RESULTS_SCHEMA,
    )
    from consortia.server.run.record import (
        TRAINING_SITES as TRAINING_SITES,
    )
    from consortia.server.run.record import (
        AppRecord as AppRecord,
    )
    from consortia.server.run.record import (
        BaselineResult as BaselineResult,
    )
    from consortia.server.run.record import (
        Baselines as Baselines,
    )
    from consortia.server.run.record import (
        CentralPrivacyRecord as CentralPrivacyRecord,
    )
    from consortia.server.run.record import (
        CentralRelease as CentralRelease,
    )
    from consortia.server.run.record import (
        Evaluation as Evaluation,
    )
    from consortia.server.run.record import (
        Intervals as Intervals,
    )
    from consortia.server.run.record import (
        LedgerHeadRecord as LedgerHeadRecord,
    )
    from consortia.server.run.record import (
        Metrics as Metrics,
    )
    from consortia.server.run.record import (
        PrivacySection as PrivacySection,
    )
    from consortia.server.run.record import (
        ResumedRecord as ResumedRecord,
    )
    from consortia.server.run.record import (
        RoundEntry as RoundEntry,
    )
    from consortia.server.run.record import (
        RoundSecureAggregation as RoundSecureAggregation,
    )
    from consortia.server.run.record import (
        RoundSpent as RoundSpent,
    )
    from consortia.server.run.record import (
        RunRecord as RunRecord,
    )
    from consortia.server.run.record import (
        SampleLevelPrivacy as SampleLevelPrivacy,
    )
    from consortia.server.run.record import (
        SecureAggregationDecision as SecureAggregationDecision,
    )
    from consortia.server.run.record import (
        SecurityRecord as SecurityRecord,
    )
    from consortia.server.run.record import (
        SettingsRecord as SettingsRecord,
    )
    from consortia.server.run.record import (
        SiteEntry as SiteEntry,
    )
    from consortia.server.run.record import (
        SitePrivacyRecord as SitePrivacyRecord,
    )
    from consortia.server.run.record import (
        StoppedRecord as StoppedRecord,
    )
    from consortia.server.run.record import (
        StrategyReport as StrategyReport,
    )
    from consortia.server.run.record import (
        TrainInfo as TrainInfo,
    )
    from consortia.server.run.round_aggregation import (
        SECURE_AGGREGATION_FAILED as SECURE_AGGREGATION_FAILED,
    )
    from consortia.server.run.round_aggregation import (
        RoundAggregation as RoundAggregation,
    )
    from consortia.server.run.round_evaluation import (
        record_evaluation as record_evaluation,
    )
    from consortia.server.run.saliency_store import (
        MAX_MAPS as MAX_MAPS,
    )
    from consortia.server.run.saliency_store import (
        MAX_PNG_BYTES as MAX_PNG_BYTES,
    )
    from consortia.server.run.saliency_store import (
        SALIENCY_RECEIVED as SALIENCY_RECEIVED,
    )
    from consortia.server.run.saliency_store import (
        SALIENCY_REFUSED as SALIENCY_REFUSED,
    )
    from consortia.server.run.saliency_store import (
        SaliencyError as SaliencyError,
    )
    from consortia.server.run.saliency_store import (
        check_png as check_png,
    )
    from consortia.server.run.saliency_store import (
        store_saliency as store_saliency,
    )
    from consortia.server.run.server_app import (
        RUNS_DIR_ENV as RUNS_DIR_ENV,
    )
    from consortia.server.run.server_app import (
        app as app,
    )
    from consortia.server.run.server_app import (
        runs_dir as runs_dir,
    )
    from consortia.server.run.state import (
        STATE_FILE as STATE_FILE,
    )
    from consortia.server.run.state import (
        ResumeTarget as ResumeTarget,
    )
    from consortia.server.run.state import (
        RunState as RunState,
    )
    from consortia.server.run.state import (
        RunStateError as RunStateError,
    )
    from consortia.server.run.state import (
        RunStateStore as RunStateStore,
    )
    from consortia.server.run.state import (
        load_strategy_state as load_strategy_state,
    )
    from consortia.server.run.state import (
        resume_target as resume_target,
    )
    from consortia.server.run.state import (
        save_strategy_state as save_strategy_state,
    )
    from consortia.server.run.wave import (
        EVENT_FAILED as EVENT_FAILED,
    )
    from consortia.server.run.wave import (
        EVENT_REPLIED as EVENT_REPLIED,
    )
    from consortia.server.run.wave import (
        EVENT_SENT as EVENT_SENT,
    )
    from consortia.server.run.wave import (
        Wave as Wave,
    )
    from consortia.server.run.wave import (
        weights_record as weights_record,
    )

__all__ = [
    "BOOTSTRAP_METHOD",
    "EVENTS_FILE",
    "EVENT_FAILED",
    "EVENT_REPLIED",
    "EVENT_SENT",
    "HOLDOUT",
    "MAX_MAPS",
    "MAX_PNG_BYTES",
    "RESULTS_FILE",
    "RESULTS_SCHEMA",
    "RUNS_DIR_ENV",
    "SALIENCY_DIR",
    "SALIENCY_RECEIVED",
    "SALIENCY_REFUSED",
    "SCHEMA",
    "SECURE_AGGREGATION_FAILED",
    "STATE_FILE",
    "TRAINING_SITES",
    "AppRecord",
    "BaselineResult",
    "Baselines",
    "CentralPrivacyRecord",
    "CentralRelease",
    "Evaluation",
    "Federation",
    "FederationError",
    "Intervals",
    "LedgerHeadRecord",
    "Metrics",
    "PrivacySection",
    "QuorumLostError",
    "ResumeTarget",
    "ResumedRecord",
    "RoundAggregation",
    "RoundEntry",
    "RoundSecureAggregation",
    "RoundSpent",
    "RunFolder",
    "RunPrivacy",
    "RunRecord",
    "RunState",
    "RunStateError",
    "RunStateStore",
    "SaliencyError",
    "SampleLevelPrivacy",
    "SecureAggregationDecision",
    "SecurityRecord",
    "SettingsRecord",
    "Site",
    "SiteEntry",
    "SiteEvaluation",
    "SitePrivacy",
    "SitePrivacyRecord",
    "StoppedRecord",
    "StrategyReport",
    "TrainInfo",
    "Wave",
    "app",
    "build_provenance",
    "check_png",
    "load_strategy_state",
    "metric_intervals",
    "pooled_metrics",
    "read_privacy_report",
    "read_record",
    "record_evaluation",
    "resume_target",
    "runs_dir",
    "save_strategy_state",
    "site_metrics",
    "spend_record",
    "store_saliency",
    "weights_record",
    "write_run_provenance",
]

_EXPORTS = {
    "AppRecord": "record",
    "BOOTSTRAP_METHOD": "evaluation",
    "BaselineResult": "record",
    "Baselines": "record",
    "CentralPrivacyRecord": "record",
    "CentralRelease": "record",
    "EVENTS_FILE": "folder",
    "EVENT_FAILED": "wave",
    "EVENT_REPLIED": "wave",
    "EVENT_SENT": "wave",
    "Evaluation": "record",
    "Federation": "federation",
    "FederationError": "federation",
    "HOLDOUT": "record",
    "Intervals": "record",
    "LedgerHeadRecord": "record",
    "MAX_MAPS": "saliency_store",
    "MAX_PNG_BYTES": "saliency_store",
    "Metrics": "record",
    "PrivacySection": "record",
    "QuorumLostError": "federation",
    "RESULTS_FILE": "folder",
    "RESULTS_SCHEMA": "record",
    "RUNS_DIR_ENV": "server_app",
    "ResumeTarget": "state",
    "ResumedRecord": "record",
    "RoundAggregation": "round_aggregation",
    "RoundEntry": "record",
    "RoundSecureAggregation": "record",
    "RoundSpent": "record",
    "RunFolder": "folder",
    "RunPrivacy": "privacy",
    "RunRecord": "record",
    "RunState": "state",
    "RunStateError": "state",
    "RunStateStore": "state",
    "SALIENCY_DIR": "folder",
    "SALIENCY_RECEIVED": "saliency_store",
    "SALIENCY_REFUSED": "saliency_store",
    "SCHEMA": "folder",
    "SECURE_AGGREGATION_FAILED": "round_aggregation",
    "STATE_FILE": "state",
    "SaliencyError": "saliency_store",
    "SampleLevelPrivacy": "record",
    "SecureAggregationDecision": "record",
    "SecurityRecord": "record",
    "SettingsRecord": "record",
    "Site": "federation",
    "SiteEntry": "record",
    "SiteEvaluation": "evaluation",
    "SitePrivacy": "privacy",
    "SitePrivacyRecord": "record",
    "StoppedRecord": "record",
    "StrategyReport": "record",
    "TRAINING_SITES": "record",
    "TrainInfo": "record",
    "Wave": "wave",
    "app": "server_app",
    "build_provenance": "provenance",
    "check_png": "saliency_store",
    "load_strategy_state": "state",
    "metric_intervals": "evaluation",
    "pooled_metrics": "evaluation",
    "read_privacy_report": "privacy",
    "read_record": "folder",
    "record_evaluation": "round_evaluation",
    "resume_target": "state",
    "runs_dir": "server_app",
    "save_strategy_state": "state",
    "site_metrics": "evaluation",
    "spend_record": "privacy",
    "store_saliency": "saliency_store",
    "weights_record": "wave",
    "write_run_provenance": "provenance",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
