#!/usr/bin/env bash
# Creates the credentials of a medge site broker: a CA, the broker's server certificate, and
# for every device/user a client certificate plus a password (hashed into the broker's
# password file). Re-running it with new names adds them and keeps everything that exists.
#
#   make-credentials.sh [-o DIR] [-s SERVER_NAME]... [-d DEVICE]... [-u USER]... [-b SITE]... [-D DAYS]
#
#   -o DIR     output folder (default ./medge-credentials); on the broker use /etc/mosquitto/medge
#   -s NAME    DNS name or IP address the devices use to reach the broker (repeatable; the first
#              one goes into the rendered configs). Default: localhost and 127.0.0.1
#   -d DEVICE  an edge device; its MQTT username is DEVICE and it may publish only under
#              medge/<site>/DEVICE/ (pattern ACL)
#   -u USER    a role account from the ACL file: dashboard, fleet (the only account that may command devices)
#   -b SITE    (central broker) credentials and ACL block for the bridge of site SITE, and a
#              rendered bridge.conf to install on that site's broker
#   -D DAYS    validity of server and client certificates (default 825)
#
# Output (keys 0600; the CA key never leaves this folder: keep it offline):
#   ca.crt ca.key server.crt server.key passwd acl
#   clients/<name>/{ca.crt,client.crt,client.key,password,edge.env,mqtt.toml}  -> the device's /etc/medge/mqtt/
#   clients/bridge-<site>/bridge.conf                                           -> the site's /etc/mosquitto/conf.d/
#
# Needs openssl and mosquitto_passwd (Debian: apt install openssl mosquitto).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out=./medge-credentials
days=825
ca_days=3650
servers=()
clients=()
bridges=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
die() { echo "make-credentials.sh: $*" >&2; exit 1; }

valid_name() {
    # Names become topic levels and certificate CNs: no MQTT wildcards, separators or spaces.
    [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "invalid name '$1': use letters, digits, '.', '_', '-' (max 64)"
}

while getopts "o:s:d:u:b:D:h" opt; do
    case "$opt" in
        o) out="$OPTARG" ;;
        s) servers+=("$OPTARG") ;;
        d) valid_name "$OPTARG"; clients+=("$OPTARG") ;;
        u) valid_name "$OPTARG"; clients+=("$OPTARG") ;;
        b) valid_name "$OPTARG"; bridges+=("$OPTARG"); clients+=("bridge-$OPTARG") ;;
        D) [[ "$OPTARG" =~ ^[0-9]+$ ]] || die "-D needs a number of days"; days="$OPTARG" ;;
        h) usage 0 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || die "unexpected argument '$1' (see -h)"
command -v openssl >/dev/null || die "openssl not found (apt install openssl)"
passwd_tool="$(command -v mosquitto_passwd || true)"
[ -n "$passwd_tool" ] || die "mosquitto_passwd not found (apt install mosquitto)"
[ ${#servers[@]} -gt 0 ] || servers=(localhost 127.0.0.1)

umask 077
mkdir -p "$out/clients"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

sign() {  # sign CSR $1 with the CA into cert $2 using extensions file $3
    openssl x509 -req -in "$1" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -CAserial "$out/ca.srl" -days "$days" -sha256 -extfile "$3" -out "$2" 2>/dev/null
}

if [ ! -f "$out/ca.key" ]; then
    new_key "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" -subj "/O=medge/CN=medge site CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
    echo "created CA            $out/ca.crt"
fi

if [ ! -f "$out/server.crt" ]; then
    san=()
    for name in "${servers[@]}"; do
        if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san+=("IP:$name"); else san+=("DNS:$name"); fi
    done
    new_key "$out/server.key"
    openssl req -new -key "$out/server.key" -subj "/O=medge/CN=${servers[0]}" -out "$work/server.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth"
        echo "subjectAltName=$(IFS=,; echo "${san[*]}")"
    } > "$work/server.ext"
    sign "$work/server.csr" "$out/server.crt" "$work/server.ext"
    echo "created server cert   $out/server.crt (${san[*]})"
fi

[ -f "$out/acl" ] || cp "$here/acl" "$out/acl"
if grep -q '^pattern write medge/+/%u/#' "$out/acl"; then
    # The ACL of earlier releases let a device write its own commands/ topic.
    echo "make-credentials.sh: warning: $out/acl lets devices write commands/#: replace its device lines with those of $here/acl" >&2
fi
touch "$out/passwd"
server_name="$(openssl x509 -in "$out/server.crt" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')"

for name in "${clients[@]}"; do
    dir="$out/clients/$name"
    if grep -q "^$name:" "$out/passwd"; then
        echo "kept existing         $name"
        continue
    fi
    mkdir -p "$dir"
    new_key "$dir/client.key"
    openssl req -new -key "$dir/client.key" -subj "/O=medge/CN=$name" -out "$work/$name.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" > "$work/client.ext"
    sign "$work/$name.csr" "$dir/client.crt" "$work/client.ext"
    cp "$out/ca.crt" "$dir/ca.crt"
    password="$(openssl rand -base64 48 | tr -dc 'A-Za-z0-9' | cut -c1-32)"
    printf '%s\n' "$password" > "$dir/password"
    printf 'MEDGE_MQTT_PASSWORD=%s\n' "$password" > "$dir/edge.env"
    cat > "$dir/mqtt.toml" <<EOF
# [mqtt] section for /etc/medge/edge.toml on $name (the password comes from edge.env).
[mqtt]
broker = "mqtts://$server_name:8883"
username = "$name"
ca_file = "/etc/medge/mqtt/ca.crt"
cert_file = "/etc/medge/mqtt/client.crt"
key_file = "/etc/medge/mqtt/client.key"
EOF
    # Hash via a file, never via argv: command lines are visible to every local user.
    printf '%s:%s\n' "$name" "$password" > "$work/plain"
    "$passwd_tool" -U "$work/plain"
    cat "$work/plain" >> "$out/passwd"
    echo "created client        $name -> $dir"
done

for site in "${bridges[@]}"; do
    user="bridge-$site"
    if ! grep -q "^user $user\$" "$out/acl"; then
        cat >> "$out/acl" <<EOF

# Bridge of site $site: publishes that site's topics, receives that site's commands.
user $user
topic write medge/$site/#
topic read medge/$site/+/commands/#
EOF
    fi
    dir="$out/clients/$user"
    sed -e "s/site-a/$site/g" \
        -e "s/^address .*/address $server_name:8883/" \
        -e "s/^remote_password .*/remote_password $(cat "$dir/password")/" \
        "$here/bridge.conf" > "$dir/bridge.conf"
    echo "rendered bridge       $dir/bridge.conf"
done

# The broker drops root for the mosquitto user, which must read its key, passwords and ACL.
if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then
    chgrp mosquitto "$out" "$out/server.key" "$out/passwd" "$out/acl" "$out/ca.crt" "$out/server.crt"
    chmod 750 "$out"
    chmod 640 "$out/server.key" "$out/passwd" "$out/acl"
fi
chmod 644 "$out/ca.crt" "$out/server.crt"
