#!/usr/bin/env bash
# Sourced by examples/demo.sh and benches/pipeline.sh: a throwaway TractStack root with the faithful fixture
# site (tests/fixtures/site) in git repositories with bare remotes, installed the way t8k-install.sh does it
# and serving v1: the backend (tractstack-go's contracts: tenant middleware, /health, warm-up, sqlite_fts5,
# data under GO_BACKEND_PATH) run by the stand-in systemctl (so that neither needs root; the pipeline
# tests run the same backend as a unit of a real systemd), the frontend by real pm2, astro-tractstack
# from a local npm registry (tests/fixtures/npm-registry.py).
# Needs: $repo (the t8k-engine checkout) and `say`. Optional: PM2_MODE (fork, as the installer sets it
# up, or cluster), WARMUP_MS (the backend's start-up warm-up, default 1000).
# Defines: $root, $go_port, $astro_port, publish, publish_astro_tractstack, serving, cleanup; exports
# what t8k-engine, pnpm and the stand-ins need.
root=$(mktemp -d /tmp/t8k-site.XXXXXX)
export FAKE_DIR="$root/fakes" T8K_ROOT="$root" T8K_ENGINE_CONFIG="$root/config.toml" PM2_HOME="$root/pm2"
export ASTRO_TELEMETRY_DISABLED=1 WARMUP_MS=${WARMUP_MS:-1000}
pm2_mode=${PM2_MODE:-fork}
data="$root/t8k-go-server"
mkdir -p "$FAKE_DIR/bin" "$FAKE_DIR/units" "$root/etc" "$root/bin" "$root/remotes" "$root/src" \
    "$root/registry" "$data/config/default" "$data/config/t8k"
registry_pid=""
cleanup() {
    pm2 kill >/dev/null 2>&1 || true
    "$FAKE_DIR/bin/systemctl" stop tractstack-go >/dev/null 2>&1 || true
    [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
    rm -rf "$root"
}
ln -s "$repo/tests/fixtures/systemctl" "$FAKE_DIR/bin/systemctl"
ln -s "$repo/tests/fixtures/journalctl" "$FAKE_DIR/bin/journalctl"
export PATH="$FAKE_DIR/bin:$PATH"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
go_port=$(free_port); astro_port=$(free_port)
echo "main=$go_port,$astro_port" > "$root/etc/t8k-ports.conf"
printf 'kill_grace = 2\nhttp_timeout = 10\n' > "$root/config.toml"

# The npm registry that publishes astro-tractstack; everything else comes from the real one.
echo 2.0.0 > "$root/registry/astro-tractstack.versions"
python3 "$repo/tests/fixtures/npm-registry.py" "$root/registry" > "$root/registry/port" &
registry_pid=$!
until [ -s "$root/registry/port" ]; do sleep 0.05; done
export npm_config_registry="http://127.0.0.1:$(head -1 "$root/registry/port")/"
publish_astro_tractstack() { echo "$1" >> "$root/registry/astro-tractstack.versions"; }

# The backend's data as the installer and its first start leave it: the default tenant, set up, and the
# tenant registry (config/t8k, which is no tenant).
echo '{}' > "$data/config/default/env.json"
echo '{"tenants":{"default":{"tenantId":"default","domains":["*"],"status":"active"}}}' > "$data/config/t8k/tenants.json"

git_() { git -c user.name=demo -c user.email=demo@example.invalid "$@"; }
for part in backend:tractstack-go frontend:my-tractstack; do
    src=${part%%:*}; name=${part#*:}
    git_ init -q --bare -b main "$root/remotes/$name.git"
    git_ clone -q "$root/remotes/$name.git" "$root/upstream-$name" 2>/dev/null
    cp -r "$repo/tests/fixtures/site/$src/." "$root/upstream-$name/"
    (cd "$root/upstream-$name" && git_ checkout -q -b main && git_ add -A && git_ commit -qm v1 && git_ push -q origin main)
    git_ clone -q "$root/remotes/$name.git" "$root/src/$name"
done
# The installer's .env files and unit (WorkingDirectory= the sources, GO_BACKEND_PATH and PORT set, run
# as t8k, whose home is the root).
printf 'GO_BACKEND_PATH=%s/\nPORT=%s\nGIN_MODE=release\nENABLE_MULTI_TENANT=false\n' "$data" "$go_port" \
    > "$root/src/tractstack-go/.env"
printf 'PRIVATE_GO_BACKEND_PATH=%s/\nPUBLIC_GO_BACKEND=http://127.0.0.1:%s\nPUBLIC_TENANTID=default\nPUBLIC_ENABLE_MULTI_TENANT=false\n' \
    "$data" "$go_port" > "$root/src/my-tractstack/.env"
echo "cd $root/src/tractstack-go && HOME=$root GO_BACKEND_PATH=$data/ PORT=$go_port exec $root/bin/tractstack-go" \
    > "$FAKE_DIR/units/tractstack-go"

publish() { # publish REPO FILE CONTENT MESSAGE: a developer pushes a commit
    (cd "$root/upstream-$1" && printf '%s\n' "$3" > "$2" && git_ add -A && git_ commit -qm "$4" && git_ push -q origin main)
}
serving() {
    echo "  backend  /health: $(curl -s "http://127.0.0.1:$go_port/health")"
    echo "  backend  /api/v1/health (X-Tenant-ID: default): $(curl -s -H 'X-Tenant-ID: default' "http://127.0.0.1:$go_port/api/v1/health")"
    echo "  frontend /: $(curl -s "http://127.0.0.1:$astro_port/" | grep -o '<h1[^<]*</h1>\|<p id="astro-tractstack">[^<]*</p>' | tr '\n' ' ')"
}

say "a TractStack server as installed: v1 built, the backend unit and the pm2 frontend ($pm2_mode mode) running"
(cd "$root/src/tractstack-go" && go build -tags sqlite_fts5 -o "$root/bin/tractstack-go" ./cmd/tractstack-go)
(cd "$root/src/my-tractstack" && pnpm install --silent --frozen-lockfile && pnpm build >/dev/null)
systemctl start tractstack-go
(cd "$root/src/my-tractstack" && ASTRO_PORT=$astro_port ASTRO_PM2_MODE=$pm2_mode pm2 start --silent ecosystem.config.cjs)
until curl -sf "http://127.0.0.1:$astro_port/" >/dev/null \
    && curl -sf -H 'X-Tenant-ID: default' "http://127.0.0.1:$go_port/api/v1/health" >/dev/null; do sleep 0.1; done
serving
