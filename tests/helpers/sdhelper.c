/* A static helper for test containers (their rootfs is busybox only).
 *
 *   sdhelper notify LINE...      one sd_notify datagram to $NOTIFY_SOCKET, the lines
 *                                joined by newlines (e.g. READY=1 STATUS=up)
 *   sdhelper notify-fd LINE...   the same, with an fd (stdin) attached (SCM_RIGHTS)
 *   sdhelper notify-size N       a datagram of N bytes (STATUS=xxx...)
 *
 * Exit 0 when sent; 2 on bad usage; 1 (with a message) when it could not send.
 * Built by tests/conftest.py with `cc -static -O2`; never part of the package.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int notify(const char *msg, size_t len, int with_fd) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        fprintf(stderr, "sdhelper: NOTIFY_SOCKET is not set\n");
        return 1;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t plen = strlen(path);
    if (plen >= sizeof(addr.sun_path)) {
        fprintf(stderr, "sdhelper: NOTIFY_SOCKET too long\n");
        return 1;
    }
    memcpy(addr.sun_path, path, plen);
    if (path[0] == '@')
        addr.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("sdhelper: socket");
        return 1;
    }
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr mh = {.msg_name = &addr,
                        .msg_namelen = offsetof(struct sockaddr_un, sun_path) + plen,
                        .msg_iov = &iov, .msg_iovlen = 1};
    if (with_fd) {
        memset(&control, 0, sizeof(control));
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        int passed = 0;
        memcpy(CMSG_DATA(c), &passed, sizeof(int));
    }
    if (sendmsg(fd, &mh, 0) < 0) {
        perror("sdhelper: sendmsg");
        return 1;
    }
    close(fd);
    return 0;
}

static int joined(int argc, char **argv, int with_fd) {
    size_t len = 0;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *msg = calloc(1, len + 1);
    if (!msg)
        return 1;
    for (int i = 0; i < argc; i++) {
        strcat(msg, argv[i]);
        if (i + 1 < argc)
            strcat(msg, "\n");
    }
    return notify(msg, strlen(msg), with_fd);
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "notify") == 0)
        return joined(argc - 2, argv + 2, 0);
    if (argc >= 3 && strcmp(argv[1], "notify-fd") == 0)
        return joined(argc - 2, argv + 2, 1);
    if (argc == 3 && strcmp(argv[1], "notify-size") == 0) {
        size_t n = strtoul(argv[2], NULL, 10);
        char *msg = malloc(n + 1);
        if (!msg || n < 8)
            return 2;
        memset(msg, 'x', n);
        memcpy(msg, "STATUS=", 7);
        return notify(msg, n, 0);
    }
    fprintf(stderr, "usage: sdhelper notify|notify-fd LINE... | notify-size N\n");
    return 2;
}
