#!/bin/sh
# Install corral as a systemd service: the `corral` system user, /var/lib/corral (models, keys),
# /etc/corral/corral.env and /etc/systemd/system/corral.service. Safe to run again: it creates only
# what is missing, keeps an edited corral.env, and rewrites the unit.
#
#   sudo deploy/install.sh [--corral /opt/corral/.venv/bin/corral] [--root DIR]
#
# --corral  the corral executable the unit starts (default /opt/corral/.venv/bin/corral, what
#           `make install` makes in /opt/corral).
# --root    install into DIR as if it were / (an image being built, or a test); DIR/etc must
#           hold passwd, group, shadow and gshadow. systemctl is not called then.
set -eu

CORRAL=/opt/corral/.venv/bin/corral
ROOT=
while [ $# -gt 0 ]; do
    case "$1" in
        --corral) CORRAL=$2; shift 2 ;;
        --root) ROOT=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
USER_NAME=corral
STATE=/var/lib/corral
ENV_FILE=/etc/corral/corral.env
UNIT=/etc/systemd/system/corral.service

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run it as root (sudo)" >&2
    exit 1
fi
if [ ! -x "$CORRAL" ]; then
    echo "install.sh: no corral executable at $CORRAL (install corral first, or pass --corral)" >&2
    exit 1
fi

# useradd/groupadd --prefix work on ROOT's /etc files instead of this machine's.
prefix_args=
if [ -n "$ROOT" ]; then
    prefix_args="--prefix $ROOT"
fi
field() {  # field FILE NAME N: the Nth field of NAME's line in an /etc/passwd-style file
    awk -F: -v name="$2" -v n="$3" '$1 == name { print $n }' "$1"
}

# 1. The system group and user: no login shell, home in the state directory.
if [ -z "$(field "$ROOT/etc/group" "$USER_NAME" 1)" ]; then
    # shellcheck disable=SC2086
    groupadd $prefix_args --system "$USER_NAME"
    echo "created group $USER_NAME"
fi
if [ -z "$(field "$ROOT/etc/passwd" "$USER_NAME" 1)" ]; then
    # shellcheck disable=SC2086
    useradd $prefix_args --system --gid "$USER_NAME" --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "corral LLM server" "$USER_NAME"
    echo "created user $USER_NAME"
fi
# Where the NVIDIA device nodes are group-restricted (NVreg_DeviceFileMode), they belong to
# `video` (or `render`): let the service open them.
for group in video render; do
    members=$(field "$ROOT/etc/group" "$group" 4)
    if [ -n "$(field "$ROOT/etc/group" "$group" 1)" ]; then
        case ",$members," in
            *",$USER_NAME,"*) ;;
            *) # shellcheck disable=SC2086
               usermod $prefix_args -a -G "$group" "$USER_NAME" ;;
        esac
    fi
done
uid=$(field "$ROOT/etc/passwd" "$USER_NAME" 3)
gid=$(field "$ROOT/etc/group" "$USER_NAME" 3)

# 2. Directories. systemd's StateDirectory= would create /var/lib/corral at the first start;
# creating it now lets `corral keys create` write the keys file before that.
install -d -m 0755 "$ROOT/var/lib" "$ROOT/etc/corral" "$ROOT/etc/systemd/system"
install -d -m 0750 -o "$uid" -g "$gid" "$ROOT$STATE" "$ROOT$STATE/models"

# 3. The environment file, only when missing: an edited one is the administrator's.
if [ ! -e "$ROOT$ENV_FILE" ]; then
    tmp=$(mktemp "$ROOT/etc/corral/.corral.env.XXXXXX")
    cat > "$tmp" <<'EOF'
# Settings of the corral service (KEY=value lines; README "Environment variables" lists them).
# They override the unit's defaults. After a change: sudo systemctl restart corral
#
# Listen on every interface instead of 127.0.0.1:11434 (then create an API key, see below):
#OLLAMA_HOST=0.0.0.0:11434
#OLLAMA_KEEP_ALIVE=5m
#OLLAMA_NUM_PARALLEL=4
#OLLAMA_MAX_LOADED_MODELS=3
#CUDA_VISIBLE_DEVICES=0,1
# The keys file `corral keys create --keys-file` writes; the unit's default:
#CORRAL_KEYS_FILE=/var/lib/corral/keys.json
EOF
    chmod 0640 "$tmp"
    chown "0:$gid" "$tmp"
    mv "$tmp" "$ROOT$ENV_FILE"
    echo "wrote $ENV_FILE"
else
    echo "kept $ENV_FILE"
fi

# 4. The unit, starting this corral; written whole and renamed into place.
tmp=$(mktemp "$ROOT/etc/systemd/system/.corral.service.XXXXXX")
sed "s#^ExecStart=.*#ExecStart=$CORRAL serve#" "$HERE/corral.service" > "$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$ROOT$UNIT"
echo "installed $UNIT (ExecStart=$CORRAL serve)"

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<EOF

Next:
  sudo systemctl enable --now corral
  systemctl status corral            # "listening on ..." once ready
Before listening beyond this machine (OLLAMA_HOST in $ENV_FILE), create the first API key in
the service's own keys file (the secret is printed once, on the last line):
  sudo -u $USER_NAME $CORRAL keys create admin --admin --keys-file $STATE/keys.json
EOF
