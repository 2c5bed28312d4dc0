#!/bin/sh
# Runs inside the image's chroot after its packages are installed (build.sh copies it in).
# Creates the desktop user and turns the services on. Must be safe to run twice.
set -eu

# --- the desktop user: uid 1000 (units refer to /run/user/1000), passwordless sudo, no password login
if ! id user >/dev/null 2>&1; then
    useradd --create-home --uid 1000 --user-group --shell /bin/bash \
        --groups sudo,audio,video --comment "Desktop user" user
fi
passwd --lock user >/dev/null
home=/home/user
install -d -o user -g user "$home/Desktop" "$home/Downloads"
cat > "$home/.config/user-dirs.dirs" <<'DIRS'
XDG_DESKTOP_DIR="$HOME/Desktop"
XDG_DOWNLOAD_DIR="$HOME/Downloads"
DIRS
# Launchers on the desktop (pcmanfm draws them as icons).
for app in lxterminal pcmanfm firefox-esr; do
    if [ -f "/usr/share/applications/$app.desktop" ]; then
        install -m 0755 -o user -g user "/usr/share/applications/$app.desktop" "$home/Desktop/$app.desktop"
    fi
done
chown -R user:user "$home"
# Keep the user's systemd instance (session D-Bus, PulseAudio) running from boot, without a login.
mkdir -p /var/lib/systemd/linger
touch /var/lib/systemd/linger/user

# --- locale and time
echo 'LANG=C.UTF-8' > /etc/default/locale
ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime
echo 'Etc/UTC' > /etc/timezone

# --- services
systemctl set-default graphical.target
systemctl enable deskd-display.service deskd-session.service deskd-agent.service \
    deskd-hostname.service deskd-selftest.service systemd-networkd.service \
    deskd-restore.socket deskd-growfs.socket
# Nothing to wait for or to ask: no network at boot is normal, and nobody answers a first-boot prompt.
systemctl mask systemd-networkd-wait-online.service systemd-firstboot.service
# Periodic maintenance that only slows a small VM down.
systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer 2>/dev/null || true
# No virtual consoles: the VM has a serial console only.
systemctl mask getty@tty1.service

# --- each computer gets its own machine id on first boot
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

