#!/usr/bin/env bash
# Create a development SoftHSM2 token and an hsmca configuration under DIR.
#
# Usage: softhsm-setup/setup.sh DIR
#
# Creates (each only if missing, so running it again changes nothing):
#   DIR/softhsm2.conf   SoftHSM2 configuration, token directory DIR/tokens
#   DIR/tokens/         SoftHSM2 token store (0700)
#   DIR/pin, DIR/so-pin random user PIN and SO PIN (0600)
#   the token labelled $HSMCA_TOKEN_LABEL (default "hsmca") in DIR/tokens
#   DIR/hsmca.toml      hsmca configuration for that token
#   DIR/state/          hsmca state directory (0700)
#
# Environment:
#   HSMCA_TOKEN_LABEL   token label (default: hsmca)
#
# PINs never appear on any process's command line: softhsm2-util only reads
# PINs from a terminal, so they are typed into it through a pseudo-terminal
# made by script(1) (util-linux), fed from a pipe written by bash builtins.
#
# Different DIRs may be set up concurrently: nothing outside DIR is written
# (apart from installing softhsm2 when it is missing).
set -euo pipefail

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

usage() {
    printf 'usage: %s DIR\n' "$0" >&2
    exit 2
}

# Run a command as root: directly when root, else through sudo.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# Install Debian packages (apt-get update first).
apt_install() {
    if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        die "missing Debian package(s): $*; not root and sudo is not installed, so install them as root (apt-get install $*) and re-run"
    fi
    printf '%s: installing %s\n' "$prog" "$*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
        install -y --no-install-recommends "$@"
}

