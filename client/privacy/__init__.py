"""DP-SGD at the site: the training hook, per-example clipping, the privacy budget and evaluation
allowance.

The modules, one concept each:

- ``budget``: The node's privacy gate: plan a round's DP-SGD within the site's policy, refuse a
  round that would break it, and record what was spent in the data set's ledger.
- ``cli``: `consortia privacy plan RUN.toml --site-config SITE.toml`: what a study's DP-SGD will
  cost this site, and whether it is likely to learn, before any budget is spent.
- ``dp_engine``: One DP-SGD step, with the per-example clipping engine chosen per model.
- ``dp_recipe``: The DP training recipe's parts that change no privacy accounting: the parameter
  subset a site fine-tunes, the weights' exponential moving average it sends, and the DP rounds'
  optimiser (`[run.privacy.recipe]`,
  `consortia.common.config.privacy_settings.DPRecipeSettings`).
- ``dp_training``: DP-SGD local training with Opacus: the training hook, kept apart from the
  privacy math (`consortia.common.privacy.accounting`) and the bookkeeping
  (`consortia.common.privacy.ledger`).
- ``evaluation_allowance``: How often a site evaluates for one approved study: the evaluation
  oracle is bounded (red-team F4).
- ``per_sample_clipping``: Per-example gradient clipping for DP-SGD in one backward pass,
  without Opacus' hooks.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.privacy.budget import (
        PrivacyBudget as PrivacyBudget,
    )
    from consortia.client.privacy.budget import (
        PrivacyRefusedError as PrivacyRefusedError,
    )
    from consortia.client.privacy.budget import (
        RoundRequest as RoundRequest,
    )
    from consortia.client.privacy.budget import (
        open_ledger as open_ledger,
    )
    from consortia.client.privacy.budget import (
        plan_round as plan_round,
    )
    from consortia.client.privacy.budget import (
        record_round as record_round,
    )
    from consortia.client.privacy.budget import (
        round_request as round_request,
    )
    from consortia.client.privacy.dp_engine import (
        GRAD_SAMPLE_MODES as GRAD_SAMPLE_MODES,
    )
    from consortia.client.privacy.dp_engine import (
        Prepare as Prepare,
    )
    from consortia.client.privacy.dp_engine import (
        PrivateStep as PrivateStep,
    )
    from consortia.client.privacy.dp_engine import (
        make_private_step as make_private_step,
    )
    from consortia.client.privacy.dp_engine import (
        resolve_mode as resolve_mode,
    )
    from consortia.client.privacy.dp_recipe import (
        WeightAverage as WeightAverage,
    )
    from consortia.client.privacy.dp_recipe import (
        dp_optimiser as dp_optimiser,
    )
    from consortia.client.privacy.dp_recipe import (
        frozen_except as frozen_except,
    )
    from consortia.client.privacy.dp_recipe import (
        parameter_group as parameter_group,
    )
    from consortia.client.privacy.dp_training import (
        DPRound as DPRound,
    )
    from consortia.client.privacy.dp_training import (
        GradSampleMode as GradSampleMode,
    )
    from consortia.client.privacy.dp_training import (
        train_local_dp as train_local_dp,
    )
    from consortia.client.privacy.evaluation_allowance import (
        EVALUATIONS_DIR as EVALUATIONS_DIR,
    )
    from consortia.client.privacy.evaluation_allowance import (
        EvaluationAllowance as EvaluationAllowance,
    )
    from consortia.client.privacy.evaluation_allowance import (
        EvaluationGrant as EvaluationGrant,
    )
    from consortia.client.privacy.evaluation_allowance import (
        EvaluationRefusedError as EvaluationRefusedError,
    )
    from consortia.client.privacy.per_sample_clipping import (
        FusedClipper as FusedClipper,
    )
    from consortia.client.privacy.per_sample_clipping import (
        Strategy as Strategy,
    )
    from consortia.client.privacy.per_sample_clipping import (
        UnsupportedModelError as UnsupportedModelError,
    )
    from consortia.client.privacy.per_sample_clipping import (
        unsupported_layers as unsupported_layers,
    )

__all__ = [
    "EVALUATIONS_DIR",
    "GRAD_SAMPLE_MODES",
    "DPRound",
    "EvaluationAllowance",
    "EvaluationGrant",
    "EvaluationRefusedError",
    "FusedClipper",
    "GradSampleMode",
    "Prepare",
    "PrivacyBudget",
    "PrivacyRefusedError",
    "PrivateStep",
    "RoundRequest",
    "Strategy",
    "UnsupportedModelError",
    "WeightAverage",
    "dp_optimiser",
    "frozen_except",
    "make_private_step",
    "open_ledger",
    "parameter_group",
    "plan_round",
    "record_round",
    "resolve_mode",
    "round_request",
    "train_local_dp",
    "unsupported_layers",
]

_EXPORTS = {
    "DPRound": "dp_training",
    "EVALUATIONS_DIR": "evaluation_allowance",
    "EvaluationAllowance": "evaluation_allowance",
    "EvaluationGrant": "evaluation_allowance",
    "EvaluationRefusedError": "evaluation_allowance",
    "FusedClipper": "per_sample_clipping",
    "GRAD_SAMPLE_MODES": "dp_engine",
    "GradSampleMode": "dp_training",
    "Prepare": "dp_engine",
    "PrivacyBudget": "budget",
    "PrivacyRefusedError": "budget",
    "PrivateStep": "dp_engine",
    "RoundRequest": "budget",
    "Strategy": "per_sample_clipping",
    "UnsupportedModelError": "per_sample_clipping",
    "WeightAverage": "dp_recipe",
    "dp_optimiser": "dp_recipe",
    "frozen_except": "dp_recipe",
    "make_private_step": "dp_engine",
    "open_ledger": "budget",
    "parameter_group": "dp_recipe",
    "plan_round": "budget",
    "record_round": "budget",
    "resolve_mode": "dp_engine",
    "round_request": "budget",
    "train_local_dp": "dp_training",
    "unsupported_layers": "per_sample_clipping",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
