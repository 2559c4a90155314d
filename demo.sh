#!/usr/bin/env bash
# Builds dist/otelmig.pyz and shows its main job on a throwaway PostgreSQL:
# a store in the old worker's runtime layout, with rows, adopted in place,
# verified, rolled back and upgraded again, every row kept.
set -euo pipefail
cd "$(dirname "$0")"
./build.sh

PGBIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
tmp=$(mktemp -d)
chmod 755 "$tmp"
[ "$(id -u)" = 0 ] && chown postgres: "$tmp"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password="demo-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$password" > "$tmp/pw" && [ "$(id -u)" = 0 ] && chown postgres: "$tmp/pw"
as_pg "$PGBIN/initdb" -D "$tmp/data" -U postgres --pwfile "$tmp/pw" --auth=scram-sha-256 -E UTF8 --locale=C >/dev/null
rm "$tmp/pw"
as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/log" -w -o "-p $port -k $tmp -c listen_addresses=127.0.0.1" start >/dev/null
trap 'as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null; rm -rf "$tmp"' EXIT

export POSTGRES_URL="postgresql://postgres:$password@127.0.0.1:$port/postgres"
export PGPASSWORD=$password
psql_() { psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
step() { echo; echo "\$ $*"; set +e; "$@"; echo "(exit $?)"; set -e; }

echo "== the old worker's layout (docs/legacy_schema.sql), 2,000 traces, 10,000 spans"
psql_ -f docs/legacy_schema.sql
psql_ -c "insert into otel.traces (trace_id, service_name, start_ts, span_count)
          select md5(g::text), 'svc-' || g % 20, now() - g * interval '1 s', 5 from generate_series(1, 2000) g;
          insert into otel.spans (trace_id, span_id, name, service_name, start_ts, status, attributes)
          select md5(g::text), substr(md5(g || '.' || k), 1, 16), 'op-' || k, 'svc-' || g % 20,
                 now() - g * interval '1 s', 'STATUS_CODE_OK', jsonb_build_object('k', k)
          from generate_series(1, 2000) g, generate_series(1, 5) k;"
# Every legacy column of every span, under its old or new name.
columns="id, trace_id, span_id, parent_span_id, name, kind, service_name, START, END, duration_ms, STATUS, ATTRS::text, environment, tenant_id"
checksum() { psql_ -tA -c "select md5(string_agg(row(${columns//START/$1})::text, ',' order by id)) from otel.spans" ; }
legacy_columns=${columns//END/end_ts}; legacy_columns=${legacy_columns//STATUS/status}; legacy_columns=${legacy_columns//ATTRS/attributes}
head_columns=${columns//END/end_time}; head_columns=${head_columns//STATUS/status_code}; head_columns=${head_columns//ATTRS/span_attributes}
columns=$legacy_columns legacy_sum=$(checksum start_ts)

PYZ=./dist/otelmig.pyz
step $PYZ check
step $PYZ plan
step $PYZ upgrade
step $PYZ verify
step $PYZ current
step $PYZ check
step $PYZ rollback
step $PYZ upgrade
step $PYZ verify --format prometheus

columns=$head_columns after_sum=$(checksum start_time)
echo
if [ "$legacy_sum" = "$after_sum" ]; then
    echo "== every span row kept through adopt, rollback and upgrade (md5 $after_sum)"
else
    echo "== ROWS DIFFER: $legacy_sum vs $after_sum" >&2
    exit 1
fi
