/*
 * deskd-test-guest: the guest half of the VMM's rig tests, run inside the test initrd.
 *
 *   deskd-test-guest listen PORT        accept one vsock connection on PORT, echo one message back
 *   deskd-test-guest connect PORT MSG   connect to the host (CID 2) on PORT, send MSG, print reply
 *   deskd-test-guest wait-power-button  block until an input device reports KEY_POWER pressed
 *
 * Prints one DESKD-* line per result on stdout (the serial console); exits non-zero on failure.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what) {
    printf("DESKD-FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    return 1;
}

static int cmd_listen(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("bind");
    if (listen(s, 1) < 0) return fail("listen");
    printf("DESKD-VSOCK-LISTENING %u\n", port);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0) return fail("accept");
    char buf[256];
    ssize_t n = read(c, buf, sizeof buf - 1);
    if (n <= 0) return fail("read");
    if (write(c, buf, n) != n) return fail("write");
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    printf("DESKD-VSOCK-ECHOED %s\n", buf);
    fflush(stdout);
    close(c);
    close(s);
    return 0;
}

static int cmd_connect(unsigned port, const char *msg) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");
    size_t len = strlen(msg);
    if (write(s, msg, len) != (ssize_t)len || write(s, "\n", 1) != 1) return fail("write");
    char buf[256];
    ssize_t n = read(s, buf, sizeof buf - 1);
    if (n <= 0) return fail("read reply");
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    printf("DESKD-VSOCK-REPLY %s\n", buf);
    fflush(stdout);
    close(s);
    return 0;
}

static int cmd_wait_power_button(void) {
    struct pollfd fds[32];
    int n = 0;
    DIR *d = opendir("/dev/input");
    if (!d) return fail("opendir /dev/input");
    struct dirent *e;
    while ((e = readdir(d)) && n < 32) {
        if (strncmp(e->d_name, "event", 5) != 0) continue;
        char path[300];
        snprintf(path, sizeof path, "/dev/input/%s", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) fds[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    closedir(d);
    if (n == 0) {
        errno = ENODEV;
        return fail("no input devices");
    }
    printf("DESKD-WAITING-POWER-BUTTON devices=%d\n", n);
    fflush(stdout);
    for (;;) {
        if (poll(fds, n, -1) < 0) {
            if (errno == EINTR) continue;
            return fail("poll");
        }
        for (int i = 0; i < n; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            struct input_event ev;
            if (read(fds[i].fd, &ev, sizeof ev) != sizeof ev) continue;
            if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1) {
                printf("DESKD-POWER-BUTTON\n");
                fflush(stdout);
                return 0;
            }
        }
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "listen") == 0) return cmd_listen(atoi(argv[2]));
    if (argc == 4 && strcmp(argv[1], "connect") == 0) return cmd_connect(atoi(argv[2]), argv[3]);
    if (argc == 2 && strcmp(argv[1], "wait-power-button") == 0) return cmd_wait_power_button();
    fprintf(stderr, "usage: %s listen PORT | connect PORT MSG | wait-power-button\n", argv[0]);
    return 2;
}
