#!/usr/bin/env bash
# Build the hsmca Debian package from the dev build, check it with lintian,
# install it on this machine with dpkg, check what it installed, then remove
# and purge it. Part of scripts/test.sh; needs root (or sudo) and changes
# this machine: it installs and purges the package, and leaves the system
# user hsmca behind (Debian packages never remove their users).
#
# Usage: scripts/package-test.sh
#
# systemd is not running here (no PID 1 manager), so starting the units is
# not tested. What is: `systemd-analyze verify` of the installed units;
# their start conditions, evaluated by `systemd-analyze condition` and by
# running the ExecCondition= command as the unit's user; and every file the
# maintainer scripts make (user, directories, unit symlinks).
set -euo pipefail

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

step() {
    printf '\n==> %s\n' "$*" >&2
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# check DESCRIPTION COMMAND...: runs COMMAND; on failure prints what it said
# and stops. Later checks depend on earlier ones.
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        printf '  ✓ %s\n' "$what" >&2
    else
        printf '  ✗ %s\n' "$what" >&2
        [[ -z $out ]] || printf '%s\n' "$out" | sed 's/^/      /' >&2
        die "package test failed: $what"
    fi
}

# mode_owner PATH: "MODE USER:GROUP", e.g. "644 root:root".
mode_owner() {
    stat -c '%a %U:%G' -- "$1"
}

expect_mode() {
    local path=$1 want=$2 got
    got=$(mode_owner "$path") || return 1
    [[ $got == "$want" ]] || {
        echo "$path is $got, expected $want"
        return 1
    }
}

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$repo"

for tool in lintian dpkg-deb systemd-analyze man; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/test.sh installs it)"
done

step "building the package (scripts/package.sh --profile dev --fast)"
started=$SECONDS
deb=$(scripts/package.sh --profile dev --fast | tail -n 1)
[[ -f $deb ]] || die "scripts/package.sh did not make a package"
printf '%s: %s, %s bytes, built in %ss\n' "$prog" "$deb" "$(stat -c %s "$deb")" "$((SECONDS - started))" >&2

step "package metadata"
dpkg-deb --info "$deb" >&2
depends=$(dpkg-deb --field "$deb" Depends)
check "Depends are the binary's shared libraries only: $depends" \
    bash -c '[[ ! $1 =~ softhsm|opensc|systemd|openssl ]] && [[ $1 =~ libc6 ]]' _ "$depends"
check "Recommends: softhsm2, opensc" \
    test "$(dpkg-deb --field "$deb" Recommends)" = "softhsm2, opensc"
check "/etc/hsmca/hsmca.toml is a conffile" \
    bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles | grep -qx /etc/hsmca/hsmca.toml' _ "$deb"

step "lintian (errors and warnings fail; overrides: packaging/deb/lintian-overrides)"
# Shown in full, overridden tags and their reasons included; then the
# verdict (with --show-overrides lintian counts overridden tags too).
lintian --info --show-overrides "$deb" >&2 || true
check "lintian: no errors, and no warnings that are not overridden" \
    lintian --fail-on error,warning "$deb"

step "dpkg -i"
if dpkg-query -W -f='${Status}' hsmca 2>/dev/null | grep -q 'installed\|config-files'; then
    as_root dpkg --purge hsmca >&2
fi
install_out=$(as_root dpkg -i "$deb" 2>&1) || {
    printf '%s\n' "$install_out" >&2
    die "dpkg -i failed"
}
printf '%s\n' "$install_out" >&2
check "postinst says what to do when hsmca is not set up" \
    grep -q 'not set up yet: there is no CA certificate /var/lib/hsmca/ca.pem' <<<"$install_out"

step "installed files: owner and mode"
while IFS= read -r path; do
    [[ -e $path || -L $path ]] || continue
    case $path in
        /usr/bin/hsmca) want='755 root:root' ;;
        /etc/hsmca) want='750 root:hsmca' ;; # tmpfiles.d, applied by postinst
        *) if [[ -d $path ]]; then want='755 root:root'; else want='644 root:root'; fi ;;
    esac
    check "$path $want" expect_mode "$path" "$want"
done < <(dpkg -L hsmca | grep -v '^/\.$')
for f in /usr/bin/hsmca /usr/lib/systemd/system/hsmca.service /usr/lib/systemd/system/hsmca.socket \
    /usr/lib/sysusers.d/hsmca.conf /usr/lib/tmpfiles.d/hsmca.conf /etc/hsmca/hsmca.toml \
    /usr/share/man/man1/hsmca.1.gz /usr/share/man/man1/hsmca-config-check.1.gz \
    /usr/share/bash-completion/completions/hsmca /usr/share/zsh/vendor-completions/_hsmca \
    /usr/share/fish/vendor_completions.d/hsmca.fish /usr/share/doc/hsmca/README.md.gz \
    /usr/share/doc/hsmca/BENCHMARKS.md.gz /usr/share/doc/hsmca/copyright \
    /usr/share/doc/hsmca/changelog.Debian.gz /usr/share/doc/hsmca/examples/hsmca.example.toml \
    /usr/share/doc/hsmca/examples/prometheus/hsmca.rules.yml /usr/share/doc/hsmca/examples/grafana/hsmca.json; do
    check "ships $f" dpkg -S "$f"
