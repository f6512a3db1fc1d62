"""Privacy math and bookkeeping: DP-SGD accounting, a site's ledger and the privacy planner.

The modules, one concept each:

- ``accounting``: Privacy math for DP-SGD with Poisson sampling: pure functions over Opacus'
  accountants.
- ``ledger``: A site's privacy ledger: every DP-SGD round ever run on one data set.
- ``planner``: The privacy planner: what a study's DP-SGD will cost a site, and whether it can
  learn, before any budget is spent.
- ``spend``: What one round of DP-SGD at a site spent: one record for the site's training, its
  ledger, the train reply and the server's run record.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.privacy.accounting import (
        HistoryEntry as HistoryEntry,
    )
    from consortia.common.privacy.accounting import (
        PoissonPlan as PoissonPlan,
    )
    from consortia.common.privacy.accounting import (
        check_history_entry as check_history_entry,
    )
    from consortia.common.privacy.accounting import (
        epsilon_of as epsilon_of,
    )
    from consortia.common.privacy.accounting import (
        make_accountant as make_accountant,
    )
    from consortia.common.privacy.accounting import (
        noise_for_target as noise_for_target,
    )
    from consortia.common.privacy.accounting import (
        poisson_plan as poisson_plan,
    )
    from consortia.common.privacy.ledger import (
        LEDGER_SCHEMA as LEDGER_SCHEMA,
    )
    from consortia.common.privacy.ledger import (
        LedgerEntry as LedgerEntry,
    )
    from consortia.common.privacy.ledger import (
        LedgerError as LedgerError,
    )
    from consortia.common.privacy.ledger import (
        LedgerHead as LedgerHead,
    )
    from consortia.common.privacy.ledger import (
        PrivacyLedger as PrivacyLedger,
    )
    from consortia.common.privacy.ledger import (
        ledger_lock as ledger_lock,
    )
    from consortia.common.privacy.ledger import (
        ledger_path as ledger_path,
    )
    from consortia.common.privacy.planner import (
        CALIBRATION as CALIBRATION,
    )
    from consortia.common.privacy.planner import (
        LIKELY_TO_LEARN_UP_TO as LIKELY_TO_LEARN_UP_TO,
    )
    from consortia.common.privacy.planner import (
        UNLIKELY_TO_LEARN_FROM as UNLIKELY_TO_LEARN_FROM,
    )
    from consortia.common.privacy.planner import (
        CalibrationPoint as CalibrationPoint,
    )
    from consortia.common.privacy.planner import (
        LearningOutlook as LearningOutlook,
    )
    from consortia.common.privacy.planner import (
        PlanError as PlanError,
    )
    from consortia.common.privacy.planner import (
        PrivacyPlan as PrivacyPlan,
    )
    from consortia.common.privacy.planner import (
        UnlikelyToLearnError as UnlikelyToLearnError,
    )
    from consortia.common.privacy.planner import (
        check_plannable as check_plannable,
    )
    from consortia.common.privacy.planner import (
        learning_outlook as learning_outlook,
    )
    from consortia.common.privacy.planner import (
        learning_refusal as learning_refusal,
    )
    from consortia.common.privacy.planner import (
        logical_batch_size as logical_batch_size,
    )
    from consortia.common.privacy.planner import (
        outlook_message as outlook_message,
    )
    from consortia.common.privacy.planner import (
        plan_study as plan_study,
    )
    from consortia.common.privacy.planner import (
        rounds_within_limit as rounds_within_limit,
    )
    from consortia.common.privacy.spend import (
        SPEND_FIELDS as SPEND_FIELDS,
    )
    from consortia.common.privacy.spend import (
        PrivacySpend as PrivacySpend,
    )
    from consortia.common.privacy.spend import (
        spend_error as spend_error,
    )

__all__ = [
    "CALIBRATION",
    "LEDGER_SCHEMA",
    "LIKELY_TO_LEARN_UP_TO",
    "SPEND_FIELDS",
    "UNLIKELY_TO_LEARN_FROM",
    "CalibrationPoint",
    "HistoryEntry",
    "LearningOutlook",
    "LedgerEntry",
    "LedgerError",
    "LedgerHead",
    "PlanError",
    "PoissonPlan",
    "PrivacyLedger",
    "PrivacyPlan",
    "PrivacySpend",
    "UnlikelyToLearnError",
    "check_history_entry",
    "check_plannable",
    "epsilon_of",
    "learning_outlook",
    "learning_refusal",
    "ledger_lock",
    "ledger_path",
    "logical_batch_size",
    "make_accountant",
    "noise_for_target",
    "outlook_message",
    "plan_study",
    "poisson_plan",
    "rounds_within_limit",
    "spend_error",
]

_EXPORTS = {
    "CALIBRATION": "planner",
    "CalibrationPoint": "planner",
    "HistoryEntry": "accounting",
    "LEDGER_SCHEMA": "ledger",
    "LIKELY_TO_LEARN_UP_TO": "planner",
    "LearningOutlook": "planner",
    "LedgerEntry": "ledger",
    "LedgerError": "ledger",
    "LedgerHead": "ledger",
    "PlanError": "planner",
    "PoissonPlan": "accounting",
    "PrivacyLedger": "ledger",
    "PrivacyPlan": "planner",
    "PrivacySpend": "spend",
    "SPEND_FIELDS": "spend",
    "UNLIKELY_TO_LEARN_FROM": "planner",
    "UnlikelyToLearnError": "planner",
    "check_history_entry": "accounting",
    "check_plannable": "planner",
    "epsilon_of": "accounting",
    "learning_outlook": "planner",
    "learning_refusal": "planner",
    "ledger_lock": "ledger",
    "ledger_path": "ledger",
    "logical_batch_size": "planner",
    "make_accountant": "accounting",
    "noise_for_target": "accounting",
    "outlook_message": "planner",
    "plan_study": "planner",
    "poisson_plan": "accounting",
    "rounds_within_limit": "planner",
    "spend_error": "spend",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
