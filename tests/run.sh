#!/usr/bin/env bash
# Sets up everything the test suite needs, then runs it. Arguments go to pytest.
#   bash tests/run.sh                 # the whole suite
#   bash tests/run.sh -k e2e -x       # a part of it
# As root it installs the system packages the real peers need (Debian's mosquitto, chromium,
# openssl); as a normal user it says which are missing. Under CI=true a missing mosquitto or
# chromium fails the tests that need them instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Not needed by any assertion, but screenshots of the kiosk show tofu boxes without a CJK font.
[ -d /usr/share/fonts/opentype/noto ] || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing system packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    else
        echo "missing system packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    fi
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,demo]'

exec .venv/bin/python -m pytest "$@"
