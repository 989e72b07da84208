#!/usr/bin/env bash
# Install or upgrade pricepipe on a Debian/Ubuntu VM: Redis with one ACL user
# per role and PostgreSQL (unless --no-local-servers), the database and its two
# roles, a virtualenv under /opt/pricepipe, one secrets file per role, migrations,
# the systemd units and the nginx site.
#
# Idempotent: every step checks or overwrites, so running it again upgrades
# the code and units and keeps the generated passwords. It never generates a
# password while a file still holds the old one (it refuses, naming the files).
# --dry-run prints the actions without changing anything (and works without root).
#
# Offline (--offline --wheelhouse DIR, for machines without internet access):
# the Debian packages must already be installed (they are verified, not
# installed) and Python packages come only from DIR (pip --no-index
# --find-links DIR); deploy/README.md says how to build DIR elsewhere.
#
# Usage: sudo deploy/install.sh [options]      (deploy/README.md explains each one)
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY_DIR="$SRC_DIR/deploy"

# --- options (flags override these environment defaults) --------------------------------
DRY_RUN=0
PREFIX=${PRICEPIPE_PREFIX:-/opt/pricepipe}
ETC_DIR=${PRICEPIPE_ETC:-/etc/pricepipe}
# System locations; the environment overrides exist for unusual layouts and the tests.
SYSTEMD_DIR=${PRICEPIPE_SYSTEMD_DIR:-/etc/systemd/system}
REDIS_CONF=${PRICEPIPE_REDIS_CONF:-/etc/redis/redis.conf}
# Redis's users (Debian's unit may write /etc/redis: ACL SAVE works there too).
REDIS_ACL=${PRICEPIPE_REDIS_ACL:-/etc/redis/users.acl}
REDIS_OWNER=${PRICEPIPE_REDIS_OWNER:-redis:redis}
SBIN_DIR=${PRICEPIPE_SBIN_DIR:-/usr/local/sbin}
NGINX_DIR=${PRICEPIPE_NGINX_DIR:-/etc/nginx}
LOCAL_SERVERS=1
DB_NAME=pricepipe
DB_WRITER=pricepipe_writer
# The reader group's name is fixed by migration 0500 (it grants SELECT to it).
DB_READER=pricepipe_reader
DB_API=pricepipe_api
REDIS_MAXMEMORY=1gb
PUBLISHERS="gbm"
PERSIST_WORKERS=2
JOBS_WORKERS=1
WS_PORTS="8101 8102"
API_PORT=8000
SERVER_NAME="_"
TLS_CERT=""
TLS_KEY=""
RENDER_NGINX=0
RENDER_WRAPPER=0
START=1
OFFLINE=0
WHEELHOUSE=""

