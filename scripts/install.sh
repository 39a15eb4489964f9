#!/usr/bin/env bash
# Idempotent installer for a fresh Debian 12 (run as root): system packages,
# .venv with pinned Python deps and the project in editable mode, and a running
# Open vSwitch. Each step checks first and does nothing when already done.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

APT_PACKAGES=(
    openvswitch-switch mininet wireguard-go wireguard-tools iperf3 tcpdump
    ethtool iproute2 iputils-ping procps psmisc
    chromium  # the web view's browser tests (Playwright drives /usr/bin/chromium)
)

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

# A python that can create a venv with pip in it (Debian splits venv/ensurepip out).
python_can_venv() {
    command -v "$PYTHON" >/dev/null 2>&1 \
        && "$PYTHON" -m venv --help >/dev/null 2>&1 \
        && "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

install_system_packages() {
    local wanted=("${APT_PACKAGES[@]}") missing=() pkg
    python_can_venv || wanted+=(python3-venv)
    for pkg in "${wanted[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "system packages: all present"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root"
    say "system packages: installing ${missing[*]}"
    apt-get update -qq
    # --no-install-recommends: wireguard-tools recommends wireguard-modules, which on Debian 12
    # pulls in a whole real-time kernel image and repoints /vmlinuz. We change no kernel.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if ! python_can_venv; then
        # pyenv's python3 may be gone on this machine: fall back to Debian's.
        PYTHON=/usr/bin/python3
        python_can_venv || die "$PYTHON cannot create a venv even after installing python3-venv"
    fi
}

venv_works() {
    [ -x "$VENV/bin/python" ] \
        && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

ensure_venv() {
    if venv_works; then
        say "venv: $VENV present"
        return
    fi
    if [ -e "$VENV" ]; then
        # A venv whose interpreter is gone or too old cannot be repaired in place.
        say "venv: $VENV is broken or older than Python 3.11; recreating"
        rm -rf "$VENV"
    else
        say "venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    fi
    "$PYTHON" -m venv "$VENV"
    venv_works || die "$VENV/bin/python does not run or is older than 3.11"
}

# The stamp names a hash of every file that decides what pip installs, so editing
# any of them (or a fresh venv) triggers a reinstall, and nothing else does.
install_python_packages() {
    local inputs=(requirements.txt requirements-dev.txt constraints.txt setup.cfg pyproject.toml) f hash stamp
    [ -f setup.py ] && inputs+=(setup.py)
    hash="$(for f in "${inputs[@]}"; do printf '%s\n' "$f"; cat "$f"; done | sha256sum | cut -c1-16)"
    stamp="$VENV/.installed-$hash"
    if [ -f "$stamp" ] && [ -x "$VENV/bin/goldilocks-controller" ]; then
        say "python packages: up to date (${stamp#"$ROOT"/})"
        return
    fi
    say "python packages: installing requirements and the project (editable)"
    # Absolute path: pip also applies it inside the isolated build envs (setuptools<68 for ryu).
    PIP_CONSTRAINT="$ROOT/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/python" -m pip install --quiet --progress-bar off \
        -r requirements.txt -r requirements-dev.txt -e .
    rm -f "$VENV"/.installed-*
    touch "$stamp"
    say "python packages: done"
}

# Ryu 4.34 imports eventlet.wsgi.ALREADY_HANDLED, which our eventlet dropped: a path-configuration
# file in the venv sets it back whenever eventlet.wsgi is imported (controller/eventlet_compat.py),
# so a stock `ryu-manager controller.app ryu.app.ofctl_rest` works in it too. Checked every time.
install_eventlet_compat() {
    local site pth line
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    pth="$site/goldilocks-eventlet-compat.pth"
    line="$("$VENV/bin/python" -c 'import sys; from controller.eventlet_compat import PTH_LINE; sys.stdout.write(PTH_LINE)')"
    if [ ! -f "$pth" ] || [ "$(cat "$pth")" != "$line" ]; then
        printf '%s\n' "$line" > "$pth"
        say "ryu-manager: eventlet compatibility hook installed (${pth#"$ROOT"/})"
    fi
    "$VENV/bin/ryu-manager" --version >/dev/null 2>&1 || die "ryu-manager does not start in $VENV even with the eventlet hook"
}

# Faucet, the peer `make bench` measures (bench/peers.py), in a venv of its own: it runs on os-ken,
# whose dependencies need not agree with ryu's. Pinned; the stamp names the pin, so changing it reinstalls.
FAUCET_VENV="$ROOT/.venv-faucet"
FAUCET_PIN="faucet==1.10.12"

faucet_works() {
    [ -x "$FAUCET_VENV/bin/faucet" ] && [ -x "$FAUCET_VENV/bin/check_faucet_config" ] \
        && "$FAUCET_VENV/bin/python" -c 'import faucet.valve' >/dev/null 2>&1
}

install_faucet() {
    local stamp="$FAUCET_VENV/.installed-${FAUCET_PIN//=/-}"
    if [ -f "$stamp" ] && faucet_works; then
        say "faucet: $FAUCET_PIN present (${FAUCET_VENV#"$ROOT"/})"
        return
    fi
    if [ ! -x "$FAUCET_VENV/bin/python" ] || ! "$FAUCET_VENV/bin/python" -c '' >/dev/null 2>&1; then
        rm -rf "$FAUCET_VENV"
        say "faucet: creating ${FAUCET_VENV#"$ROOT"/}"
        "$PYTHON" -m venv "$FAUCET_VENV"
    fi
    say "faucet: installing $FAUCET_PIN"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$FAUCET_VENV/bin/python" -m pip install --quiet --progress-bar off "$FAUCET_PIN"
    faucet_works || die "faucet did not install into ${FAUCET_VENV#"$ROOT"/}"
    rm -f "$FAUCET_VENV"/.installed-*
    touch "$stamp"
    say "faucet: done"
}

# ovsdb answering is not enough: bridges only forward if ovs-vswitchd runs too.
ovs_running() {
    ovs-vsctl --timeout=5 show >/dev/null 2>&1 && ovs-appctl --timeout=5 -t ovs-vswitchd version >/dev/null 2>&1
}

ensure_ovs() {
    if ovs_running; then
        say "open vswitch: running"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "Open vSwitch is not running; run as root to start it"
    say "open vswitch: starting (a ulimit warning here is harmless)"
    # Starts only the daemons that are down. No kernel datapath here, so it may
    # complain; what counts is that both daemons answer afterwards.
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random || true
    ovs_running || die "Open vSwitch did not start (see /var/log/openvswitch/)"
    say "open vswitch: running"
}

install_system_packages
ensure_venv
install_python_packages
install_eventlet_compat
install_faucet
ensure_ovs
say "ready"
