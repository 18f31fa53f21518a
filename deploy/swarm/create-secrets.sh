#!/bin/sh
# Creates the Swarm secrets the fogsched stack uses (run once on a manager, before `make up`).
#
#   deploy/swarm/create-secrets.sh              create the secrets with `docker secret create`
#   deploy/swarm/create-secrets.sh --out DIR    write them as files into DIR instead (local boot
#                                               tests, or to review them; DIR is made mode 700)
#
# Values come from the environment when set, else they are generated (openssl rand):
#   POSTGRES_PASSWORD, RABBITMQ_PASSWORD (user fogsched), RABBITMQ_ADMIN_PASSWORD (user admin),
#   ERLANG_COOKIE, FOGSCHED_API_KEYS (one key per line: `key`, `tenant:key` or `tenant:role:key`),
#   FOGSCHED_JWT_SECRET (HS256 secret of JWT bearer tokens, at least 32 characters),
#   GRAFANA_ADMIN_PASSWORD (Grafana's user admin).
# Generated admin password, API key and JWT secret are printed once; nothing else is.
# Passwords are hex so they need no escaping inside connection URLs.
set -eu

PREFIX=${SECRET_PREFIX:-fogsched}
VHOST=${RABBITMQ_VHOST:-/fog}
OUT=
if [ "${1:-}" = "--out" ]; then
  OUT=${2:?usage: create-secrets.sh [--out DIR]}
  mkdir -p "$OUT" && chmod 700 "$OUT"
fi

rand() { openssl rand -hex "$1"; }

# RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ utf8 password)), 4-byte salt.
rabbit_hash() {
  salt=$(mktemp)
  head -c 4 /dev/urandom > "$salt"
  { cat "$salt"; { cat "$salt"; printf '%s' "$1"; } | openssl dgst -sha256 -binary; } | base64 | tr -d '\n'
  rm -f "$salt"
}

put() { # name value
  if [ -n "$OUT" ]; then
    (umask 077 && printf '%s' "$2" > "$OUT/$1")
  else
    printf '%s' "$2" | docker secret create "${PREFIX}_$1" - >/dev/null
    echo "created secret ${PREFIX}_$1"
  fi
}

postgres_password=${POSTGRES_PASSWORD:-$(rand 24)}
rabbitmq_password=${RABBITMQ_PASSWORD:-$(rand 24)}
admin_password=${RABBITMQ_ADMIN_PASSWORD:-}
[ -n "$admin_password" ] || { admin_password=$(rand 16); echo "RabbitMQ user admin password (store it now): $admin_password"; }
cookie=${ERLANG_COOKIE:-$(rand 32)}
api_keys=${FOGSCHED_API_KEYS:-}
[ -n "$api_keys" ] || { api_keys=$(rand 32); echo "fogsched API key, tenant default, role operator (store it now): $api_keys"; }
jwt_secret=${FOGSCHED_JWT_SECRET:-}
[ -n "$jwt_secret" ] || { jwt_secret=$(rand 32); echo "fogsched JWT secret, to sign HS256 tokens (store it now): $jwt_secret"; }

grafana_password=${GRAFANA_ADMIN_PASSWORD:-}
[ -n "$grafana_password" ] || { grafana_password=$(rand 16); echo "Grafana user admin password (store it now): $grafana_password"; }

# Users and permissions as RabbitMQ definitions, imported at boot next to definitions.json.
users=$(cat <<JSON
{
  "users": [
    {"name": "fogsched", "password_hash": "$(rabbit_hash "$rabbitmq_password")", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
    {"name": "admin", "password_hash": "$(rabbit_hash "$admin_password")", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}
  ],
  "permissions": [
    {"user": "fogsched", "vhost": "$VHOST", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "admin", "vhost": "$VHOST", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
JSON
)

put postgres_password "$postgres_password"
put rabbitmq_password "$rabbitmq_password"
put rabbitmq_users "$users"
put erlang_cookie "$cookie"
put api_keys "$api_keys"
put jwt_secret "$jwt_secret"
put grafana_admin_password "$grafana_password"
