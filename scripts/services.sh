#!/usr/bin/env bash
# Start (or check) the services the tests talk to: PostgreSQL, MariaDB, Mosquitto, and the Slurm test cluster
# (and Chromium for the console's browser tests).
# Idempotent: a service already running is left alone. Installs Debian packages that are missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

need_pkgs=()
command -v pg_ctlcluster >/dev/null || need_pkgs+=(postgresql)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
# The web console's browser tests drive Debian's Chromium (never a browser downloaded by Playwright).
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium chromium-driver)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "services: installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done; return 1; }

if ! port_open 5432; then
  echo "services: starting PostgreSQL"
  ver="$(ls /etc/postgresql | sort -V | tail -1)"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  wait_port 5432
fi
# Tests connect as postgres over TCP without a password (trust on loopback, as on this machine kind).
if ! psql "postgresql://postgres@127.0.0.1:5432/postgres" -Atc "select 1" >/dev/null 2>&1; then
  hba="$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)"
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  runuser -u postgres -- psql -Atc "select pg_reload_conf()" >/dev/null
fi

if ! port_open 3306; then
  echo "services: starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port 3306
fi

if ! port_open 1883; then
  echo "services: starting Mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 1883
fi

if [ -x "$here/slurm-cluster.sh" ]; then
  "$here/slurm-cluster.sh" start
fi
echo "services: PostgreSQL :5432, MariaDB :3306, Mosquitto :1883 up"
