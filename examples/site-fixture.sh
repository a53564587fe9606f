#!/usr/bin/env bash
# Sourced by examples/demo.sh and benches/pipeline.sh: a throwaway TractStack root with the fixture site
# (tests/fixtures/site) in git repositories with bare remotes, installed and serving v1: the backend run
# by the stand-in systemctl (systemd cannot be PID 1 here), the frontend by real pm2.
# Needs: $repo (the t8k-engine checkout) and `say`. Defines: $root, $go_port, $astro_port, publish,
# serving, cleanup; exports what t8k-engine and the stand-ins need.
root=$(mktemp -d /tmp/t8k-site.XXXXXX)
export FAKE_DIR="$root/fakes" T8K_ROOT="$root" T8K_ENGINE_CONFIG="$root/config.toml" PM2_HOME="$root/pm2"
export ASTRO_TELEMETRY_DISABLED=1
mkdir -p "$FAKE_DIR/bin" "$FAKE_DIR/units" "$root/etc" "$root/bin" "$root/remotes" "$root/src" \
    "$root/t8k-go-server/config/default"
cleanup() {
    pm2 kill >/dev/null 2>&1 || true
    "$FAKE_DIR/bin/systemctl" stop tractstack-go >/dev/null 2>&1 || true
    rm -rf "$root"
}
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
    echo "  frontend /: $(curl -s "http://127.0.0.1:$astro_port/" | grep -o '<h1[^<]*</h1>')"
}

say "a TractStack server as installed: v1 built, the backend unit and the pm2 frontend running"
(cd "$root/src/tractstack-go" && go build -o "$root/bin/tractstack-go" ./cmd/tractstack-go)
(cd "$root/src/my-tractstack" && pnpm install --silent --frozen-lockfile && pnpm build >/dev/null)
systemctl start tractstack-go
(cd "$root/src/my-tractstack" && ASTRO_PORT=$astro_port pm2 start --silent ecosystem.config.cjs)
until curl -sf "http://127.0.0.1:$astro_port/" >/dev/null && curl -sf "http://127.0.0.1:$go_port/api/v1/health" >/dev/null; do sleep 0.1; done
serving

