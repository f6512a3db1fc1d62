#!/usr/bin/env bash
# A site's one-shot preparation before its node starts (docker/compose.yaml, services
# `hospital-*-init`, installed in the node image as consortia-site-init):
#
# 1. DEMO_DATA set: write this site's SYNTHETIC demo data set there unless it exists
#    (the generator of `consortia demo`; not patient data). Leave DEMO_DATA empty for real
#    data, which is mounted read-only and never written.
# 2. Approve every run config in RUN_CONFIGS for this site (`consortia node approve`): the
#    approval lands in the node's state folder (the site config's node.state_dir), where the
#    node checks every message against it. Approving a config again changes nothing.
set -euo pipefail

SITE_CONFIG="${SITE_CONFIG:-/etc/consortia/site.toml}"
RUN_CONFIGS="${RUN_CONFIGS:-}"          # run configs (TOML) to approve, separated by spaces
APPROVED_BY="${APPROVED_BY:-site init (docker compose)}"
APPROVAL_NOTE="${APPROVAL_NOTE:-}"
DEMO_DATA="${DEMO_DATA:-}"              # where to write synthetic demo data; empty: real data
DEMO_SITE_INDEX="${DEMO_SITE_INDEX:-0}" # which synthetic scanner profile (0, 1, 2, ...)
DEMO_TRAIN_CASES="${DEMO_TRAIN_CASES:-960}"
DEMO_TEST_CASES="${DEMO_TEST_CASES:-96}"
DEMO_IMAGE_SIZE="${DEMO_IMAGE_SIZE:-64}"
DEMO_SEED="${DEMO_SEED:-0}"

log() { printf '%s site-init: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

if [[ -n "$DEMO_DATA" ]]; then
    if [[ -f "$DEMO_DATA" ]]; then
        log "demo data exists, kept: $DEMO_DATA"
    else
        python - "$DEMO_DATA" "$DEMO_SITE_INDEX" "$DEMO_TRAIN_CASES" "$DEMO_TEST_CASES" \
            "$DEMO_IMAGE_SIZE" "$DEMO_SEED" <<'PY'
import logging
import sys
from pathlib import Path

from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.logs import setup_logging

setup_logging(logging.INFO)
path, index, train, test, size, seed = sys.argv[1:7]
settings = DemoDataSettings(
    image_size=int(size), train_cases=int(train), test_cases=int(test), seed=int(seed)
)
write_site_npz(Path(path), int(index), settings)
PY
    fi
fi

for run_config in $RUN_CONFIGS; do
    consortia node approve "$run_config" --site-config "$SITE_CONFIG" \
        --by "$APPROVED_BY" --note "$APPROVAL_NOTE"
done
log "ready: $SITE_CONFIG"
