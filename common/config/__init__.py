"""Typed settings, parsed once: the run config, the site config and their sections.

The modules, one concept each:

- ``device_names``: The device names a site may configure, without importing torch (settings use
  it).
- ``lr_schedule``: The learning rate of every local optimiser step, over the whole run (torch-
  free).
- ``model_settings``: What determines a model's architecture (:class:`ModelSettings`) and the
  approved weights it starts from (:class:`ModelInit`), plain and torch-free.
- ``names``: Site names where they meet the file system: one check, used wherever a name that a
  node declared (or a coordinator typed) becomes a file or folder name.
- ``plan_settings``: The preprocessing plan of a segmentation study, `[run.plan]`: part of the
  approved run config.
- ``planner``: The segmentation planner: from the sites' fingerprints to a `[run.plan]`, as nnU-
  Net plans.
- ``privacy_settings``: Privacy settings: what a run asks for (`[run.privacy]`) and what a site
  allows (`[privacy]` in the site config).
- ``roster``: A study's roster (`[[run.sites]]`): which sites take part, with which keys and
  roles.
- ``security_settings``: Security settings of a run: `[run.secure_aggregation]`.
- ``settings``: Typed settings for a coordinator's run config and a hospital's site config.
- ``strategy_settings``: How the server combines the sites' updates: `[strategy]` and
  `[validation]`.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.config.device_names import (
        DEVICE_ENV as DEVICE_ENV,
    )
    from consortia.common.config.device_names import (
        DEVICE_PATTERN as DEVICE_PATTERN,
    )
    from consortia.common.config.lr_schedule import (
        POLY_EXPONENT as POLY_EXPONENT,
    )
    from consortia.common.config.lr_schedule import (
        Schedule as Schedule,
    )
    from consortia.common.config.lr_schedule import (
        ScheduleName as ScheduleName,
    )
    from consortia.common.config.model_settings import (
        GROUP as GROUP,
    )
    from consortia.common.config.model_settings import (
        INSTANCE as INSTANCE,
    )
    from consortia.common.config.model_settings import (
        RESNET_LAYERS as RESNET_LAYERS,
    )
    from consortia.common.config.model_settings import (
        RESNET_PLANES as RESNET_PLANES,
    )
    from consortia.common.config.model_settings import (
        UNET as UNET,
    )
    from consortia.common.config.model_settings import (
        Architecture as Architecture,
    )
    from consortia.common.config.model_settings import (
        ModelInit as ModelInit,
    )
    from consortia.common.config.model_settings import (
        ModelSettings as ModelSettings,
    )
    from consortia.common.config.model_settings import (
        NormKind as NormKind,
    )
    from consortia.common.config.names import (
        SITE_NAME_PATTERN as SITE_NAME_PATTERN,
    )
    from consortia.common.config.names import (
        InvalidNameError as InvalidNameError,
    )
    from consortia.common.config.names import (
        check_site_name as check_site_name,
    )
    from consortia.common.config.names import (
        site_path as site_path,
    )
    from consortia.common.config.plan_settings import (
        ORIENTATION_AXES as ORIENTATION_AXES,
    )
    from consortia.common.config.plan_settings import (
        PlanSettings as PlanSettings,
    )
    from consortia.common.config.planner import (
        EXTENT_ROUNDING_MM as EXTENT_ROUNDING_MM,
    )
    from consortia.common.config.planner import (
        FINGERPRINT_FORMAT as FINGERPRINT_FORMAT,
    )
    from consortia.common.config.planner import (
        Fingerprint as Fingerprint,
    )
    from consortia.common.config.planner import (
        IntensityStats as IntensityStats,
    )
    from consortia.common.config.planner import (
        merge_fingerprints as merge_fingerprints,
    )
    from consortia.common.config.planner import (
        plan_from_fingerprint as plan_from_fingerprint,
    )
    from consortia.common.config.planner import (
        plan_toml as plan_toml,
    )
    from consortia.common.config.privacy_settings import (
        ACCOUNTANTS as ACCOUNTANTS,
    )
    from consortia.common.config.privacy_settings import (
        DEFAULT_TARGET_EPSILON as DEFAULT_TARGET_EPSILON,
    )
    from consortia.common.config.privacy_settings import (
        PARAMETER_GROUPS as PARAMETER_GROUPS,
    )
    from consortia.common.config.privacy_settings import (
        Accountant as Accountant,
    )
    from consortia.common.config.privacy_settings import (
        CentralPrivacySettings as CentralPrivacySettings,
    )
    from consortia.common.config.privacy_settings import (
        DPRecipeSettings as DPRecipeSettings,
    )
    from consortia.common.config.privacy_settings import (
        ParameterGroup as ParameterGroup,
    )
    from consortia.common.config.privacy_settings import (
        PrivacyPolicy as PrivacyPolicy,
    )
    from consortia.common.config.privacy_settings import (
        SamplePrivacySettings as SamplePrivacySettings,
    )
    from consortia.common.config.roster import (
        admitted_by_roster as admitted_by_roster,
    )
    from consortia.common.config.roster import (
        own_entry_refusal as own_entry_refusal,
    )
    from consortia.common.config.roster import (
        roster_node_ids as roster_node_ids,
    )
    from consortia.common.config.roster import (
        site_fingerprint as site_fingerprint,
    )
    from consortia.common.config.security_settings import (
        SecureAggregationSettings as SecureAggregationSettings,
    )
    from consortia.common.config.settings import (
        DataSettings as DataSettings,
    )
    from consortia.common.config.settings import (
        ModelConfig as ModelConfig,
    )
    from consortia.common.config.settings import (
        NodeSettings as NodeSettings,
    )
    from consortia.common.config.settings import (
        ReportSettings as ReportSettings,
    )
    from consortia.common.config.settings import (
        Role as Role,
    )
    from consortia.common.config.settings import (
        RosterEntry as RosterEntry,
    )
    from consortia.common.config.settings import (
        RunSettings as RunSettings,
    )
    from consortia.common.config.settings import (
        SaliencySettings as SaliencySettings,
    )
    from consortia.common.config.settings import (
        SiteInfo as SiteInfo,
    )
    from consortia.common.config.settings import (
        SiteSettings as SiteSettings,
    )
    from consortia.common.config.settings import (
        Task as Task,
    )
    from consortia.common.config.settings import (
        TrainingSettings as TrainingSettings,
    )
    from consortia.common.config.settings import (
        format_validation_error as format_validation_error,
    )
    from consortia.common.config.settings import (
        load_run_settings as load_run_settings,
    )
    from consortia.common.config.settings import (
        load_site_settings as load_site_settings,
    )
    from consortia.common.config.settings import (
        run_settings_from_json as run_settings_from_json,
    )
    from consortia.common.config.strategy_settings import (
        LINEAR_STRATEGIES as LINEAR_STRATEGIES,
    )
    from consortia.common.config.strategy_settings import (
        STRATEGY_NAMES as STRATEGY_NAMES,
    )
    from consortia.common.config.strategy_settings import (
        StrategyName as StrategyName,
    )
    from consortia.common.config.strategy_settings import (
        StrategySettings as StrategySettings,
    )
    from consortia.common.config.strategy_settings import (
        ValidationSettings as ValidationSettings,
    )

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_TARGET_EPSILON",
    "DEVICE_ENV",
    "DEVICE_PATTERN",
    "EXTENT_ROUNDING_MM",
    "FINGERPRINT_FORMAT",
    "GROUP",
    "INSTANCE",
    "LINEAR_STRATEGIES",
    "ORIENTATION_AXES",
    "PARAMETER_GROUPS",
    "POLY_EXPONENT",
    "RESNET_LAYERS",
    "RESNET_PLANES",
    "SITE_NAME_PATTERN",
    "STRATEGY_NAMES",
    "UNET",
    "Accountant",
    "Architecture",
    "CentralPrivacySettings",
    "DPRecipeSettings",
    "DataSettings",
    "Fingerprint",
    "IntensityStats",
    "InvalidNameError",
    "ModelConfig",
    "ModelInit",
    "ModelSettings",
    "NodeSettings",
    "NormKind",
    "ParameterGroup",
    "PlanSettings",
    "PrivacyPolicy",
    "ReportSettings",
    "Role",
    "RosterEntry",
    "RunSettings",
    "SaliencySettings",
    "SamplePrivacySettings",
    "Schedule",
    "ScheduleName",
    "SecureAggregationSettings",
    "SiteInfo",
    "SiteSettings",
    "StrategyName",
    "StrategySettings",
    "Task",
    "TrainingSettings",
    "ValidationSettings",
    "admitted_by_roster",
    "check_site_name",
    "format_validation_error",
    "load_run_settings",
    "load_site_settings",
    "merge_fingerprints",
    "own_entry_refusal",
    "plan_from_fingerprint",
    "plan_toml",
    "roster_node_ids",
    "run_settings_from_json",
    "site_fingerprint",
    "site_path",
]

_EXPORTS = {
    "ACCOUNTANTS": "privacy_settings",
    "Accountant": "privacy_settings",
    "Architecture": "model_settings",
    "CentralPrivacySettings": "privacy_settings",
    "DEFAULT_TARGET_EPSILON": "privacy_settings",
    "DEVICE_ENV": "device_names",
    "DEVICE_PATTERN": "device_names",
    "DPRecipeSettings": "privacy_settings",
    "DataSettings": "settings",
    "EXTENT_ROUNDING_MM": "planner",
    "FINGERPRINT_FORMAT": "planner",
    "Fingerprint": "planner",
    "GROUP": "model_settings",
    "INSTANCE": "model_settings",
    "IntensityStats": "planner",
    "InvalidNameError": "names",
    "LINEAR_STRATEGIES": "strategy_settings",
    "ModelConfig": "settings",
    "ModelInit": "model_settings",
    "ModelSettings": "model_settings",
    "NodeSettings": "settings",
    "NormKind": "model_settings",
    "ORIENTATION_AXES": "plan_settings",
    "PARAMETER_GROUPS": "privacy_settings",
    "POLY_EXPONENT": "lr_schedule",
    "ParameterGroup": "privacy_settings",
    "PlanSettings": "plan_settings",
    "PrivacyPolicy": "privacy_settings",
    "RESNET_LAYERS": "model_settings",
    "RESNET_PLANES": "model_settings",
    "ReportSettings": "settings",
    "Role": "settings",
    "RosterEntry": "settings",
    "RunSettings": "settings",
    "SITE_NAME_PATTERN": "names",
    "STRATEGY_NAMES": "strategy_settings",
    "SaliencySettings": "settings",
    "SamplePrivacySettings": "privacy_settings",
    "Schedule": "lr_schedule",
    "ScheduleName": "lr_schedule",
    "SecureAggregationSettings": "security_settings",
    "SiteInfo": "settings",
    "SiteSettings": "settings",
    "StrategyName": "strategy_settings",
    "StrategySettings": "strategy_settings",
    "Task": "settings",
    "TrainingSettings": "settings",
    "UNET": "model_settings",
    "ValidationSettings": "strategy_settings",
    "admitted_by_roster": "roster",
    "check_site_name": "names",
    "format_validation_error": "settings",
    "load_run_settings": "settings",
    "load_site_settings": "settings",
    "merge_fingerprints": "planner",
    "own_entry_refusal": "roster",
    "plan_from_fingerprint": "planner",
    "plan_toml": "planner",
    "roster_node_ids": "roster",
    "run_settings_from_json": "settings",
    "site_fingerprint": "roster",
    "site_path": "names",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