done
check "sysusers.d made user hsmca (system uid, home /var/lib/hsmca, no login)" bash -c '
    IFS=: read -r name _ uid _ _ home shell < <(getent passwd hsmca)
    [[ $name == hsmca && $uid -lt 1000 && $home == /var/lib/hsmca && $shell == /usr/sbin/nologin ]]'
check "and group hsmca" getent group hsmca
check "tmpfiles.d made /run/hsmca hsmca:hsmca 0750" expect_mode /run/hsmca '750 hsmca:hsmca'
check "the conffile has no PIN" bash -c '! grep -q "^pin_file" /etc/hsmca/hsmca.toml'
check "hsmca.service and hsmca.socket are enabled (unit symlinks)" bash -c '
    [[ -L /etc/systemd/system/multi-user.target.wants/hsmca.service &&
       -L /etc/systemd/system/sockets.target.wants/hsmca.socket ]]'

step "the installed units"
check "systemd-analyze verify hsmca.service hsmca.socket prints nothing" bash -c '
    out=$(systemd-analyze verify /usr/lib/systemd/system/hsmca.service /usr/lib/systemd/system/hsmca.socket 2>&1)
    printf "%s" "$out"; [[ -z $out ]]'
# Not set up (no PIN file, no CA certificate): without systemd as PID 1 the
# units cannot be started here, so their two start conditions are checked
# one by one. Both skip the start rather than fail it, so there is no
# restart loop.
check "ConditionPathExists=/etc/hsmca/pin is not met (the start is skipped)" bash -c '
    ! systemd-analyze condition "ConditionPathExists=/etc/hsmca/pin"'
cond=$(sed -n 's/^ExecCondition=//p' /usr/lib/systemd/system/hsmca.service)
check "ExecCondition= is hsmca config check --setup" \
    test "$cond" = "/usr/bin/hsmca config check --config /etc/hsmca/hsmca.toml --setup"
# shellcheck disable=SC2086 # the command line as systemd splits it
check "ExecCondition= as user hsmca exits 1 (skip) with the next steps" bash -c '
    out=$(runuser -u hsmca -- $1 2>&1); rc=$?
    printf "%s\n" "$out"
    [[ $rc -eq 1 && $out == *"not set up yet"* && $out == *"hsmca init --config /etc/hsmca/hsmca.toml"* ]]' _ "$cond"

step "the installed binary, man page and completion"
commit=$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
version=$(/usr/bin/hsmca --version)
printf '%s\n' "$version" >&2
check "hsmca --version names the version and commit $commit" \
    test "$version" = "hsmca $(dpkg-deb --field "$deb" Version | sed 's/-[^-]*$//') (commit $commit)"
check "man -l renders hsmca(1)" bash -c '
    page=$(MANWIDTH=100 man -l -P cat /usr/share/man/man1/hsmca.1.gz 2>&1)
    [[ $page == *NAME*"hsmca - A certificate authority"* && $page == *"config"* ]]'
check "man -l renders hsmca-config-check(1) with its options" bash -c '
    page=$(MANWIDTH=100 man -l -P cat /usr/share/man/man1/hsmca-config-check.1.gz 2>&1)
    [[ $page == *"--setup"* && $page == *"--json"* ]]'
check "the bash completion loads and completes 'hsmca con' to config" bash -c '
    source /usr/share/bash-completion/completions/hsmca
    COMP_WORDS=(hsmca con); COMP_CWORD=1; COMP_LINE="hsmca con"; COMP_POINT=${#COMP_LINE}
    _hsmca hsmca con hsmca
    printf "%s\n" "${COMPREPLY[@]}" | grep -qx config'
check "the bash completion completes 'hsmca config check --j' to --json" bash -c '
    source /usr/share/bash-completion/completions/hsmca
    COMP_WORDS=(hsmca config check --j); COMP_CWORD=3
    _hsmca hsmca --j check
    printf "%s\n" "${COMPREPLY[@]}" | grep -qx -- --json'
check "the zsh and fish completions are for hsmca" bash -c '
    head -n 1 /usr/share/zsh/vendor-completions/_hsmca | grep -qx "#compdef hsmca" &&
    grep -q "^complete -c hsmca" /usr/share/fish/vendor_completions.d/hsmca.fish'

step "dpkg -r keeps the edited conffile, dpkg -P removes it"
as_root sh -c 'printf "\n# edited by the package test\n" >> /etc/hsmca/hsmca.toml'
as_root install -m 0600 /dev/null /etc/hsmca/pin
check "dpkg -r hsmca" as_root dpkg --remove hsmca
check "the binary and the units are gone" bash -c '
    [[ ! -e /usr/bin/hsmca && ! -e /usr/lib/systemd/system/hsmca.service ]]'
check "the edited conffile is kept" grep -qx '# edited by the package test' /etc/hsmca/hsmca.toml
check "the package is in state config-files" \
    test "$(dpkg-query -W -f='${db:Status-Abbrev}' hsmca)" = "rc "
check "dpkg -P hsmca" as_root dpkg --purge hsmca
check "the conffile, the PIN file and /etc/hsmca are gone" bash -c '[[ ! -e /etc/hsmca ]]'
check "the package is gone" bash -c '! dpkg-query -W -f="\${Status}" hsmca 2>/dev/null | grep -q installed'
check "the unit symlinks are gone" bash -c '
    [[ ! -e /etc/systemd/system/multi-user.target.wants/hsmca.service &&
       ! -e /etc/systemd/system/sockets.target.wants/hsmca.socket ]]'

step "the package test passed ($((SECONDS - started))s)"
