#!/bin/sh
# Gives a lab host what a freshly provisioned server has: an ordinary login user reached by an
# SSH key, who may escalate with sudo (without a password, or with one read from stdin).
# Usage: ssh-access.sh USER 'PUBLIC KEY' MODE   (MODE: nopasswd | password; stdin: the password)
# Prints one JSON line: {"changed": true|false, "host_key": "<ed25519 host public key>"}.
set -eu
user=$1 key=$2 mode=$3
changed=false

if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
  changed=true
fi
home=$(getent passwd "$user" | cut -d: -f6)

install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
if [ "$(cat "$home/.ssh/authorized_keys" 2>/dev/null || true)" != "$key" ]; then
  printf '%s\n' "$key" >"$home/.ssh/authorized_keys.tmp"
  chown "$user:$user" "$home/.ssh/authorized_keys.tmp"
  chmod 0600 "$home/.ssh/authorized_keys.tmp"
  mv "$home/.ssh/authorized_keys.tmp" "$home/.ssh/authorized_keys"
  changed=true
fi

if [ "$mode" = nopasswd ]; then
  rule="$user ALL=(ALL:ALL) NOPASSWD: ALL"
else
  rule="$user ALL=(ALL:ALL) ALL"
  password=$(cat)
  if [ -z "$password" ]; then
    echo "ssh-access.sh: mode password needs the password on stdin" >&2
    exit 2
  fi
  # Set only when it differs: the stored hash is its own salt (crypt(3), perl is essential).
  hash=$(getent shadow "$user" | cut -d: -f2)
  if [ "$(perl -e 'print crypt($ARGV[0], $ARGV[1]) // ""' "$password" "$hash")" != "$hash" ]; then
    printf '%s:%s\n' "$user" "$password" | chpasswd
    changed=true
  fi
fi
sudoers=/etc/sudoers.d/90-lab-$user
if [ "$(cat "$sudoers" 2>/dev/null || true)" != "$rule" ]; then
  printf '%s\n' "$rule" >"$sudoers.tmp"
  chmod 0440 "$sudoers.tmp"
  visudo -cqf "$sudoers.tmp"
  mv "$sudoers.tmp" "$sudoers"
  changed=true
fi

# Host keys are made by ssh.service at boot; make them now if the service has not started yet.
[ -s /etc/ssh/ssh_host_ed25519_key.pub ] || ssh-keygen -A >/dev/null
printf '{"changed": %s, "host_key": "%s"}\n' "$changed" \
  "$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)"