# Quote a string as a TOML basic string.
toml_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# Write stdin to FILE (atomically, via a temp file in the same directory)
# unless FILE already holds exactly that content, in which case nothing is
# touched. Prints "created", "updated" or "unchanged".
write_if_changed() {
    local file=$1 content tmp what=created
    content=$(cat)
    if [[ -f $file && -r $file ]] && [[ $(<"$file") == "$content" ]]; then
        echo unchanged
        return
    fi
    [[ -e $file ]] && what=updated
    tmp=$(mktemp "$file.tmp.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
    echo "$what"
}

# Create FILE holding a fresh random PIN (16 hex digits) unless it exists.
# Prints "created" or "kept".
make_pin() {
    local file=$1 pin tmp
    if [[ -e $file ]]; then
        [[ -f $file && -r $file ]] || die "$file exists but is not a readable file"
        pin=$(<"$file")
        [[ ${#pin} -ge 4 && ${#pin} -le 255 && $pin != *$'\n'* ]] ||
            die "$file does not hold a usable PIN (one line, 4 to 255 characters)"
        if [[ -n $(find "$file" -perm /077) ]]; then
            chmod 0600 "$file"
        fi
        echo kept
        return
    fi
    pin=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
    [[ ${#pin} -eq 16 ]] || die "could not read random bytes from /dev/urandom"
    # umask 077 in a subshell: the files are never readable by others, even
    # for a moment. Written without a trailing newline.
    (
        umask 077
        tmp=$(mktemp "$file.tmp.XXXXXX")
        printf '%s' "$pin" >"$tmp"
        mv -f "$tmp" "$file"
    )
    echo created
}

# Print the labels of the initialised tokens in the token directory.
token_labels() {
    SOFTHSM2_CONF=$conf softhsm2-util --show-slots |
        awk '/^[[:space:]]*Label:/ {
                 sub(/^[[:space:]]*Label:[[:space:]]*/, "")
                 sub(/[[:space:]]+$/, "")
                 if ($0 != "") print
             }'
}

token_exists() {
    local l
    while IFS= read -r l; do
        [[ $l == "$label" ]] && return 0
    done < <(token_labels)
    return 1
}

[[ $# -eq 1 && -n $1 ]] || usage
case $1 in -h | --help) usage ;; esac

label=${HSMCA_TOKEN_LABEL:-hsmca}
[[ ${#label} -ge 1 && ${#label} -le 32 ]] || die "HSMCA_TOKEN_LABEL must be 1 to 32 characters"
[[ $label != *[[:cntrl:]]* ]] || die "HSMCA_TOKEN_LABEL must not contain control characters"

# --- prerequisites --------------------------------------------------------
missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
    command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util still missing after installing softhsm2"
    command -v script >/dev/null 2>&1 || die "script(1) still missing after installing bsdutils"
fi

module=/usr/lib/softhsm/libsofthsm2.so
if [[ ! -e $module ]]; then
    module=$(find /usr/lib -name libsofthsm2.so -print -quit 2>/dev/null || true)
    [[ -n $module ]] || die "libsofthsm2.so not found under /usr/lib"
fi

# --- directories ----------------------------------------------------------
dir_arg=$1
[[ $dir_arg != *$'\n'* ]] || die "DIR must not contain a newline"
created_dir=no
if [[ ! -d $dir_arg ]]; then
    [[ ! -e $dir_arg ]] || die "$dir_arg exists and is not a directory"
    parent=$(dirname -- "$dir_arg")
    mkdir -p -- "$parent"
    if mkdir -m 0700 -- "$dir_arg" 2>/dev/null; then
        created_dir=yes
    fi
    [[ -d $dir_arg ]] || die "could not create $dir_arg"
fi
dir=$(cd -- "$dir_arg" && pwd -P)
for sub in tokens state; do
    if [[ ! -d $dir/$sub ]]; then
        mkdir -m 0700 -- "$dir/$sub"
    elif [[ -n $(find "$dir/$sub" -maxdepth 0 -perm /077) ]]; then
        chmod 0700 "$dir/$sub"
    fi
done

# --- SoftHSM2 configuration -----------------------------------------------
conf=$dir/softhsm2.conf
conf_status=$(
    write_if_changed "$conf" <<EOF
# SoftHSM2 configuration written by softhsm-setup/setup.sh.
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
)

# --- PINs and token -------------------------------------------------------
if token_exists; then
    [[ -f $dir/pin && -f $dir/so-pin ]] ||
        die "token '$label' already exists in $dir/tokens but $dir/pin or $dir/so-pin is missing; remove $dir/tokens to start over"
fi
pin_status=$(make_pin "$dir/pin")
so_pin_status=$(make_pin "$dir/so-pin")

if token_exists; then
    token_status=kept
else
    # softhsm2-util reads PINs only from a terminal (it fails with "Could not
    # get SO PIN" when stdin is not a tty), so run it on a pseudo-terminal
    # made by script(1) and feed the PINs (SO PIN twice, user PIN twice)
    # through it. printf and $(<file) are bash builtins, so the PINs are on
    # no process's argv; "-E never" turns off echo on the pseudo-terminal so
    # they do not appear in the captured output either. The label reaches
    # the inner shell through the environment, so it needs no quoting.
    so_pin=$(<"$dir/so-pin")
    user_pin=$(<"$dir/pin")
    # shellcheck disable=SC2016 # expanded by the inner shell, not here
    init_cmd='exec softhsm2-util --init-token --free --label "$HSMCA_SETUP_LABEL"'
    if ! init_out=$(
        printf '%s\n%s\n%s\n%s\n' "$so_pin" "$so_pin" "$user_pin" "$user_pin" |
            SOFTHSM2_CONF=$conf HSMCA_SETUP_LABEL=$label SHELL=/bin/sh \
                script -q -e -E never \
                -c "$init_cmd" \
                /dev/null 2>&1
    ); then
        printf '%s\n' "$init_out" | tr -d '\r' >&2
        die "softhsm2-util --init-token failed"
    fi
    unset so_pin user_pin
    token_exists || {
        printf '%s\n' "$init_out" | tr -d '\r' >&2
        die "token '$label' not found after softhsm2-util --init-token"
    }
    token_status=created
fi

# --- hsmca configuration --------------------------------------------------
toml=$dir/hsmca.toml
if [[ -e $toml ]]; then
    toml_status=kept
else
    tmp=$(mktemp "$toml.tmp.XXXXXX")
    cat >"$tmp" <<EOF
# Development configuration written by softhsm-setup/setup.sh.
[server]
# Unix socket the gRPC API listens on.
socket = $(toml_str "$dir/hsmca.sock")
# Permission bits given to the socket (octal).
socket_mode = "0660"

[token]
# PKCS#11 module to load (SoftHSM2).
module = $(toml_str "$module")
# Label of the token holding the CA key.
token_label = $(toml_str "$label")
# CKA_LABEL of the CA key pair on the token.
key_label = "hsmca-ca"
# CKA_ID of the CA key pair (hex).
key_id = "01"
# File holding the token's user PIN.
pin_file = $(toml_str "$dir/pin")
# Number of PKCS#11 sessions to keep open.
sessions = 2

[ca]
# Algorithm of the CA key that "hsmca init" generates (ECDSA P-256).
key_type = "p256"
# Subject distinguished name of the CA certificate.
subject = "CN=hsmca development CA,O=hsmca"
# Where the CA certificate (PEM) is written and read.
certificate = $(toml_str "$dir/ca.pem")
# CA certificate chain (PEM) returned along with issued certificates.
chain = $(toml_str "$dir/ca-chain.pem")

[state]
# Directory where the daemon keeps its state.
dir = $(toml_str "$dir/state")

[log]
# Log level: error, warn, info, debug or trace.
level = "info"

# Who may have which certificates (default deny; see the README, "Policy").
# Development: every local user may have any client or server certificate,
# and nobody is an administrator. Replace before production.
[[policy.rules]]
name = "development"
everyone = true
profiles = ["client", "server"]
common_names = ["**"]
dns = ["**"]
uris = ["**"]
ips = ["**"]
allow_wildcards = true

# An administrator may delete certificate requests, see everyone's records
# and have intermediates (within the names its rule allows):
# [[policy.rules]]
# name = "admins"
# uids = [0]
# admin = true
# profiles = ["client", "server", "intermediate"]
# dns = ["*.svc.example"]

# The SPIFFE Workload API on a second socket (see the README, "SPIFFE
# workload identities"): callers are identified by the kernel, and every
# local user gets spiffe://hsmca.test/user/<name>, on a P-256 key, for 1 h.
[workload]
socket = $(toml_str "$dir/workload.sock")
socket_mode = "0666"
trust_domain = "hsmca.test"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/user/{user}"
key_type = "p256"
ttl = "1h"
EOF
    chmod 0644 "$tmp"
    # mv -n: never replace a file that appeared in the meantime.
    mv -n "$tmp" "$toml"
    rm -f "$tmp"
    toml_status=created
fi

# --- summary --------------------------------------------------------------
dir_status=kept
[[ $created_dir == no ]] || dir_status=created
cat <<EOF
SoftHSM2 development token in $dir:
  directory      $dir ($dir_status)
  softhsm2.conf  $conf ($conf_status)
  token          '$label' in $dir/tokens ($token_status)
  user PIN       $dir/pin ($pin_status)
  SO PIN         $dir/so-pin ($so_pin_status)
  hsmca config   $toml ($toml_status)
  state          $dir/state
  PKCS#11 module $module

To use the token, run:
  export SOFTHSM2_CONF=$(printf '%q' "$conf")
EOF
