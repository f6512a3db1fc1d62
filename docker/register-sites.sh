#!/usr/bin/env bash
# Register the sites' public keys with the running server (docker/compose.yaml, service
# `register`, installed in the server image as consortia-register-sites): afterwards each
# site's node may connect and its signed updates verify.
#
# It writes the registry into the server's state folder (STATE_DIR: the same volume as the
# server's --state-dir, which the ServerApp reads) and registers each key with the SuperLink.
# Idempotent: a site registered before with the same key is left as it is.
set -euo pipefail

SUPERLINK="${SUPERLINK:-127.0.0.1:9093}"  # the loopback Control API
CA_CERT="${CA_CERT:-/etc/consortia/public/ca.pem}"
STATE_DIR="${STATE_DIR:-/var/lib/consortia/server}"
PUBKEY_DIR="${PUBKEY_DIR:-/etc/consortia/public}"   # NAME.pub of every site
SITES="${SITES:?SITES must name the sites, separated by spaces}"
ATTEMPTS="${REGISTER_ATTEMPTS:-30}"                  # the SuperLink may still be starting
RETRY_S="${REGISTER_RETRY_S:-2}"

log() { printf '%s register: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

for site in $SITES; do
    attempt=1
    until consortia site register "$PUBKEY_DIR/$site.pub" --name "$site" \
        --superlink "$SUPERLINK" --state-dir "$STATE_DIR" --ca "$CA_CERT"; do
        if ((attempt >= ATTEMPTS)); then
            log "could not register $site with $SUPERLINK after $attempt attempts"
            exit 1
        fi
        log "registering $site failed (attempt $attempt of $ATTEMPTS); again in ${RETRY_S} s"
        sleep "$RETRY_S"
        attempt=$((attempt + 1))
    done
done
log "registered with $SUPERLINK: $SITES"
