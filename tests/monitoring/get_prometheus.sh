#!/usr/bin/env bash
# Unpack Debian's prometheus package (prometheus and promtool) for the monitoring tests,
# without installing it: the package would start a system service. Like .ci/run does for
# nginx: `apt-get download` + `dpkg -x` into a cache directory kept between runs.
#
# Prints the directory holding the two binaries; exits 1 when the package cannot be had.
# Cache: $PRICEPIPE_PROMETHEUS_CACHE, default ${TMPDIR:-/tmp}/pricepipe-ci-prometheus.
#   export PRICEPIPE_TEST_PROMETHEUS="$(tests/monitoring/get_prometheus.sh)"
set -euo pipefail

dir=${PRICEPIPE_PROMETHEUS_CACHE:-${TMPDIR:-/tmp}/pricepipe-ci-prometheus}
bin="$dir/root/usr/bin"
if [ ! -x "$bin/prometheus" ] || [ ! -x "$bin/promtool" ]; then
    if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
        echo "get_prometheus.sh: needs apt-get and dpkg (Debian)" >&2
        exit 1
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    # An empty package list (a fresh container) needs an update first; only root may.
    if ! (cd "$dir" && apt-get download -qq prometheus >/dev/null 2>&1); then
        if [ "$(id -u)" != 0 ] || ! apt-get update -qq >/dev/null 2>&1 ||
                ! (cd "$dir" && apt-get download -qq prometheus >/dev/null 2>&1); then
            echo "get_prometheus.sh: cannot download the prometheus package" >&2
            exit 1
        fi
    fi
    dpkg -x "$dir"/prometheus_*.deb "$dir/root"
fi
echo "$bin"