usage() {
    cat <<EOF
usage: $0 [options]
  --dry-run               print the actions, change nothing
  --prefix DIR            install root (default $PREFIX; virtualenv in DIR/venv)
  --no-local-servers      do not install Redis/PostgreSQL here (multi-VM: write
                          $ETC_DIR/pricepipe.env and the role-<role>.env files first)
  --db-name NAME          database (default $DB_NAME)
  --redis-maxmemory SIZE  Redis maxmemory, noeviction policy (default $REDIS_MAXMEMORY)
  --publishers LIST       publisher sources to enable, space or comma separated (default "$PUBLISHERS")
  --persist-workers N     persist worker instances (default $PERSIST_WORKERS)
  --jobs-workers N        rq worker instances (default $JOBS_WORKERS)
  --ws-ports LIST         websocket processes, one per port (default "$WS_PORTS")
  --server-name NAME      nginx server_name (default $SERVER_NAME)
  --tls-cert FILE --tls-key FILE
                          serve HTTPS on 443 and redirect 80 to it
  --render-nginx          print the nginx site this would install, then exit
  --render-wrapper        print the operator's /usr/local/sbin/pricepipe, then exit
  --no-start              install and enable, but do not (re)start pricepipe.target
  --offline               no network: verify the Debian packages instead of installing
                          them, and take Python packages from --wheelhouse only
  --wheelhouse DIR        directory of wheels pip looks in first: pricepipe's dependencies
                          and its build backend (\`pip wheel -w DIR . 'setuptools>=68'\`,
                          with the VM's Python version)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix) PREFIX=$2; shift ;;
        --no-local-servers) LOCAL_SERVERS=0 ;;
        --db-name) DB_NAME=$2; shift ;;
        --redis-maxmemory) REDIS_MAXMEMORY=$2; shift ;;
        --publishers) PUBLISHERS=${2//,/ }; shift ;;
        --persist-workers) PERSIST_WORKERS=$2; shift ;;
        --jobs-workers) JOBS_WORKERS=$2; shift ;;
        --ws-ports) WS_PORTS=${2//,/ }; shift ;;
        --server-name) SERVER_NAME=$2; shift ;;
        --tls-cert) TLS_CERT=$2; shift ;;
        --tls-key) TLS_KEY=$2; shift ;;
        --render-nginx) RENDER_NGINX=1 ;;
        --render-wrapper) RENDER_WRAPPER=1 ;;
        --no-start) START=0 ;;
        --offline) OFFLINE=1 ;;
        --wheelhouse) WHEELHOUSE=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

VENV="$PREFIX/venv"
PRICEPIPE="$VENV/bin/pricepipe"
# Settings of every unit: no secrets.
ENV_FILE="$ETC_DIR/pricepipe.env"
# The operator's credentials (the wrapper loads them; no unit does).
ADMIN_ENV="$ETC_DIR/admin.env"
SECRETS_FILE="$ETC_DIR/db-passwords"
# One password file per Redis ACL user (pricepipe redis-acl passwords).
REDIS_SECRETS="$ETC_DIR/redis-passwords"
ROLES_DIR="$DEPLOY_DIR/roles"
# The units' roles; each unit loads $ETC_DIR/role-<role>.env after pricepipe.env.
UNIT_ROLES=(publisher persist ws api jobs migrate)
# Connection URLs the shared file must not set (they belong to one role each).
SHARED_URLS=(PRICEPIPE_REDIS_URL PRICEPIPE_DATABASE_URL PRICEPIPE_DATABASE_READ_URL)
# Persist worker N serves its metrics on 127.0.0.1:$((METRICS_BASE_PORT + N)).
METRICS_BASE_PORT=9300

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }
random_hex() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

role_env() { printf '%s\n' "$ETC_DIR/role-$1.env"; }
# The Redis ACL user of a unit role (none: migrations never connect to Redis).
role_redis_user() { case $1 in migrate) ;; *) printf '%s\n' "$1" ;; esac; }
# The database URL variables a role gets: the writer's, the read-only login's, or none.
role_db_keys() {
    case $1 in
        persist|jobs|migrate) echo PRICEPIPE_DATABASE_URL ;;
        api) echo PRICEPIPE_DATABASE_READ_URL ;;
    esac
}
# What a role's file must never set: the API no writer, websocket and publisher no database.
role_forbidden_keys() {
    case $1 in
        api) echo PRICEPIPE_DATABASE_URL ;;
        ws|publisher) echo PRICEPIPE_DATABASE_URL PRICEPIPE_DATABASE_READ_URL ;;
    esac
}
# The roles whose units this run enables.
wanted_roles() {
    local role
    for role in "${UNIT_ROLES[@]}"; do
        [ "$role" = publisher ] && [ -z "${PUBLISHERS// /}" ] && continue
        echo "$role"
    done
}
# has_key KEY FILE: FILE (readable) sets KEY.
has_key() { [ -r "$2" ] && grep -q "^$1=" "$2"; }
# env_value KEY FILE: the value of KEY's last line in FILE, empty if none.
env_value() { if [ -r "$2" ]; then sed -n "s/^$1=//p" "$2" | tail -n 1; fi; }
# env_set KEY VALUE < text: the text with KEY's line(s) replaced by one KEY=VALUE (in the
# first one's place), or appended. The value goes through the environment, never argv.
env_set() {
    ENV_KEY=$1 ENV_VALUE=$2 awk '
        BEGIN { k = ENVIRON["ENV_KEY"]; v = ENVIRON["ENV_VALUE"] }
        index($0, k "=") == 1 { if (!done) print k "=" v; done = 1; next }
        { print }
        END { if (!done) print k "=" v }'
}

# Validate before touching anything: these values end up in file names,
# unit instance names and configuration files.
[[ $PERSIST_WORKERS =~ ^[1-9][0-9]?$ ]] || die "--persist-workers must be 1-99"
[[ $JOBS_WORKERS =~ ^[0-9]{1,2}$ ]] || die "--jobs-workers must be 0-99"
[[ $DB_NAME =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "--db-name must be a plain lower-case identifier"
[[ $REDIS_MAXMEMORY =~ ^[0-9]+[kmgKMG]?[bB]?$ ]] || die "--redis-maxmemory must look like 512mb or 2gb"
[[ $SERVER_NAME =~ ^[A-Za-z0-9._*\ -]+$ ]] || die "--server-name has unexpected characters"
for source in $PUBLISHERS; do
    [[ $source =~ ^[a-z0-9_-]+$ ]] || die "publisher source '$source' must be [a-z0-9_-]"
done
[ -n "$WS_PORTS" ] || die "--ws-ports must name at least one port"
for port in $WS_PORTS $API_PORT; do
    if ! [[ $port =~ ^[0-9]{4,5}$ ]] || [ "$port" -lt 1024 ] || [ "$port" -gt 65535 ]; then
        die "port '$port' must be 1024-65535"
    fi
done
if [ -n "$TLS_CERT" ] || [ -n "$TLS_KEY" ]; then
    if [ -z "$TLS_CERT" ] || [ -z "$TLS_KEY" ]; then
        die "--tls-cert and --tls-key go together"
    fi
fi
if [ "$OFFLINE" = 1 ] && [ -z "$WHEELHOUSE" ]; then
    die "--offline needs --wheelhouse DIR (pip has no index to download from)"
fi
if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
fi
# pip's package sources: the wheelhouse first, and nothing else when offline.
pip_sources=()
[ -n "$WHEELHOUSE" ] && pip_sources+=(--find-links "$WHEELHOUSE")
[ "$OFFLINE" = 1 ] && pip_sources+=(--no-index)

# --- action helpers: every change goes through run() or put_file() ----------------------

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# put_file MODE OWNER PATH < content: write PATH atomically with MODE and OWNER.
put_file() {
    local mode=$1 owner=$2 path=$3 tmp
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ write $path (mode $mode, owner $owner)"
        cat >/dev/null
        return
    fi
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

# set_conf KEY VALUE FILE: make "KEY VALUE" the one active setting of KEY in a
# space-separated config file (redis.conf): replace it, or append it.
set_conf() {
    local key=$1 value=$2 file=$3
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ set '$key $value' in $file"
        return
    fi
    if grep -qE "^[[:space:]]*${key}[[:space:]]" "$file"; then
        sed -i -E "s|^[[:space:]]*${key}[[:space:]].*|$key $value|" "$file"
    else
        printf '%s %s\n' "$key" "$value" >>"$file"
    fi
}

# --- nginx site rendering (pure: prints the site on stdout) ----------------------------

render_nginx() {
    local servers="" port template
    for port in $WS_PORTS; do
        servers+="    server 127.0.0.1:$port max_fails=3 fail_timeout=10s;"$'\n'
    done
    if [ -n "$TLS_CERT" ]; then
        template="$DEPLOY_DIR/nginx/pricepipe-tls.conf.in"
    else
        template="$DEPLOY_DIR/nginx/pricepipe.conf.in"
    fi
    local text
    text=$(<"$template")
    text=${text//@WS_SERVERS@/${servers%$'\n'}}
    text=${text//@API_PORT@/$API_PORT}
    text=${text//@SERVER_NAME@/$SERVER_NAME}
    text=${text//@TLS_CERT@/$TLS_CERT}
    text=${text//@TLS_KEY@/$TLS_KEY}
    text=${text//@LOCATIONS@/$NGINX_DIR/snippets/pricepipe-locations.conf}
    printf '%s\n' "$text"
}

render_wrapper() {
    cat <<EOF
#!/bin/sh
# Installed by pricepipe's deploy/install.sh: run pricepipe with the services' settings and
# the operator's credentials (the admin Redis user, the database writer), as user pricepipe.
set -a
. "$ENV_FILE"
if [ -r "$ADMIN_ENV" ]; then
    . "$ADMIN_ENV"
else
    echo "pricepipe: no $ADMIN_ENV (the operator's URLs: deploy/roles/admin.env.example)" >&2
fi
# Jobs may use their own standalone Redis (rq does not run on Redis Cluster).
case "\${1:-}" in
    jobs|backfill) if [ -r "$ETC_DIR/jobs.env" ]; then . "$ETC_DIR/jobs.env"; fi ;;
esac
set +a
exec runuser -u pricepipe -- "$VENV/bin/pricepipe" "\$@"
EOF
}

if [ "$RENDER_NGINX" = 1 ]; then
    render_nginx
    exit 0
fi
if [ "$RENDER_WRAPPER" = 1 ]; then
    render_wrapper
    exit 0
fi

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or with --dry-run to see what it would do)"
fi
[ "$DRY_RUN" = 1 ] && say "dry run: nothing is changed"

# --- checks of the secrets and the files holding them (read only, before any change) -----

# KEY_PREFIX: Redis's key prefix; the ACL users' names and key patterns follow it.
KEY_PREFIX=$(env_value PRICEPIPE_REDIS_PREFIX "$ENV_FILE")
[ -n "$KEY_PREFIX" ] || KEY_PREFIX=$(env_value PRICEPIPE_REDIS_PREFIX "$DEPLOY_DIR/pricepipe.env.example")
[[ $KEY_PREFIX =~ ^[A-Za-z0-9_.-]+$ ]] || die "PRICEPIPE_REDIS_PREFIX in $ENV_FILE must be [A-Za-z0-9_.-]"

# URLs an install from before the role files left in the shared file.
legacy_urls=()
for key in "${SHARED_URLS[@]}"; do
    if has_key "$key" "$ENV_FILE"; then legacy_urls+=("$key"); fi
done
for role in "${UNIT_ROLES[@]}"; do
    for key in $(role_forbidden_keys "$role"); do
        if has_key "$key" "$(role_env "$role")"; then
            die "$(role_env "$role") sets $key, which the $role role must not hold: delete that line"
        fi
    done
done

WRITER_PASSWORD=""
API_PASSWORD=""
if [ "$LOCAL_SERVERS" = 0 ]; then
    # Another machine holds the servers: the operator writes the role files.
    if [ ${#legacy_urls[@]} -gt 0 ]; then
        die "$ENV_FILE sets ${legacy_urls[*]}: each role's URLs now go in its own file," \
            "$ETC_DIR/role-<role>.env (deploy/roles/); move them there, then run again" \
            "(deploy/README.md, \"Beyond one machine\")"
    fi
    missing=()
    [ -e "$ENV_FILE" ] || missing+=("$ENV_FILE")
    for role in $(wanted_roles); do
        [ -e "$(role_env "$role")" ] || missing+=("$(role_env "$role")")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$DRY_RUN" = 1 ] || die "--no-local-servers: write ${missing[*]} first" \
            "(from deploy/pricepipe.env.example and deploy/roles/)"
        echo "==> dry run: --no-local-servers needs ${missing[*]}"
    fi
else
    # Never a new password while a file keeps the old one: that file's unit would be
    # locked out. Refuse, naming the files (install.sh rewrites them from the password
    # stores on every run, so deleting them is how to rotate).
    if [ -r "$SECRETS_FILE" ]; then
        WRITER_PASSWORD=$(sed -n 's/^WRITER_PASSWORD=//p' "$SECRETS_FILE")
        API_PASSWORD=$(sed -n 's/^API_PASSWORD=//p' "$SECRETS_FILE")
    fi
    if [ -z "$WRITER_PASSWORD" ] || [ -z "$API_PASSWORD" ]; then
        holders=()
        for file in "$ENV_FILE" "$ADMIN_ENV" $(for role in "${UNIT_ROLES[@]}"; do role_env "$role"; done); do
            if has_key PRICEPIPE_DATABASE_URL "$file" || has_key PRICEPIPE_DATABASE_READ_URL "$file"; then
                holders+=("$file")
            fi
        done
        if [ ${#holders[@]} -gt 0 ]; then
            die "$SECRETS_FILE is missing or incomplete, but ${holders[*]} hold database" \
                "passwords: new ones would lock those out. Restore $SECRETS_FILE" \
                "(WRITER_PASSWORD=<$DB_WRITER's password> and API_PASSWORD=<$DB_API's>, as in" \
                "those URLs), or delete those files to have new passwords set in PostgreSQL" \
                "and in new files"
        fi
    fi
    stale=()
    for file in "$ADMIN_ENV" $(for role in "${UNIT_ROLES[@]}"; do role_env "$role"; done); do
        grep -qE '^PRICEPIPE_REDIS_URL=[a-z]+://[^/@]+@' "$file" 2>/dev/null || continue
        acl_user="admin"
        [ "$file" = "$ADMIN_ENV" ] || acl_user=$(basename "$file" .env)
        acl_user=${acl_user#role-}
        [ -s "$REDIS_SECRETS/$acl_user" ] || stale+=("$file (user $acl_user)")
    done
    if [ ${#stale[@]} -gt 0 ]; then
        die "no Redis password in $REDIS_SECRETS for ${stale[*]}: a new one would lock" \
            "out what holds the old one. Restore the password file(s) (the password is in" \
            "the URL), or delete those files to have new passwords generated for both"
    fi
    if grep -qE '^[[:space:]]*user[[:space:]]' "$REDIS_CONF" 2>/dev/null; then
        die "$REDIS_CONF defines users (user ...): Redis refuses them beside an aclfile;" \
            "move them to $REDIS_ACL or delete them"
    fi
fi

# --- packages ---------------------------------------------------------------------------

packages=(python3 python3-venv python3-pip nginx)
if [ "$LOCAL_SERVERS" = 1 ]; then
    packages+=(redis-server postgresql postgresql-client)
fi
if [ "$OFFLINE" = 1 ]; then
    # No mirror to install from: what is missing must be installed beforehand.
    say "packages (offline: verifying, not installing): ${packages[*]}"
    missing=()
    for package in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$DRY_RUN" = 1 ] || die "--offline: not installed: ${missing[*]} (apt-get install them first)"
        say "dry run: not installed: ${missing[*]}"
    fi
else
    say "packages: ${packages[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi

# --- system user ------------------------------------------------------------------------

if id -u pricepipe >/dev/null 2>&1; then
    say "user pricepipe exists"
else
    say "creating system user pricepipe"
    run useradd --system --home-dir /var/lib/pricepipe --no-create-home \
        --shell /usr/sbin/nologin --user-group pricepipe
fi

# --- code -------------------------------------------------------------------------------

say "virtualenv $VENV with pricepipe from $SRC_DIR"
run install -d -m 0755 -o root -g root "$PREFIX"
if [ ! -x "$VENV/bin/python" ]; then
    run python3 -m venv "$VENV"
fi
run "$VENV/bin/pip" install --quiet "${pip_sources[@]}" --upgrade pip
# Not editable: the installed code is a copy owned by root, read-only for the services.
run "$VENV/bin/pip" install --quiet "${pip_sources[@]}" --upgrade "$SRC_DIR"
run rm -rf "$PREFIX/deploy"
run cp -r "$DEPLOY_DIR" "$PREFIX/deploy"

# --- secrets ----------------------------------------------------------------------------

run install -d -m 0755 -o root -g root "$ETC_DIR"
if [ "$LOCAL_SERVERS" = 1 ]; then
    if [ -n "$WRITER_PASSWORD" ] && [ -n "$API_PASSWORD" ]; then
        say "keeping database passwords from $SECRETS_FILE"
    else
        # (No file holds old ones: the checks above refused that.)
        say "generating database passwords into $SECRETS_FILE"
        # hex: safe inside URLs and psql literals without escaping.
        WRITER_PASSWORD=$(random_hex)
        API_PASSWORD=$(random_hex)
        printf 'WRITER_PASSWORD=%s\nAPI_PASSWORD=%s\n' "$WRITER_PASSWORD" "$API_PASSWORD" \
            | put_file 0600 root:root "$SECRETS_FILE"
    fi
    say "redis: a password per ACL user in $REDIS_SECRETS (existing ones kept)"
    run "$PRICEPIPE" redis-acl passwords "$REDIS_SECRETS"
fi

# --- shared environment file (settings, no secrets) ------------------------------------

if [ ! -e "$ENV_FILE" ]; then
    say "writing $ENV_FILE"
    put_file 0600 root:root "$ENV_FILE" <"$DEPLOY_DIR/pricepipe.env.example"
elif [ ${#legacy_urls[@]} -gt 0 ]; then
    # An install from before the role files: their URLs move to the role files (written
    # below from the same password stores), so that no unit gets another role's.
    say "moving ${legacy_urls[*]} out of $ENV_FILE into the role files"
    grep -vE "^($(IFS='|'; echo "${SHARED_URLS[*]}"))=" "$ENV_FILE" \
        | put_file 0600 root:root "$ENV_FILE"
else
    say "keeping $ENV_FILE (edit it by hand; see pricepipe.env.example)"
fi

# --- Redis ------------------------------------------------------------------------------

REDIS_PORT=6379
if [ "$LOCAL_SERVERS" = 1 ]; then
    # The port the local server really listens on, for the URLs below.
    conf_port=$(awk '$1 == "port" { p = $2 } END { print p }' "$REDIS_CONF" 2>/dev/null || true)
    if [[ $conf_port =~ ^[1-9][0-9]*$ ]]; then
        REDIS_PORT=$conf_port
    elif [ -n "$conf_port" ]; then
        die "$REDIS_CONF: port '$conf_port' (TLS only?): configure Redis yourself and use --no-local-servers"
    fi
    say "redis: AOF everysec, maxmemory $REDIS_MAXMEMORY with noeviction, users in $REDIS_ACL"
    # noeviction: a full Redis refuses writes (the publisher backs off)
    # instead of silently evicting unpersisted stream entries.
    # auto-aof-rewrite-min-size: trimmed streams keep the rewritten AOF small,
    # so at the default 64mb a busy pipeline forks a rewrite every few
    # seconds (each fork stalls Redis for a moment).
    # aclfile: one user per role (pricepipe/acl.py); the admin is the default user, with a
    # password and every right (never disabled: Redis < 8 replays the AOF as default).
    redis_was=$(cat "$REDIS_CONF" "$REDIS_ACL" 2>/dev/null | cksum || true)
    for kv in "appendonly yes" "appendfsync everysec" "auto-aof-rewrite-min-size 1gb" \
              "maxmemory $REDIS_MAXMEMORY" "maxmemory-policy noeviction" \
              "bind 127.0.0.1 -::1" "protected-mode yes" "aclfile $REDIS_ACL"; do
        set_conf "${kv%% *}" "${kv#* }" "$REDIS_CONF"
    done
    # The ACL file holds password hashes only (SHA-256), never a password.
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ $PRICEPIPE redis-acl render --passwords-from $REDIS_SECRETS --prefix $KEY_PREFIX" \
             "> $REDIS_ACL (mode 0640, owner $REDIS_OWNER)"
    else
        acl_text=$("$PRICEPIPE" redis-acl render --passwords-from "$REDIS_SECRETS" \
                       --prefix "$KEY_PREFIX")
        printf '%s\n' "$acl_text" | put_file 0640 "$REDIS_OWNER" "$REDIS_ACL"
    fi
    run systemctl enable redis-server.service
    # Restart only for a changed configuration or users: an upgrade that leaves them as
    # they were must not pull Redis from under the running pipeline.
    if [ "$DRY_RUN" = 1 ] || [ "$(cat "$REDIS_CONF" "$REDIS_ACL" 2>/dev/null | cksum || true)" != "$redis_was" ]; then
        run systemctl restart redis-server.service
    else
        say "redis: configuration and users unchanged, keeping it running"
        run systemctl start redis-server.service
    fi
else
    say "redis is elsewhere: create its users there once, with the admin's URL (deploy/README.md," \
        "\"Beyond one machine\"): $PRICEPIPE redis-acl passwords DIR; $PRICEPIPE redis-acl" \
        "apply --passwords-from DIR --prefix $KEY_PREFIX --redis-url redis://HOST:6379/0"
fi

# --- PostgreSQL -------------------------------------------------------------------------

PG_PORT=5432
if [ "$LOCAL_SERVERS" = 1 ]; then
    say "postgresql: database $DB_NAME, roles $DB_WRITER (writer), $DB_READER (read-only) with login $DB_API"
    run systemctl enable --now postgresql.service
    # Passwords go through stdin, never the command line (visible in ps). From /:
    # postgres may not enter the directory the installer was started in.
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ runuser -u postgres -- psql -X -q -v dbname=$DB_NAME -v writer=$DB_WRITER" \
             "-v reader=$DB_READER -v api=$DB_API < (passwords) + $DEPLOY_DIR/sql/roles.sql"
    else
        { printf '\\set writer_password %s\n\\set api_password %s\n' \
              "$WRITER_PASSWORD" "$API_PASSWORD"
          cat "$DEPLOY_DIR/sql/roles.sql"; } \
            | (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres \
                  -v dbname="$DB_NAME" -v writer="$DB_WRITER" -v reader="$DB_READER" \
                  -v api="$DB_API")
        # The cluster's real port (Debian's first cluster takes the first free port
        # from 5432), for the URLs below; Debian's psql finds the cluster itself.
        PG_PORT=$(cd / && runuser -u postgres -- psql -X -A -t -q -c 'SHOW port' </dev/null)
        [[ $PG_PORT =~ ^[0-9]+$ ]] || die "could not read the PostgreSQL port (SHOW port: '$PG_PORT')"
    fi
fi

# --- each role's secrets, and the operator's ---------------------------------------------

# write_secrets FILE TEMPLATE REDIS_USER [DB_KEY...]: FILE (root, 0600) with its URL lines
# set from the password stores: the Redis user's (none if empty) and each database URL
# variable; every other line of an existing FILE is kept (the operator's secrets of that
# role). Rewritten on every run, so a file never holds a password the servers no longer
# have.
db_url() {
    case $1 in
        PRICEPIPE_DATABASE_URL) echo "postgresql://$DB_WRITER:$WRITER_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME" ;;
        PRICEPIPE_DATABASE_READ_URL) echo "postgresql://$DB_API:$API_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME" ;;
    esac
}
write_secrets() {
    local file=$1 template=$2 user=$3 key text url
    shift 3
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ write $file (mode 0600, owner root:root): ${user:+Redis user $user }$*"
        return
    fi
    if [ -e "$file" ]; then text=$(<"$file"); else text=$(<"$template"); fi
    if [ -n "$user" ]; then
        url=$("$PRICEPIPE" redis-acl url "$user" --passwords-from "$REDIS_SECRETS" \
                  --prefix "$KEY_PREFIX" --base "redis://127.0.0.1:$REDIS_PORT/0")
        text=$(env_set PRICEPIPE_REDIS_URL "$url" <<<"$text")
    fi
    for key in "$@"; do
        text=$(env_set "$key" "$(db_url "$key")" <<<"$text")
    done
    printf '%s\n' "$text" | put_file 0600 root:root "$file"
}

if [ "$LOCAL_SERVERS" = 1 ]; then
    say "secrets: $ETC_DIR/role-{${UNIT_ROLES[*]}}.env (one per role) and $ADMIN_ENV"
    for role in "${UNIT_ROLES[@]}"; do
        # shellcheck disable=SC2046 # role_db_keys: zero or one word
        write_secrets "$(role_env "$role")" "$ROLES_DIR/role-$role.env.example" \
            "$(role_redis_user "$role")" $(role_db_keys "$role")
    done
    write_secrets "$ADMIN_ENV" "$ROLES_DIR/admin.env.example" admin PRICEPIPE_DATABASE_URL
else
    # The operator's files: only root reads them.
    for file in "$ADMIN_ENV" $(for role in "${UNIT_ROLES[@]}"; do role_env "$role"; done); do
        if [ -e "$file" ]; then
            run chown root:root "$file"
            run chmod 0600 "$file"
        fi
    done
fi

# The operator's `pricepipe` (status, dlq, migrate...): root-only, because it reads the
# 0600 environment files, then drops to the service user like the units do.
render_wrapper | put_file 0750 root:root "$SBIN_DIR/pricepipe"

# --- systemd units ----------------------------------------------------------------------

say "systemd units into $SYSTEMD_DIR"
for unit in "$DEPLOY_DIR"/systemd/*; do
    sed "s|/opt/pricepipe/venv|$VENV|g" "$unit" | put_file 0644 root:root "$SYSTEMD_DIR/$(basename "$unit")"
done
# Each persist worker's own metrics port, on loopback (a drop-in per instance: one
# template cannot compute 9300 + N). Those of instances no longer wanted go.
for i in $(seq 1 "$PERSIST_WORKERS"); do
    dropin="$SYSTEMD_DIR/pricepipe-persist@$i.service.d"
    run install -d -m 0755 -o root -g root "$dropin"
    printf '%s\n' "# Written by install.sh: this worker's metrics endpoint (deploy/README.md, Metrics)." \
        "[Service]" "Environment=PRICEPIPE_WORKER_METRICS_HOST=127.0.0.1" \
        "Environment=PRICEPIPE_WORKER_METRICS_PORT=$((METRICS_BASE_PORT + i))" \
        | put_file 0644 root:root "$dropin/metrics.conf"
done
for conf in "$SYSTEMD_DIR"/pricepipe-persist@*.service.d/metrics.conf; do
    [ -e "$conf" ] || continue
    instance=${conf#"$SYSTEMD_DIR"/pricepipe-persist@}
    instance=${instance%%.service.d/metrics.conf}
    if ! [[ $instance =~ ^[0-9]+$ ]] || [ "$instance" -gt "$PERSIST_WORKERS" ]; then
        run rm -f "$conf"
    fi
done
run systemctl daemon-reload

# Instances that should run here; instances enabled earlier but no longer
# wanted (fewer workers, another port) are disabled so the target matches.
wanted=(pricepipe.target pricepipe-migrate.service pricepipe-api.service
        pricepipe-jobs-scheduler.service)
for source in $PUBLISHERS; do wanted+=("pricepipe-publisher@$source.service"); done
for i in $(seq 1 "$PERSIST_WORKERS"); do wanted+=("pricepipe-persist@$i.service"); done
for i in $(seq 1 "$JOBS_WORKERS"); do wanted+=("pricepipe-jobs-worker@$i.service"); done
for port in $WS_PORTS; do wanted+=("pricepipe-ws@$port.service"); done
if [ -d "$SYSTEMD_DIR/pricepipe.target.wants" ]; then
    for link in "$SYSTEMD_DIR"/pricepipe.target.wants/*; do
        [ -e "$link" ] || [ -L "$link" ] || continue
        name=$(basename "$link")
        if [[ " ${wanted[*]} " != *" $name "* ]]; then
            run systemctl disable --now "$name"
        fi
    done
fi
run systemctl enable "${wanted[@]}"

# --- nginx ------------------------------------------------------------------------------

say "nginx site: /ws -> ${WS_PORTS// /, } (least_conn), / -> API on $API_PORT"
run install -d -m 0755 "$NGINX_DIR/snippets"
put_file 0644 root:root "$NGINX_DIR/snippets/pricepipe-locations.conf" \
    <"$DEPLOY_DIR/nginx/pricepipe-locations.conf"
render_nginx | put_file 0644 root:root "$NGINX_DIR/sites-available/pricepipe"
run ln -sfn "$NGINX_DIR/sites-available/pricepipe" "$NGINX_DIR/sites-enabled/pricepipe"
# Debian's default site also claims default_server on port 80.
if [ -L "$NGINX_DIR/sites-enabled/default" ]; then
    run rm -f "$NGINX_DIR/sites-enabled/default"
fi
run nginx -t
run systemctl enable nginx.service
run systemctl reload-or-restart nginx.service

# --- migrations and start ---------------------------------------------------------------

# Through the unit, so migrations run with exactly the services' environment and user.
say "migrations"
run systemctl restart pricepipe-migrate.service
if [ "$START" = 1 ]; then
    say "starting pricepipe.target"
    run systemctl restart pricepipe.target
    run systemctl --no-pager --lines=0 status 'pricepipe-*' || true
fi
say "done; see $PREFIX/deploy/README.md (status: sudo pricepipe status)"
