"""Keys of the records and configs exchanged between the ServerApp and the ClientApps.

Every key that crosses the wire is a constant here, so the server and the sites can never
disagree on a spelling.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTION_SECAGG_KEYS",
    "ACTION_SECAGG_UNMASK",
    "ARRAYS_KEY",
    "CFG_APP_HASH",
    "CFG_BATCH_SIZE",
    "CFG_CONFIG_HASH",
    "CFG_DATASET",
    "CFG_EVALUATE_FIRST",
    "CFG_LAYOUT_FINGERPRINT",
    "CFG_LEARNING_RATE",
    "CFG_LOCAL_EPOCHS",
    "CFG_MODEL_SETTINGS",
    "CFG_NONCE",
    "CFG_PRIVACY_SETTINGS",
    "CFG_PROXIMAL_MU",
    "CFG_ROUND",
    "CFG_RUN_ID",
    "CFG_RUN_NAME",
    "CFG_SECURE",
    "CFG_SEED",
    "CFG_SURFACE_METRICS",
    "CFG_TASK",
    "CFG_TOTAL_ROUNDS",
    "CFG_WEIGHT_NORM",
    "CONFIG_KEY",
    "ERROR_BAD_MESSAGE",
    "ERROR_BAD_SIGNATURE",
    "ERROR_NOT_APPROVED",
    "ERROR_PRIVACY_BUDGET",
    "ERROR_REFUSED",
    "ERROR_SECAGG",
    "ERROR_SITE_DATA",
    "EVAL_BOOTSTRAP_KEY",
    "EVAL_HIST_KEY",
    "EVAL_METRICS_KEY",
    "INFO_KEY",
    "LEDGER_HEAD_ENTRIES",
    "LEDGER_HEAD_HASH",
    "LEDGER_HEAD_KEY",
    "M_COMPUTE_S",
    "M_EVAL_S",
    "M_NUM_EXAMPLES",
    "M_TRAIN_LOSS",
    "NODE_AUDIT_HEAD",
    "NODE_AUDIT_KEY",
    "NODE_AUDIT_SEQ",
    "NODE_CONFIG_PARTITION_ID",
    "NODE_CONFIG_SITE_CONFIG",
    "PRIVACY_KEY",
    "P_ACCOUNTANT",
    "P_DELTA",
    "P_EPSILON",
    "P_MAX_GRAD_NORM",
    "P_NOISE_MULTIPLIER",
    "P_RUN_EPSILON",
    "P_SAMPLE_RATE",
    "P_STEPS",
    "RUN_CONFIG_RESUME",
    "RUN_CONFIG_RUN_NAME",
    "RUN_CONFIG_SETTINGS",
    "RUN_CONFIG_SIMULATION_SITES",
    "SALIENCY_KEY",
    "SECAGG_CONFIG_KEY",
    "SECAGG_KEY",
    "SECAGG_PEERS_KEY",
    "SECAGG_ROUND_KEY",
    "SECAGG_STATE_KEY",
    "SIGNATURE_KEY",
    "SIG_DIGEST",
    "SIG_KIND",
    "SIG_NONCE",
    "SIG_ROUND",
    "SIG_SIGNATURE",
    "SIG_SITE",
    "SITE_DATA_FINGERPRINT",
    "SITE_DELTA",
    "SITE_EPSILON_SPENT",
    "SITE_MAX_EPSILON",
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
# "true": continue the run folder of this run name from its last completed round.
RUN_CONFIG_RESUME: Final = "consortia-resume"

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
# Final evaluation of a segmentation model: per bootstrap replicate, metric sums and counts
# of the site's resampled cases (`consortia.common.metrics.bootstrap`).
EVAL_BOOTSTRAP_KEY: Final = "eval-bootstrap"
# Final evaluation at a held-out site whose config shares them: saliency maps as PNG bytes
# (uint8 arrays named `case-NN`).
SALIENCY_KEY: Final = "saliency"

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
CFG_DATASET: Final = "dataset"

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

# ConfigRecord keys of the privacy part of instructions, answers and train replies.
CFG_RUN_ID: Final = "run-id"
CFG_TOTAL_ROUNDS: Final = "total-rounds"
CFG_PRIVACY_SETTINGS: Final = "privacy-settings"
PRIVACY_KEY: Final = "privacy"
SITE_MAX_EPSILON: Final = "max-epsilon"
SITE_DELTA: Final = "delta"
SITE_EPSILON_SPENT: Final = "epsilon-spent"
P_NOISE_MULTIPLIER: Final = "noise-multiplier"
P_SAMPLE_RATE: Final = "sample-rate"
P_STEPS: Final = "steps"
P_DELTA: Final = "delta"
P_EPSILON: Final = "epsilon"
P_RUN_EPSILON: Final = "run-epsilon"
P_ACCOUNTANT: Final = "accountant"
P_MAX_GRAD_NORM: Final = "max-grad-norm"

# Error codes of a site's error replies (Flower `Error.code`).
ERROR_SITE_DATA: Final = 4101
ERROR_REFUSED: Final = 4102
ERROR_BAD_MESSAGE: Final = 4103
ERROR_PRIVACY_BUDGET: Final = 4104
ERROR_NOT_APPROVED: Final = 4105
ERROR_BAD_SIGNATURE: Final = 4106
ERROR_SECAGG: Final = 4107

# Signed replies: every reply of a site carries a signature record over its content.
CFG_NONCE: Final = "nonce"
SIGNATURE_KEY: Final = "signature"
SIG_SITE: Final = "site"
SIG_KIND: Final = "kind"
SIG_ROUND: Final = "round"
SIG_NONCE: Final = "nonce"
SIG_DIGEST: Final = "digest"
SIG_SIGNATURE: Final = "signature"

# Run approval: what the server says it runs (the site checks its own approval list).
CFG_CONFIG_HASH: Final = "config-hash"
CFG_APP_HASH: Final = "app-hash"

# Secure aggregation (SecAgg+): message actions, records and keys.
ACTION_SECAGG_KEYS: Final = "secagg_keys"
ACTION_SECAGG_UNMASK: Final = "secagg_unmask"
SECAGG_CONFIG_KEY: Final = "secagg-config"
SECAGG_KEY: Final = "secagg"
SECAGG_STATE_KEY: Final = "secagg-state"
SECAGG_PEERS_KEY: Final = "secagg-peers"
SECAGG_ROUND_KEY: Final = "secagg-round"
CFG_SECURE: Final = "secure-aggregation"
CFG_WEIGHT_NORM: Final = "weight-norm"
# FedProx: weight of the proximal term mu/2 * ||w - w_global||^2 in local training.
CFG_PROXIMAL_MU: Final = "proximal-mu"

# The head of the node's own audit log, in every signed reply (anchors the node's log in
# the run's signed provenance).
NODE_AUDIT_KEY: Final = "node-audit"
NODE_AUDIT_HEAD: Final = "head"
NODE_AUDIT_SEQ: Final = "seq"

# The head of the site's privacy ledger for the round's data set, in every train reply:
# the hash of its last entry (the chain's start when empty) and its entry count. The
# server records it per round and in the provenance; the privacy audit checks the ledger
# still holds it (a ledger cut or deleted after the run shows).
LEDGER_HEAD_KEY: Final = "ledger-head"
LEDGER_HEAD_HASH: Final = "sha256"
LEDGER_HEAD_ENTRIES: Final = "entries"
