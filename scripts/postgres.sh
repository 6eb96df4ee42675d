# Sourced by test.sh: make sure a PostgreSQL server answers on 127.0.0.1:5432 and that the role
# the tests use (letta_test, password letta_test, may create databases) exists. Installs Debian's
# server when missing and starts its cluster; Debian authenticates TCP clients by password
# (scram-sha-256), so the role gets one. Override with LETTA_APPSERVICE_TEST_PG to use another
# server (then nothing here runs).
if [ -z "${LETTA_APPSERVICE_TEST_PG:-}" ]; then
    # Test runs started together (two checkouts on one machine) set the server up one at a
    # time: concurrent ALTER ROLEs fail with "tuple concurrently updated".
    exec 9>"${TMPDIR:-/tmp}/letta-appservice-postgres.lock"
    flock 9
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "PostgreSQL is missing: install it (Debian: apt-get install postgresql) or set" \
                "LETTA_APPSERVICE_TEST_PG to a server URL whose role may create databases" >&2
            exit 1
        fi
        echo "installing PostgreSQL from Debian's packages..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq postgresql >/dev/null
    fi
    pg_version="$(ls /etc/postgresql | sort -V | tail -n1)"
    if [ -z "$(ls /etc/postgresql/"$pg_version" 2>/dev/null)" ]; then
        pg_createcluster "$pg_version" main >/dev/null
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
    # Local superuser access is by peer authentication: run psql as the postgres OS user.
    runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
SELECT 'CREATE ROLE letta_test' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'letta_test')
\gexec
ALTER ROLE letta_test WITH LOGIN CREATEDB PASSWORD 'letta_test';
SQL
    flock -u 9
    exec 9>&-
    export LETTA_APPSERVICE_TEST_PG="postgres://letta_test:letta_test@127.0.0.1:5432/postgres"
fi
