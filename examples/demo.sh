#!/usr/bin/env bash
# End-to-end demo of t8k-engine on a throwaway TractStack root: the faithful fixture site (a backend that
# keeps tractstack-go's contracts and an Astro frontend, in git repositories with bare remotes), built by
# the shipped scripts with real go, pnpm and pm2. systemctl is a stand-in (tests/fixtures/), so that the
# demo runs on any machine without a systemd of its own to use (tests/integration/systemd.rs runs the shipped units
# under a real one); it really runs the backend. Everything is removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing tools (git, go, node, pnpm) if missing"
bash "$repo/.ci/install.sh"
say "building t8k-engine"
(cd "$repo" && cargo build --quiet)
engine="$repo/target/debug/t8k-engine"

# shellcheck source=examples/site-fixture.sh
source "$repo/examples/site-fixture.sh"
trap cleanup EXIT

say "the scripts the engine runs (built in; 't8k-engine scripts init' copies them for editing)"
"$engine" check
say "developers push v2 of both; the server gets a trigger"
publish tractstack-go cmd/tractstack-go/version.txt v2 "backend v2"
publish my-tractstack version.txt v2 "frontend v2"
"$engine" trigger main
say "t8k-engine run: pull, build both in parallel, switch, restart, check, record"
"$engine" run
serving

say "the same trigger again: astro-tractstack is checked for updates, nothing changed, so nothing is built"
"$engine" trigger main
"$engine" run 2>&1 | grep -E "plan:|nothing changed|check|finished"

say "astro-tractstack 2.0.1 is published: the next build takes it, as t8k-concierge.sh did"
publish_astro_tractstack 2.0.1
"$engine" trigger main
"$engine" run 2>&1 | grep -E "astro-tractstack|plan:|fork mode|finished"
serving

say "an operator edits the frontend in place: the edit is built and served"
echo "v2-edited" > "$root/src/my-tractstack/version.txt"
"$engine" trigger main
"$engine" run 2>&1 | grep -E "local changes|plan:|finished"
serving

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
