#!/usr/bin/env bash
# The compose demo's PKI in one step on one host (docker/compose.yaml, service `pki`,
# installed in the server image as consortia-pki-init): the consortium CA, the server's TLS
# certificate and a key pair per site, each written into its own volume.
#
# Idempotent: files that exist are kept (`consortia certs` never overwrites without --force),
# so every `docker compose up` may run it again.
#
# In a real consortium these steps run on different machines: the CA on an offline machine
# of the coordinator, `consortia certs site` at each hospital, whose private key never
# leaves it (docs/security.md). One container holding every key is for a demo only.
set -euo pipefail

CA_DIR="${CA_DIR:-/pki/ca}"                       # ca.key, ca.pem (stays with the pki service)
SERVER_CERTS_DIR="${SERVER_CERTS_DIR:-/pki/server}" # server.pem, server.key, ca.pem
PUBLIC_DIR="${PUBLIC_DIR:-/pki/public}"           # ca.pem and every site's NAME.pub
SITE_KEYS_ROOT="${SITE_KEYS_ROOT:-/pki/sites}"    # SITE_KEYS_ROOT/NAME: NAME.key, NAME.pub, ca.pem
SERVER_HOSTS="${SERVER_HOSTS:-server localhost 127.0.0.1}"  # names in the server certificate
SITES="${SITES:?SITES must name the sites, separated by spaces}"
PKI_OWNER="${PKI_OWNER:-}"                        # uid:gid that owns the files afterwards

log() { printf '%s pki: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

if [[ -f "$CA_DIR/ca.pem" ]]; then
    log "consortium CA exists, kept: $CA_DIR/ca.pem"
else
    consortia certs init --dir "$CA_DIR" --name "Consortia compose demo CA"
fi

if [[ -f "$SERVER_CERTS_DIR/server.pem" ]]; then
    log "server certificate exists, kept: $SERVER_CERTS_DIR/server.pem"
else
    host_args=()
    for host in $SERVER_HOSTS; do
        host_args+=(--host "$host")
    done
    consortia certs server --ca-dir "$CA_DIR" --out "$SERVER_CERTS_DIR" "${host_args[@]}"
fi
if ! cmp -s "$CA_DIR/ca.pem" "$SERVER_CERTS_DIR/ca.pem"; then
    log "$SERVER_CERTS_DIR was issued by another CA than $CA_DIR/ca.pem; remove the old" \
        "volumes (docker compose down -v) and start again"
    exit 1
fi

mkdir -p "$PUBLIC_DIR"
cp "$CA_DIR/ca.pem" "$PUBLIC_DIR/ca.pem"
for site in $SITES; do
    dir="$SITE_KEYS_ROOT/$site"
    if [[ -f "$dir/$site.key" ]]; then
        log "key pair of $site exists, kept: $dir/$site.key"
    else
        consortia certs site "$site" --out "$dir"
    fi
    cp "$CA_DIR/ca.pem" "$dir/ca.pem"              # the only CA the node trusts (public)
    cp "$dir/$site.pub" "$PUBLIC_DIR/$site.pub"    # what the site sends the coordinator
done

if [[ -n "$PKI_OWNER" ]]; then
    chown -R "$PKI_OWNER" "$CA_DIR" "$SERVER_CERTS_DIR" "$PUBLIC_DIR"
    for site in $SITES; do
        chown -R "$PKI_OWNER" "$SITE_KEYS_ROOT/$site"
    done
fi
log "ready: CA, server certificate for '$SERVER_HOSTS', key pairs of: $SITES"
