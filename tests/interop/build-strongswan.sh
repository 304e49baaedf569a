#!/usr/bin/env bash
# build-strongswan.sh - private strongSwan charon with the load-tester plugin.
#
# Debian 12 ships strongSwan 5.9.8 without the load-tester plugin. That plugin
# also provides a "fake kernel" (fake_kernel = yes): CHILD_SAs "install" without
# touching the kernel, so Quick Mode completes on host loopback even though this
# kernel has no ESP xfrm type. tests/interop/charon.py uses this build for
# kernel="fake".
#
#   build-strongswan.sh           build once, print PREFIX=<dir> (later: instant)
#   build-strongswan.sh --prefix  print PREFIX=<dir> only
#   build-strongswan.sh --clean   remove the build
#
# Source: Debian's own strongswan source package (the .orig tarball is hash-checked
# by apt against the signed Sources index), fetched through a throw-away apt
# configuration with deb-src twins of the machine's Debian entries; the system
# apt configuration is left alone. Build deps are apt-get installed when missing.
# Cache: ${IKECORE_INTEROP_CACHE:-$HOME/.cache/ikecore-interop}/strongswan-<ver>-lt
set -euo pipefail

VERSION=${IKECORE_STRONGSWAN_VERSION:-5.9.8}
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}   # CI may not set HOME
CACHE=${IKECORE_INTEROP_CACHE:-$HOME/.cache/ikecore-interop}
PREFIX=$CACHE/strongswan-$VERSION-lt
STAMP=$PREFIX/.ikecore-build-complete

say() { echo "build-strongswan: $*" >&2; }
fail() { say "error: $*"; exit 1; }

case ${1:-} in
    "") ;;
    --prefix) echo "PREFIX=$PREFIX"; exit 0 ;;
    --clean) rm -rf -- "$PREFIX"; echo "removed $PREFIX"; exit 0 ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2 ;;
esac

if [ -f "$STAMP" ] && [ -x "$PREFIX/libexec/ipsec/charon" ]; then
    echo "PREFIX=$PREFIX"
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "needs root (apt-get)"

deps=(build-essential pkg-config libgmp-dev libssl-dev bzip2 xz-utils)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

started=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ikecore-swanbuild.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
mkdir -p "$tmp/etc/sources.list.d" "$tmp/lists/partial" "$tmp/src"
: >"$tmp/etc/sources.list"

# deb-src twins of the Debian entries (deb822 files and the one-line format).
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -q 'debian-archive-keyring' "$f" || continue
    sed 's/^Types:.*$/Types: deb-src/' "$f" >"$tmp/etc/sources.list.d/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^[[:space:]]*deb[[:space:]]\(.*\)$/deb-src \1/p' /etc/apt/sources.list \
        >>"$tmp/etc/sources.list"
fi
apt_opts=(-o APT::Sandbox::User=root
          -o "Dir::Etc::SourceList=$tmp/etc/sources.list"
          -o "Dir::Etc::SourceParts=$tmp/etc/sources.list.d"
          -o "Dir::State::Lists=$tmp/lists")
say "reading the Debian source index"
apt-get "${apt_opts[@]}" update -qq >&2 || say "apt-get update reported errors; trying anyway"

# Every Debian revision of $VERSION carries the same upstream tarball.
cd "$tmp/src"
orig=
while read -r rev; do
    [[ $rev == "$VERSION"-* ]] || continue
    apt-get "${apt_opts[@]}" source --download-only "strongswan=$rev" >/dev/null 2>&1 || continue
    orig=$(ls strongswan_"$VERSION".orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -n1 || true)
    [ -n "$orig" ] && break
done < <(apt-cache "${apt_opts[@]}" showsrc strongswan 2>/dev/null \
         | sed -n 's/^Version: //p' | sort -Vru)
[ -n "$orig" ] || fail "no strongswan $VERSION source in the Debian archive"

say "building strongSwan $VERSION with load-tester into $PREFIX"
tar xf "$orig"
cd "strongswan-$VERSION"
./configure --prefix="$PREFIX" --sysconfdir="$PREFIX/etc" \
    --disable-defaults --enable-charon --enable-ikev1 --enable-ikev2 \
    --enable-swanctl --enable-vici --enable-socket-default --enable-kernel-netlink \
    --enable-nonce --enable-random --enable-openssl --enable-gmp --enable-aes \
    --enable-des --enable-sha1 --enable-sha2 --enable-md5 --enable-hmac --enable-kdf \
    --enable-pem --enable-pkcs1 --enable-pkcs8 --enable-x509 --enable-pubkey \
    --enable-constraints --enable-load-tester >"$tmp/configure.log" 2>&1 \
    || { tail -n 40 "$tmp/configure.log" >&2; fail "configure failed"; }
make -j"$(nproc)" >"$tmp/make.log" 2>&1 || { tail -n 40 "$tmp/make.log" >&2; fail "make failed"; }
rm -rf -- "$PREFIX"
make install >"$tmp/install.log" 2>&1 || { tail -n 40 "$tmp/install.log" >&2; fail "make install failed"; }
touch "$STAMP"
say "done in $(( $(date +%s) - started )) s"
echo "PREFIX=$PREFIX"
