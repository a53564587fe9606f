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
export FAKE_DIR="$root/fakes" T8K_ROOT="$root" T8K_ENGINE_CONFIG="$root/config.toml"
mkdir -p "$FAKE_DIR/bin" "$FAKE_DIR/units" "$FAKE_DIR/pm2" "$root/etc" "$root/bin" "$root/remotes" "$root/src"
cleanup() { "$FAKE_DIR/bin/systemctl" stop tractstack-go >/dev/null 2>&1 || true; rm -rf "$root"; }
trap cleanup EXIT; [ -n "${DEMO_KEEP:-}" ] && trap - EXIT
for tool in systemctl pm2; do ln -s "$repo/tests/fixtures/$tool" "$FAKE_DIR/bin/$tool"; done
export PATH="$FAKE_DIR/bin:$PATH"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "main=$port,20000" > "$root/etc/t8k-ports.conf"
echo "PORT=$port exec $root/bin/tractstack-go" > "$FAKE_DIR/units/tractstack-go"
echo online > "$FAKE_DIR/pm2/astro-main"
printf 'kill_grace = 2\n' > "$root/config.toml"

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

say "the scripts the engine will run (built in; 't8k-engine scripts init' copies them for editing)"
"$engine" check
say "a developer pushes v2 of both repositories; the server gets a trigger"
publish tractstack-go cmd/tractstack-go/version.txt v2 "backend v2"
publish my-tractstack version.txt v2 "frontend v2"
"$engine" trigger main
say "t8k-engine run: pull, build, restart"
"$engine" run
say "what is live now"
echo "backend /api/v1/health says: $(curl -s "http://127.0.0.1:$port/api/v1/health")"
echo "frontend dist/index.html: $(cat "$root/src/my-tractstack/dist/index.html")"

say "a developer pushes a backend that does not compile"
publish tractstack-go cmd/tractstack-go/broken.go 'package main
func init() { undefinedThing() }' "broken backend"
echo "type=main,tenant=default,command=build" > "$root/state/build-$(date +%s).csv"
"$engine" run || echo "(exit code $?: the job failed and its trigger was set aside)"
say "the set-aside trigger and its reason"
ls "$root/state/failed/"
cat "$root/state/failed/"*.reason
echo "backend still serving: $(curl -s "http://127.0.0.1:$port/api/v1/health")"
say "done; the demo root is removed"
