#!/usr/bin/env bash
# Install what the local service stack (`velo services up`) runs on, on Debian 12:
# PostgreSQL 15 and Redis 7 from Debian, Java 17 and Maven when missing, then the Kafka jars from
# Maven Central into $VELO_DATA_DIR/kafka/libs. Idempotent: with everything present it only
# checks (no apt-get, no Maven), so `make test` can call it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
DATA_DIR="${VELO_DATA_DIR:-$PWD/.data}"
KAFKA_LIBS="$DATA_DIR/kafka/libs"
KAFKA_POM="scripts/kafka/pom.xml"

log() { printf 'install-system-deps: %s\n' "$*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

have_java17() {  # a Java 17+ on PATH or under /usr/lib/jvm (where velo also looks)
    local java version major
    for java in "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
        [ -x "$java" ] || continue
        version=$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9.]*\).*/\1/p' | head -n1)
        major=${version%%.*}
        [ "$major" = 1 ] && continue  # 1.8 and older
        [ -n "$major" ] && [ "$major" -ge 17 ] && return 0
    done
    return 1
}

# Undo a half-done step if anything fails: the policy-rc.d we add, a partial jar download.
policy_added=""
staging=""
cleanup() {
    [ -n "$staging" ] && rm -rf "$staging"
    [ -n "$policy_added" ] && as_root rm -f "$policy_added"
    return 0
}
trap cleanup EXIT

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo --preserve-env=DEBIAN_FRONTEND "$@"
    else
        log "need root to run: $*"
        exit 1
    fi
}

missing=()
for package in postgresql-15 redis-server; do
    installed "$package" || missing+=("$package")
done
have_java17 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting Debian's own PostgreSQL cluster and
    # Redis on 5432/6379: velo runs its own servers there.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy_added=/usr/sbin/policy-rc.d
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy_added && chmod 755 $policy_added"
    fi
    apt_install() { as_root apt-get install -y -q --no-install-recommends "${missing[@]}"; }
    # apt-get update only when there are no package lists yet, or when they are too old to install
    # from (the install fails); it is slow, and nothing is needed when all is installed.
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        as_root apt-get update -q
        apt_install
    elif ! apt_install; then
        as_root apt-get update -q
        apt_install
    fi
else
    log "system packages present"
fi

pom_hash=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
if [ "$(cat "$KAFKA_LIBS/.pom.sha256" 2>/dev/null)" = "$pom_hash" ]; then
    log "Kafka jars present in $KAFKA_LIBS"
else
    log "fetching Kafka jars into $KAFKA_LIBS"
    mkdir -p "$(dirname "$KAFKA_LIBS")"
    staging=$(mktemp -d "$KAFKA_LIBS.XXXXXX")
    mvn_log="$DATA_DIR/kafka/mvn.log"
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$staging" >"$mvn_log" 2>&1; then
        tail -n 30 "$mvn_log"
        log "Maven could not fetch the Kafka jars (full output: $mvn_log)"
        exit 1
    fi
    echo "$pom_hash" >"$staging/.pom.sha256"
    rm -rf "$KAFKA_LIBS"
    mv "$staging" "$KAFKA_LIBS"
    staging=""
    log "$(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars fetched"
fi
