#!/usr/bin/env bash
# End-to-end demo of t8k-engine on a throwaway TractStack root: a real Go backend and a frontend in git
# repositories with bare remotes, built by the shipped scripts with real go and pnpm. systemctl and pm2
# are stand-ins (tests/fixtures/) because systemd cannot run here; the fake systemctl really runs the
# backend. Everything is removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing tools (git, go, node, pnpm) if missing"
bash "$repo/.ci/install.sh"
say "building t8k-engine"
(cd "$repo" && cargo build --quiet)
engine="$repo/target/debug/t8k-engine"

root=$(mktemp -d /tmp/t8k-demo.XXXXXX)
export FAKE_DIR="$root/fakes" T8K_ROOT="$root" T8K_ENGINE_CONFIG="$root/config.toml" PM2_HOME="$root/pm2"
mkdir -p "$FAKE_DIR/bin" "$FAKE_DIR/units" "$root/etc" "$root/bin" "$root/remotes" "$root/src" \
    "$root/t8k-go-server/config/default"
cleanup() {
    pm2 kill >/dev/null 2>&1 || true
    "$FAKE_DIR/bin/systemctl" stop tractstack-go >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT; [ -n "${DEMO_KEEP:-}" ] && trap - EXIT
ln -s "$repo/tests/fixtures/systemctl" "$FAKE_DIR/bin/systemctl"
export PATH="$FAKE_DIR/bin:$PATH"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
go_port=$(free_port); astro_port=$(free_port)
echo "main=$go_port,$astro_port" > "$root/etc/t8k-ports.conf"
echo "PORT=$go_port exec $root/bin/tractstack-go" > "$FAKE_DIR/units/tractstack-go"
printf 'kill_grace = 2\nhttp_timeout = 5\n' > "$root/config.toml"

git_() { git -c user.name=demo -c user.email=demo@example.invalid "$@"; }
for part in backend:tractstack-go frontend:my-tractstack; do
    src=${part%%:*}; name=${part#*:}
    git_ init -q --bare -b main "$root/remotes/$name.git"
    git_ clone -q "$root/remotes/$name.git" "$root/upstream-$name" 2>/dev/null
    cp -r "$repo/tests/fixtures/site/$src/." "$root/upstream-$name/"
    (cd "$root/upstream-$name" && git_ checkout -q -b main && git_ add -A && git_ commit -qm v1 && git_ push -q origin main)
    git_ clone -q "$root/remotes/$name.git" "$root/src/$name"
done
publish() { # publish REPO FILE CONTENT MESSAGE: a developer pushes a commit
    (cd "$root/upstream-$1" && printf '%s\n' "$3" > "$2" && git_ add -A && git_ commit -qm "$4" && git_ push -q origin main)
}
serving() {
    echo "  backend  /api/v1/health: $(curl -s "http://127.0.0.1:$go_port/api/v1/health")"
    echo "  frontend /: $(curl -s "http://127.0.0.1:$astro_port/")"
}

say "a TractStack server as installed: v1 built, the backend unit and the pm2 frontend running"
(cd "$root/src/tractstack-go" && go build -o "$root/bin/tractstack-go" ./cmd/tractstack-go)
(cd "$root/src/my-tractstack" && pnpm install --silent --frozen-lockfile && pnpm build >/dev/null)
systemctl start tractstack-go
(cd "$root/src/my-tractstack" && PORT=$astro_port pm2 start --silent dist/server/entry.mjs --name astro-main)
until curl -sf "http://127.0.0.1:$astro_port/" >/dev/null && curl -sf "http://127.0.0.1:$go_port/api/v1/health" >/dev/null; do sleep 0.1; done
serving

say "the scripts the engine runs (built in; 't8k-engine scripts init' copies them for editing)"
"$engine" check
say "developers push v2 of both; the server gets a trigger"
publish tractstack-go cmd/tractstack-go/version.txt v2 "backend v2"
publish my-tractstack version.txt v2 "frontend v2"
"$engine" trigger main
say "t8k-engine run: pull, build both in parallel, switch, restart, check, record"
"$engine" run
serving

say "the same trigger again: nothing changed, so nothing is built"
"$engine" trigger main
"$engine" run 2>&1 | grep -E "plan:|nothing changed|check|finished"

say "a backend that does not compile: nothing live changes"
publish tractstack-go cmd/tractstack-go/broken.go 'package main
func init() { undefinedThing() }' "broken backend"
"$engine" trigger main
"$engine" run 2>&1 | grep -E "ERROR" || true
serving
(cd "$root/upstream-tractstack-go" && git_ rm -q cmd/tractstack-go/broken.go && git_ commit -qm "fix" && git_ push -q origin main)

say "a backend that builds but fails its health check: rolled back"
publish tractstack-go cmd/tractstack-go/version.txt broken-v3 "unhealthy backend"
"$engine" trigger main
"$engine" run 2>&1 | grep -E "rolled back|rolling back|ERROR" || true
serving
say "set-aside triggers and their reasons (t8k-engine retry NAME requeues one)"
for r in "$root"/state/failed/*.reason; do head -1 "$r"; done
say "done; the demo root is removed"
