#!/usr/bin/env bash
# What the test suite needs beyond the Python package: run once per machine (as root).
#   prometheus, promtool   - dashboards and alert rules are proven against a real Prometheus
#   chromium               - the live page is checked in headless Chromium
#   docker-compose         - validates deploy/compose.yaml without a Docker engine
#   Hardhat 2 (npm ci)     - the local Ethereum dev node, from deploy/hardhat/package-lock.json
#   Apache Kafka (mvn)     - the reference broker's jars into deploy/kafka/lib (Java 17+ and Maven needed)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
npm ci --prefix deploy/hardhat --no-audit --no-fund --loglevel=error
mvn -q -f deploy/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory=lib -DoverWriteIfNewer=true
