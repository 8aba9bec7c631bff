/* sdunit: a static test program for sdshim's unit features, run inside test
 * containers (tests/conftest.py compiles it with gcc -static into the rootfs).
 *
 *   sdunit notify FIELD=VALUE...  one datagram to $NOTIFY_SOCKET (as systemd-notify)
 *   sdunit env                    prints the variables systemd features set, one a line
 *   sdunit watchdog N             READY=1, then N keep-alives (WATCHDOG=1) every
 *                                   WATCHDOG_USEC/4 (N < 0: forever), then silence
 *   sdunit serve [READY|ONCE]     socket activation: checks LISTEN_PID/LISTEN_FDS as
 *                                   sd_listen_fds() does, answers every connection on
 *                                   fd 3 (stream) or datagram with one line; with READY,
 *                                   sends READY=1 first; with ONCE, exits 0 after one
 *   sdunit reload SIG             READY=1; on SIG: RELOADING=1, prints "reloaded N",
 *                                   READY=1
 * Every line it prints is flushed at once. Exit 0, or 1 with a message on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int notify(const char *msg) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) { fprintf(stderr, "sdunit: no NOTIFY_SOCKET\n"); return -1; }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("sdunit: socket"); return -1; }
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
    int r = sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, len);
    if (r < 0) perror("sdunit: sendto");
    close(fd);
    return r < 0 ? -1 : 0;
}

static const char *env_or(const char *key, const char *dflt) {
    const char *v = getenv(key);
    return v ? v : dflt;
}

static int cmd_env(void) {
    static const char *keys[] = { "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
        "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "CREDENTIALS_DIRECTORY", NULL };
    for (const char **k = keys; *k; k++)
        printf("%s=%s\n", *k, env_or(*k, "<unset>"));
    printf("PID=%d\n", (int)getpid());
    return 0;
}

static int cmd_watchdog(long n) {
    const char *usec_s = getenv("WATCHDOG_USEC"), *pid_s = getenv("WATCHDOG_PID");
    if (!usec_s) { fprintf(stderr, "sdunit: no WATCHDOG_USEC\n"); return 1; }
    /* sd_watchdog_enabled(): WATCHDOG_PID, if set, must be this process. */
    if (pid_s && atol(pid_s) != (long)getpid()) {
        fprintf(stderr, "sdunit: WATCHDOG_PID=%s is not this process (%d)\n", pid_s,
                (int)getpid());
        return 1;
    }
    unsigned long long usec = strtoull(usec_s, NULL, 10);
    printf("watchdog %llu\n", usec);
    fflush(stdout);
    if (notify("READY=1") < 0) return 1;
    for (long i = 0; n < 0 || i < n; i++) {
        struct timespec ts = { .tv_sec = usec / 4 / 1000000, .tv_nsec = usec / 4 % 1000000 * 1000 };
        nanosleep(&ts, NULL);
        if (notify("WATCHDOG=1") < 0) return 1;
    }
    printf("silent\n");
    fflush(stdout);
    for (;;) pause();
}

static int cmd_serve(int ready, int once) {
    const char *fds_s = getenv("LISTEN_FDS"), *pid_s = getenv("LISTEN_PID");
    /* What sd_listen_fds() checks. */
    if (!fds_s || !pid_s) { fprintf(stderr, "sdunit: LISTEN_FDS or LISTEN_PID unset\n"); return 1; }
    if (atol(pid_s) != (long)getpid()) {
        fprintf(stderr, "sdunit: LISTEN_PID=%s is not this process (%d)\n", pid_s, (int)getpid());
        return 1;
    }
    int n = atoi(fds_s);
    if (n < 1) { fprintf(stderr, "sdunit: LISTEN_FDS=%s\n", fds_s); return 1; }
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &tl) < 0) { perror("sdunit: fd 3"); return 1; }
    if (ready && notify("READY=1") < 0) return 1;
    printf("serving %d fds (%s)\n", n, env_or("LISTEN_FDNAMES", "<unset>"));
    fflush(stdout);
    char line[512];
    snprintf(line, sizeof line, "hello from pid %d, LISTEN_PID=%s LISTEN_FDS=%s LISTEN_FDNAMES=%s\n",
             (int)getpid(), pid_s, fds_s, env_or("LISTEN_FDNAMES", "<unset>"));
    for (;;) {
        if (type == SOCK_DGRAM) {
            char buf[512];
            struct sockaddr_storage from;
            socklen_t fl = sizeof from;
            ssize_t r = recvfrom(3, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (r < 0) { if (errno == EINTR) continue; perror("sdunit: recvfrom"); return 1; }
            sendto(3, line, strlen(line), 0, (struct sockaddr *)&from, fl);
            continue;
        }
        int c = accept4(3, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) { if (errno == EINTR) continue; perror("sdunit: accept"); return 1; }
        if (write(c, line, strlen(line)) < 0) perror("sdunit: write");
        close(c);
        if (once) return 0;
    }
}

static volatile sig_atomic_t reloads_asked;

static void on_reload(int sig) { (void)sig; reloads_asked++; }

static int cmd_reload(int sig) {
    struct sigaction sa = { .sa_handler = on_reload };
    sigaction(sig, &sa, NULL);
    if (notify("READY=1") < 0) return 1;
    printf("ready\n");
    fflush(stdout);
    int done = 0;
    for (;;) {
        while (done == reloads_asked) pause();
        done++;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        char msg[128];
        snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)now.tv_sec * 1000000ULL + now.tv_nsec / 1000);
        if (notify(msg) < 0) return 1;
        struct timespec ts = { 0, 300 * 1000000L };  /* a reload that takes a while */
        nanosleep(&ts, NULL);
        printf("reloaded %d\n", done);
        fflush(stdout);
        if (notify("READY=1") < 0) return 1;
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "notify")) {
        char msg[4096] = "";
        size_t n = 0;
        for (int i = 2; i < argc && n < sizeof msg; i++)
            n += snprintf(msg + n, sizeof msg - n, "%s%s", n ? "\n" : "", argv[i]);
        return notify(msg) < 0;
    }
    if (!strcmp(cmd, "env")) return cmd_env();
    if (!strcmp(cmd, "watchdog")) return cmd_watchdog(argc > 2 ? atol(argv[2]) : -1);
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc > 2 && !strcmp(argv[2], "READY"), argc > 2 && !strcmp(argv[2], "ONCE"));
    if (!strcmp(cmd, "reload")) return cmd_reload(argc > 2 ? atoi(argv[2]) : SIGHUP);
    fprintf(stderr, "usage: sdunit notify|env|watchdog N|serve [READY|ONCE]|reload SIGNUM\n");
    return 2;
}
