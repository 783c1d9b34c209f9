#!/usr/bin/env bash
# Credentials for the wgprobe MQTT broker: the first run makes a private CA and the broker's TLS certificate, every
# run adds one client (an agent, or with --aggregator an aggregator) to the broker's password file and prints the
# [mqtt] table for that client's config. Keep DIR on the machine that administers the broker: it holds the CA key.
#
#   deploy/new-agent.sh --dir pki --broker broker.example.net se-got      # first run: CA + server cert + agent
#   deploy/new-agent.sh --dir pki de-fra                                   # later: one more agent
#   deploy/new-agent.sh --dir pki --aggregator agg-1                       # an aggregator (see deploy/mosquitto/acl)
#
# Writes (mode 0600 for secrets):
#   DIR/ca.pem, DIR/ca.key               the CA (ca.key never leaves DIR)
#   DIR/server.pem, DIR/server.key       the broker's certificate, for HOST (and every --san NAME)
#   DIR/passwd                           the broker's password file (mosquitto's PBKDF2 hashes, no clear text)
#   DIR/clients/NAME/mqtt.password       the client's password, for its password_file
#   DIR/clients/NAME/ca.pem              the CA, for its ca_file
# Then install DIR/ca.pem, server.pem, server.key and passwd (and deploy/mosquitto/acl) on the broker under
# /etc/mosquitto/wgprobe/ and reload it (systemctl reload mosquitto, or SIGHUP): mosquitto rereads the password file
# on SIGHUP. The script prints the commands: mosquitto drops to the user `mosquitto` and reads its key and password
# file as that user, so they go root:mosquitto 0640 (the 0600 copies in DIR it could not read).
set -euo pipefail

usage() {
  echo "usage: $0 [--dir DIR] [--broker HOST[:PORT]] [--san NAME]... [--days N] [--aggregator] NAME" >&2
  exit 2
}

dir=pki
broker=""
sans=()
days=825
role=agent
name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=${2:?}; shift 2 ;;
    --broker) broker=${2:?}; shift 2 ;;
    --san) sans+=("${2:?}"); shift 2 ;;
    --days) days=${2:?}; shift 2 ;;
    --aggregator) role=aggregator; shift ;;
    -h|--help) usage ;;
    -*) echo "new-agent: unknown option $1" >&2; usage ;;
    *) [ -z "$name" ] || usage; name=$1; shift ;;
  esac
done
[ -n "$name" ] || usage
# The agent-name alphabet of wgprobe's config: no MQTT wildcard (+ #), no level separator (/), no ':' (passwd).
if ! [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]]; then
  echo "new-agent: name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit" >&2
  exit 2
fi
for tool in openssl mosquitto_passwd; do
  command -v "$tool" >/dev/null || { echo "new-agent: $tool is needed (Debian: apt-get install openssl mosquitto)" >&2; exit 2; }
done

umask 077
mkdir -p "$dir/clients"

if [ -n "$broker" ]; then
  echo "$broker" >"$dir/broker"
elif [ -f "$dir/broker" ]; then
  broker=$(cat "$dir/broker")
else
  echo "new-agent: first run in $dir: say where the broker is, --broker HOST[:PORT]" >&2
  exit 2
fi
if [[ "$broker" =~ ^\[([0-9A-Fa-f:.]+)\](:([0-9]+))?$ || "$broker" =~ ^([A-Za-z0-9.-]+)(:([0-9]+))?$ ]]; then
  host=${BASH_REMATCH[1]}
  port=${BASH_REMATCH[3]:-8883}
else
  echo "new-agent: --broker takes HOST, HOST:PORT or [IPV6]:PORT" >&2
  exit 2
fi

san_entry() {
  if [[ "$1" =~ ^[0-9.]+$ || "$1" == *:* ]]; then echo "IP:$1"; else echo "DNS:$1"; fi
}

if [ ! -f "$dir/ca.pem" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 -subj "/CN=wgprobe MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.pem"
  chmod 0644 "$dir/ca.pem"
  echo "new-agent: made the CA in $dir/ca.pem" >&2
fi

if [ ! -f "$dir/server.pem" ]; then
  alt="subjectAltName=$(san_entry "$host")"
  for extra in "${sans[@]}"; do alt+=",$(san_entry "$extra")"; done
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/server.key" 2>/dev/null
  openssl req -new -key "$dir/server.key" -subj "/CN=$host" -out "$dir/server.csr"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -sha256 \
    -days "$days" -out "$dir/server.pem" 2>/dev/null \
    -extfile <(printf '%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$alt")
  rm -f "$dir/server.csr"
  chmod 0644 "$dir/server.pem"
  echo "new-agent: made the broker's certificate for $host in $dir/server.pem" >&2
fi

touch "$dir/passwd"
if cut -d: -f1 "$dir/passwd" | grep -qxF -- "$name"; then
  echo "new-agent: $name already has credentials in $dir/passwd (agents and aggregators share one name space)" >&2
  exit 1
fi

client="$dir/clients/$name"
mkdir -p "$client"
password=$(openssl rand -hex 32)
printf '%s\n' "$password" >"$client/mqtt.password"
cp "$dir/ca.pem" "$client/ca.pem"
# The password goes to mosquitto_passwd through a 0600 file, never on a command line (ps would show it).
entry=$(mktemp "$dir/.entry.XXXXXX")
trap 'rm -f "$entry"' EXIT
printf '%s:%s\n' "$name" "$password" >"$entry"
mosquitto_passwd -U "$entry"
cat "$entry" >>"$dir/passwd"
echo "new-agent: added $role $name to $dir/passwd; install it on the broker and reload mosquitto" >&2
# Absolute and shell-quoted, so the commands work as pasted from wherever.
abs=$(cd "$dir" && pwd)
q() { printf '%q' "$1"; }
secret_files="$(q "$abs/passwd") $(q "$abs/server.key")"
public_files="$(q "$abs/ca.pem") $(q "$abs/server.pem") $(q "$(cd "$(dirname "$0")" && pwd)/mosquitto/acl")"
cat >&2 <<EOF
new-agent: on the broker, as root (mosquitto reads its key and password file as the user mosquitto):
  install -d -o root -g mosquitto -m 0750 /etc/mosquitto/wgprobe
  install -o root -g mosquitto -m 0640 $secret_files /etc/mosquitto/wgprobe/
  install -o root -g mosquitto -m 0644 $public_files /etc/mosquitto/wgprobe/
  systemctl reload mosquitto
EOF
if [ "$role" = aggregator ]; then
  echo "new-agent: the broker's ACL needs a 'user $name' block with the aggregator's topics (deploy/mosquitto/acl)" >&2
fi

url_host=$host
if [[ "$host" == *:* ]]; then url_host="[$host]"; fi
cat <<EOF
# $role $name: copy $client/mqtt.password and $client/ca.pem beside its config (mode 0600 for the password)
[mqtt]
url = "mqtts://$url_host:$port"
username = "$name"
password_file = "mqtt.password"
ca_file = "ca.pem"
client_id = "wgprobe-$name"
EOF
