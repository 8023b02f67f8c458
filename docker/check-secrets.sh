#!/bin/sh
# hps-check-secrets: refuse to start a container whose secrets are missing, placeholders or weak.
#
#   hps-check-secrets VAR [VAR ...] [-- COMMAND [ARG ...]]
#
# Checks the environment variables named before `--`. Every problem is reported on its own line on
# stderr (naming the variable, never printing its value) and the script exits 1; otherwise it execs
# COMMAND, or exits 0 when there is none. docker-compose.yml uses it as the entrypoint wrapper of
# every service that holds a secret, so `cp .env.example .env` with made-up values cannot start a
# stack with a known Ray token or known MLflow/PostgreSQL passwords.
#
# A secret is refused when it is
#   * unset or empty;
#   * shorter than 16 characters;
#   * placeholder-looking: contains change-me/changeme/change_me, replace-me/replaceme, password,
#     passwd, example, secret, placeholder, dummy, insecure, xxxx (any case);
#   * made of fewer than 5 distinct characters (aaaaaaaaaaaaaaaa, abababab...);
#   * not URL-safe: only A-Z a-z 0-9 . _ ~ - are allowed, because POSTGRES_PASSWORD goes into a
#     postgresql:// URI and an INI file, and the others into HTTP basic-auth headers;
#   * the same value as another secret checked in the same call (the MLflow admin password reused
#     for the hps user would defeat the point of a separate user).
# `python3 -c 'import secrets; print(secrets.token_hex(32))'` produces a good one.
#
# POSIX sh only (runs in the postgres and python images alike).
set -eu

MIN_LENGTH=16
MIN_DISTINCT=5
PLACEHOLDERS="change-me changeme change_me replace-me replaceme password passwd example secret placeholder dummy insecure xxxx"
HINT="generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"

problems=0
count=0

refuse() {
    printf 'hps-check-secrets: refusing to start: %s\n' "$1" >&2
    problems=$((problems + 1))
}

# The value of a variable named $1 (the name was validated, so eval is safe).
value_of() {
    eval "printf '%s' \"\${$1-}\""
}

check_one() {
    name=$1
    value=$(value_of "$name")
    if [ -z "$value" ]; then
        refuse "$name is empty or unset; set it in .env ($HINT)"
        return 0
    fi
    lower=$(printf '%s' "$value" | tr 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' 'abcdefghijklmnopqrstuvwxyz')
    for marker in $PLACEHOLDERS; do
        case $lower in
            *"$marker"*)
                refuse "$name looks like a placeholder (contains '$marker'); $HINT"
                return 0
                ;;
        esac
    done
    if [ "${#value}" -lt "$MIN_LENGTH" ]; then
        refuse "$name is ${#value} characters long, at least $MIN_LENGTH are required; $HINT"
        return 0
    fi
    case $value in
        *[!A-Za-z0-9._~-]*)
            refuse "$name has characters other than A-Z a-z 0-9 . _ ~ - (it must be URL-safe); $HINT"
            return 0
            ;;
    esac
    distinct=$(printf '%s' "$value" | fold -w 1 | sort -u | wc -l | tr -d ' ')
    if [ "$distinct" -lt "$MIN_DISTINCT" ]; then
        refuse "$name has only $distinct distinct characters, at least $MIN_DISTINCT are required; $HINT"
        return 0
    fi
    # Same value as a secret checked before? Values are URL-safe here, so plain comparison is exact.
    i=0
    while [ "$i" -lt "$count" ]; do
        eval "other_name=\$seen_name_$i; other_value=\$seen_value_$i"
        if [ "$value" = "$other_value" ]; then
            refuse "$name has the same value as $other_name; every secret must be different"
            return 0
        fi
        i=$((i + 1))
    done
    eval "seen_name_$count=\$name; seen_value_$count=\$value"
    count=$((count + 1))
}

names=0
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then
        shift
        break
    fi
    case $1 in
        '' | [0-9]* | *[!A-Za-z0-9_]*)
            printf 'hps-check-secrets: not an environment variable name: %s\n' "$1" >&2
            exit 2
            ;;
    esac
    check_one "$1"
    names=$((names + 1))
    shift
done

if [ "$names" -eq 0 ]; then
    echo "hps-check-secrets: usage: hps-check-secrets VAR [VAR ...] [-- COMMAND [ARG ...]]" >&2
    exit 2
fi
if [ "$problems" -gt 0 ]; then
    exit 1
fi
if [ $# -gt 0 ]; then
    exec "$@"
fi
exit 0
