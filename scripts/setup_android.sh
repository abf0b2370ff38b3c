#!/usr/bin/env bash
# Fetches what the Android demo's CI check needs into ~/.m2 (Maven Central), so that
# tests/test_android_demo.py can build offline (`mvn -o`): the Kotlin compiler and Maven plugins,
# TFLite's AARs, ONNX Runtime's Java API (desktop build, linux natives), fbjni, soloader's
# nativeloader, Robolectric's android-all (~140 MB) and JUnit. Idempotent: does nothing when an
# offline build already succeeds. Installs maven (and a JDK) with apt-get when missing and root.
#
#   scripts/setup_android.sh                  # what CI needs
#   DCL_REAL_AARS=1 scripts/setup_android.sh  # also the app's own ExecuTorch and ONNX Runtime training
#                                             # AARs (-Preal-aars), where Maven Central serves them
set -euo pipefail
cd "$(dirname "$0")/.."
POM=android_demo/pom.xml
PROFILE=()
GOAL=test
if [ "${DCL_REAL_AARS:-0}" = "1" ]; then PROFILE=(-Preal-aars); GOAL=test-compile; fi

if ! command -v mvn >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup_android: installing maven (apt-get)"
        apt-get install -y -q maven openjdk-17-jdk-headless >/dev/null
    else
        echo "setup_android: mvn not found; install Maven 3.8+ and a JDK 17, then re-run" >&2
        exit 1
    fi
fi

# A stamp inside the local repository, keyed by the poms and the profile, says an offline build
# succeeded with what ~/.m2 holds (it goes when ~/.m2 goes); without it, an offline build is tried
# (half a minute) and, if it fails, the dependencies are fetched.
REPO="${MAVEN_REPO:-$HOME/.m2/repository}"
KEY=$(cat "$POM" android_demo/jvm/*/pom.xml | sha256sum | cut -c1-16)
STAMP="$REPO/.dcl-android-demo-${KEY}${PROFILE[*]:+-real-aars}"
if [ -f "$STAMP" ]; then
    echo "setup_android: Maven dependencies already in ~/.m2"
    exit 0
fi
# the JVM tests skip without a bundle (-Ddcl.bundle), so this build needs no dcl run
if mvn -q -o -B -f "$POM" "${PROFILE[@]}" "$GOAL" >/dev/null 2>&1; then
    touch "$STAMP"
    echo "setup_android: Maven dependencies already in ~/.m2"
    exit 0
fi
echo "setup_android: fetching Maven dependencies into ~/.m2 (once; ~250 MB)"
mvn -q -B -f "$POM" "${PROFILE[@]}" "$GOAL"
mvn -q -o -B -f "$POM" "${PROFILE[@]}" "$GOAL"  # proves the offline build works
touch "$STAMP"
echo "setup_android: done"
