#!/bin/sh
# Container entrypoint: first-run setup (example config, then registration), else run the bridge.
#
#   no arguments     no config -> write the example and stop; no registration -> generate it
#                    and stop (the homeserver must load it first); otherwise run.
#   a program        run as is, e.g. `sh`.
#   anything else    passed to letta-appservice with the paths above, e.g. `--tuwunel-toml`,
#                    `db upgrade`.
set -eu

CONFIG_PATH="${CONFIG_PATH:-/data/config.yaml}"
REGISTRATION_PATH="${REGISTRATION_PATH:-/data/registration.yaml}"
# The first-run steps below say what to do next in Docker terms; the program only says what it
# wrote, so there is one next step, not two.
export LETTA_APPSERVICE_NEXT_STEPS=off

if [ "$#" -gt 0 ]; then
    case "$1" in
        -*) ;;
        *) if command -v "$1" >/dev/null 2>&1; then exec "$@"; fi ;;
    esac
    exec letta-appservice -c "$CONFIG_PATH" -r "$REGISTRATION_PATH" "$@"
fi

# A bind-mounted directory created by the Docker daemon belongs to root: say so plainly
# instead of letting the application fail on its first write.
require_writable() {
    if [ ! -w "$1" ]; then
        echo "error: $1 is not writable by uid $(id -u)." >&2
        echo "On the host, create the mounted directory and give it to that uid, e.g." >&2
        echo "  mkdir -p <dir> && sudo chown $(id -u):$(id -g) <dir>" >&2
        exit 1
    fi
}

if [ ! -f "$CONFIG_PATH" ]; then
    require_writable "$(dirname "$CONFIG_PATH")"
    letta-appservice -c "$CONFIG_PATH" -r "$REGISTRATION_PATH"
    cat <<EOF

Next: set the keys listed above in the config (compose: data/letta-appservice/config.yaml
on the host), then run this container again, without arguments, to write the registration.
EOF
    exit 0
fi

if [ ! -f "$REGISTRATION_PATH" ]; then
    require_writable "$(dirname "$REGISTRATION_PATH")"
    require_writable "$CONFIG_PATH"
    letta-appservice -c "$CONFIG_PATH" -r "$REGISTRATION_PATH" -g
    cat <<EOF

Next: the homeserver reads registrations only at startup. Start the stack
(docker compose -f docker-compose.tuwunel.yml up -d), or restart the homeserver if it was
already running.
EOF
    exit 0
fi

exec letta-appservice -c "$CONFIG_PATH" -r "$REGISTRATION_PATH"
