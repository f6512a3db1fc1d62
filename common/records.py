"""Keys of the records and configs exchanged between the ServerApp and the ClientApps.

Every key that crosses the wire is a constant here, so the server and the sites can never
disagree on a spelling.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ARRAYS_KEY",
    "CFG_BATCH_SIZE",
    "CFG_EVALUATE_FIRST",
    "CFG_LAYOUT_FINGERPRINT",
    "CFG_LEARNING_RATE",
    "CFG_LOCAL_EPOCHS",
    "CFG_MODEL_SETTINGS",
    "CFG_ROUND",
    "CFG_RUN_NAME",
    "CFG_SEED",
    "CFG_SURFACE_METRICS",
    "CFG_TASK",
    "CONFIG_KEY",
    "EVAL_HIST_KEY",
    "EVAL_METRICS_KEY",
    "INFO_KEY",
    "M_COMPUTE_S",
    "M_EVAL_S",
    "M_NUM_EXAMPLES",
    "M_TRAIN_LOSS",
    "NODE_CONFIG_PARTITION_ID",
    "NODE_CONFIG_SITE_CONFIG",
    "RUN_CONFIG_RUN_NAME",
    "RUN_CONFIG_SETTINGS",
    "RUN_CONFIG_SIMULATION_SITES",
    "SITE_DATA_FINGERPRINT",
    "SITE_NAME",
    "SITE_NUM_EVAL",
    "SITE_NUM_TRAIN",
    "SITE_ROLE",
    "SITE_TASK",
    "TRAIN_METRICS_KEY",
    "WEIGHTS_ARRAY",
]

# Flower node config (set by `consortia node start` on `flower-supernode --node-config`).
NODE_CONFIG_SITE_CONFIG: Final = "site-config"

# Flower run config (set by `consortia run` in the generated app's pyproject).
RUN_CONFIG_SETTINGS: Final = "consortia-settings"
RUN_CONFIG_RUN_NAME: Final = "consortia-run-name"
RUN_CONFIG_SIMULATION_SITES: Final = "consortia-simulation-sites"

# Node config that Flower's simulation engine gives each simulated SuperNode.
NODE_CONFIG_PARTITION_ID: Final = "partition-id"

# RecordDict entries.
ARRAYS_KEY: Final = "arrays"
WEIGHTS_ARRAY: Final = "weights"
CONFIG_KEY: Final = "config"
INFO_KEY: Final = "site-info"
TRAIN_METRICS_KEY: Final = "train-metrics"
EVAL_METRICS_KEY: Final = "eval-metrics"
EVAL_HIST_KEY: Final = "eval-histograms"

# ConfigRecord keys sent by the server with train/evaluate messages.
CFG_ROUND: Final = "round"
CFG_RUN_NAME: Final = "run-name"
CFG_TASK: Final = "task"
CFG_MODEL_SETTINGS: Final = "model-settings"
CFG_LOCAL_EPOCHS: Final = "local-epochs"
CFG_BATCH_SIZE: Final = "batch-size"
CFG_LEARNING_RATE: Final = "learning-rate"
CFG_SEED: Final = "seed"
CFG_EVALUATE_FIRST: Final = "evaluate-first"
CFG_LAYOUT_FINGERPRINT: Final = "layout-fingerprint"
CFG_SURFACE_METRICS: Final = "surface-metrics"

# ConfigRecord keys of a site's answer to the `query` message.
SITE_NAME: Final = "name"
SITE_ROLE: Final = "role"
SITE_TASK: Final = "task"
SITE_NUM_TRAIN: Final = "num-train"
SITE_NUM_EVAL: Final = "num-eval"
SITE_DATA_FINGERPRINT: Final = "data-fingerprint"

# MetricRecord keys of a train reply.
M_NUM_EXAMPLES: Final = "num-examples"
M_TRAIN_LOSS: Final = "train-loss"
M_COMPUTE_S: Final = "compute-s"
M_EVAL_S: Final = "eval-s"
