#!/usr/bin/env bash
# Install or upgrade pricepipe on a Debian/Ubuntu VM: Redis and PostgreSQL
# (unless --no-local-servers), the database and its two roles, a virtualenv
# under /opt/pricepipe, migrations, the systemd units and the nginx site.
#
# Idempotent: every step checks or overwrites, so running it again upgrades
# the code and units and keeps the generated passwords. --dry-run prints the
# actions without changing anything (and works without root).
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
  --no-local-servers      do not install Redis/PostgreSQL here (multi-VM: set the URLs
                          in $ETC_DIR/pricepipe.env first)
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
ENV_FILE="$ETC_DIR/pricepipe.env"
SECRETS_FILE="$ETC_DIR/db-passwords"

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }
random_hex() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

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
# Installed by pricepipe's deploy/install.sh: run pricepipe with the services' environment.
set -a
. "$ENV_FILE"
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

# --- secrets ----------------------------------------------------------------------------

run install -d -m 0755 -o root -g root "$ETC_DIR"
WRITER_PASSWORD=""
API_PASSWORD=""
PG_PORT=""
if [ "$LOCAL_SERVERS" = 0 ]; then
    # Another machine holds the database: its URLs must already be in the env file.
    [ -e "$ENV_FILE" ] || [ "$DRY_RUN" = 1 ] \
        || die "--no-local-servers: write $ENV_FILE first (see pricepipe.env.example)"
elif [ -r "$SECRETS_FILE" ]; then
    say "keeping database passwords from $SECRETS_FILE"
    WRITER_PASSWORD=$(sed -n 's/^WRITER_PASSWORD=//p' "$SECRETS_FILE")
    API_PASSWORD=$(sed -n 's/^API_PASSWORD=//p' "$SECRETS_FILE")
fi
if [ "$LOCAL_SERVERS" = 1 ] && { [ -z "$WRITER_PASSWORD" ] || [ -z "$API_PASSWORD" ]; }; then
    say "generating database passwords into $SECRETS_FILE"
    # hex: safe inside URLs and psql literals without escaping.
    WRITER_PASSWORD=$(random_hex)
    API_PASSWORD=$(random_hex)
    printf 'WRITER_PASSWORD=%s\nAPI_PASSWORD=%s\n' "$WRITER_PASSWORD" "$API_PASSWORD" \
        | put_file 0600 root:root "$SECRETS_FILE"
fi

# --- Redis ------------------------------------------------------------------------------

if [ "$LOCAL_SERVERS" = 1 ]; then
    say "redis: AOF everysec, maxmemory $REDIS_MAXMEMORY with noeviction"
    # noeviction: a full Redis refuses writes (the publisher backs off)
    # instead of silently evicting unpersisted stream entries.
    # auto-aof-rewrite-min-size: trimmed streams keep the rewritten AOF small,
    # so at the default 64mb a busy pipeline forks a rewrite every few
    # seconds (each fork stalls Redis for a moment).
    redis_conf_was=$(cksum <"$REDIS_CONF" 2>/dev/null || true)
    for kv in "appendonly yes" "appendfsync everysec" "auto-aof-rewrite-min-size 1gb" \
              "maxmemory $REDIS_MAXMEMORY" "maxmemory-policy noeviction" \
              "bind 127.0.0.1 -::1" "protected-mode yes"; do
        set_conf "${kv%% *}" "${kv#* }" "$REDIS_CONF"
    done
    run systemctl enable redis-server.service
    # Restart only for a changed configuration: an upgrade that leaves redis.conf as
    # it was must not pull Redis from under the running pipeline.
    if [ "$DRY_RUN" = 1 ] || [ "$(cksum <"$REDIS_CONF" 2>/dev/null || true)" != "$redis_conf_was" ]; then
        run systemctl restart redis-server.service
    else
        say "redis: configuration unchanged, keeping it running"
        run systemctl start redis-server.service
    fi
fi

# --- PostgreSQL -------------------------------------------------------------------------

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
    fi
fi
[[ $PG_PORT =~ ^[0-9]+$ ]] || PG_PORT=5432

# --- environment file -------------------------------------------------------------------

if [ -e "$ENV_FILE" ]; then
    say "keeping $ENV_FILE (edit it by hand; see pricepipe.env.example)"
else
    say "writing $ENV_FILE"
    sed -e "s|pricepipe_writer:CHANGE_ME@127.0.0.1:5432/pricepipe|$DB_WRITER:$WRITER_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME|" \
        -e "s|pricepipe_api:CHANGE_ME@127.0.0.1:5432/pricepipe|$DB_API:$API_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME|" \
        "$DEPLOY_DIR/pricepipe.env.example" | put_file 0600 root:root "$ENV_FILE"
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

# The operator's `pricepipe` (status, dlq, migrate...): root-only, because it reads the
# 0600 environment file, then drops to the service user like the units do.
render_wrapper | put_file 0750 root:root "$SBIN_DIR/pricepipe"

# --- systemd units ----------------------------------------------------------------------

say "systemd units into $SYSTEMD_DIR"
for unit in "$DEPLOY_DIR"/systemd/*; do
    sed "s|/opt/pricepipe/venv|$VENV|g" "$unit" | put_file 0644 root:root "$SYSTEMD_DIR/$(basename "$unit")"
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
say "done; see $PREFIX/deploy/README.md (status: $VENV/bin/pricepipe status)"
