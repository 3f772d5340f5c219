#define _GNU_SOURCE 1
#include "coffer_runner.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAXIMUM_DESCRIPTORS 8

ssize_t coffer_send_descriptors(int socket, const void *bytes, size_t length, const int *descriptors, int count) {
    if (count < 0 || count > MAXIMUM_DESCRIPTORS) { errno = EINVAL; return -1; }
    union { char buffer[CMSG_SPACE(sizeof(int) * MAXIMUM_DESCRIPTORS)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1 };
    if (count > 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(header), descriptors, sizeof(int) * count);
    }
    ssize_t sent;
    do { sent = sendmsg(socket, &message, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t coffer_receive_descriptors(int socket, void *bytes, size_t length, int *descriptors, int capacity, int *count) {
    union { char buffer[CMSG_SPACE(sizeof(int) * MAXIMUM_DESCRIPTORS)]; struct cmsghdr align; } control;
    struct iovec vector = { .iov_base = bytes, .iov_len = length };
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof control.buffer };
    *count = 0;
    ssize_t received;
    do { received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC); } while (received < 0 && errno == EINTR);
    if (received < 0) return received;
    int excess = (message.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(header);
        for (int i = 0; i < n; i++) {
            if (*count < capacity) descriptors[(*count)++] = passed[i];
            else { close(passed[i]); excess = 1; }
        }
    }
    if (excess) {
        for (int i = 0; i < *count; i++) close(descriptors[i]);
        *count = 0;
        errno = EBADMSG;
        return -1;
    }
    return received;
}

/// Reads `count` bytes; the descriptors that come with the first piece go to `descriptors` (at most `capacity`),
/// their number in `*received`.
static int read_exactly(int socket, unsigned char *bytes, size_t count, int *descriptors, int capacity, int *received) {
    for (size_t filled = 0; filled < count;) {
        int passed = 0;
        ssize_t n = coffer_receive_descriptors(socket, bytes + filled, count - filled, descriptors, filled == 0 ? capacity : 0, &passed);
        if (n <= 0) return 0;
        if (filled == 0 && received) *received = passed;
        filled += (size_t)n;
    }
    return 1;
}

int coffer_frame_write(int socket, const unsigned char *body, size_t length, const int *descriptors, int count) {
    unsigned char *frame = malloc(length + 4);
    if (!frame) return -1;
    for (int i = 0; i < 4; i++) frame[i] = (unsigned char)(length >> (8 * i));
    memcpy(frame + 4, body, length);
    for (size_t offset = 0; offset < length + 4;) {
        ssize_t sent = coffer_send_descriptors(socket, frame + offset, length + 4 - offset, offset == 0 ? descriptors : NULL,
                                               offset == 0 ? count : 0);
        if (sent <= 0) {
            free(frame);
            return -1;
        }
        offset += (size_t)sent;
    }
    free(frame);
    return 0;
}

unsigned char *coffer_frame_read(int socket, size_t *length, int *descriptors, int capacity, int *received) {
    unsigned char head[4];
    *received = 0;
    if (!read_exactly(socket, head, 4, descriptors, capacity, received)) return NULL;
    uint32_t size = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
    if (size < 1 || size > COFFER_FRAME_LIMIT) return NULL;
    unsigned char *body = malloc(size);
    if (!body || !read_exactly(socket, body, size, NULL, 0, NULL)) {
        free(body);
        return NULL;
    }
    *length = size;
    return body;
}

int coffer_peer_credentials(int socket, uid_t *uid, pid_t *pid) {
    struct ucred credentials;
    socklen_t size = sizeof credentials;
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0) return -1;
    *uid = credentials.uid;
    *pid = credentials.pid;
    return 0;
}

int coffer_open_working_directory(void) { return open(".", O_PATH | O_DIRECTORY | O_CLOEXEC); }

int coffer_accept(int listener) { return accept4(listener, NULL, NULL, SOCK_CLOEXEC); }

short coffer_poll_read_hangup(void) { return POLLRDHUP; }

int coffer_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int coffer_pidfd_send_signal(int pidfd, int signal) { return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0); }

int coffer_thread_count(void) {
    DIR *tasks = opendir("/proc/self/task");
    if (!tasks) return -1;
    int n = 0;
    for (struct dirent *entry; (entry = readdir(tasks));) {
        if (entry->d_name[0] != '.') n++;
    }
    closedir(tasks);
    return n;
}

static volatile sig_atomic_t stop_requested = 0;
static const int stop_signals[] = { SIGTERM, SIGINT, SIGHUP };

static void on_stop(int signal) { (void)signal; stop_requested = 1; }

static void set_handler(int signal, void (*handler)(int)) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    sigaction(signal, &action, NULL);
}

static sigset_t waiting_mask;

void coffer_runner_catch_stop(void) {
    // Every signal at its default first: a runner started by a program that ignored SIGCHLD would have its forks
    // reaped by the kernel, and their exit statuses lost.
    for (int signal = 1; signal < NSIG; signal++) {
        if (signal != SIGKILL && signal != SIGSTOP) set_handler(signal, SIG_DFL);
    }
    sigset_t stops;
    sigemptyset(&stops);
    for (size_t i = 0; i < sizeof stop_signals / sizeof *stop_signals; i++) {
        set_handler(stop_signals[i], on_stop);
        sigaddset(&stops, stop_signals[i]);
    }
    // Blocked except inside coffer_runner_wait: a stop that came between the check of the flag and the wait would
    // otherwise be noticed only at the next connection or command's end.
    sigprocmask(SIG_BLOCK, &stops, &waiting_mask);
    for (size_t i = 0; i < sizeof stop_signals / sizeof *stop_signals; i++) sigdelset(&waiting_mask, stop_signals[i]);
}

int coffer_runner_wait(struct pollfd *descriptors, unsigned long count, int milliseconds) {
    struct timespec timeout = { .tv_sec = milliseconds / 1000, .tv_nsec = (long)(milliseconds % 1000) * 1000000L };
    return ppoll(descriptors, (nfds_t)count, milliseconds < 0 ? NULL : &timeout, &waiting_mask);
}

int coffer_runner_stop_requested(void) { return stop_requested; }

void coffer_runner_uncatch_stop(void) {
    for (size_t i = 0; i < sizeof stop_signals / sizeof *stop_signals; i++) set_handler(stop_signals[i], SIG_DFL);
}

static volatile int forwarded_pidfd = -1;
static const int forwarded_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGTSTP };

static void forward(int signal) {
    int saved = errno;
    if (signal == SIGTSTP) {
        coffer_pidfd_send_signal(forwarded_pidfd, SIGSTOP);
        kill(getpid(), SIGSTOP);
    } else {
        coffer_pidfd_send_signal(forwarded_pidfd, signal);
    }
    errno = saved;
}

void coffer_forward_signals(int pidfd) {
    forwarded_pidfd = pidfd;
    for (size_t i = 0; i < sizeof forwarded_signals / sizeof *forwarded_signals; i++) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_handler = forward;
        action.sa_flags = SA_RESTART;
        sigemptyset(&action.sa_mask);
        sigaction(forwarded_signals[i], &action, NULL);
    }
}

static int exit_report = -1;

// Registered by the runner before anything else (coffer_runner_prepare_exit_report), so it runs after every exit handler
// registered later, the command's and the warm-up's; it does nothing in a process whose fork did not arm it.
static void report_exit(int status, void *unused) {
    (void)unused;
    if (exit_report < 0) return;
    // Only the two streams a command writes, and only if no other thread holds them (a thread blocked in a read of
    // stdin would hold its lock forever): then no report, and the runner answers from the pidfd, after the teardown.
    FILE *streams[] = { stdout, stderr };
    for (size_t i = 0; i < 2; i++) {
        if (ftrylockfile(streams[i]) != 0) return;
        int flushed = fflush_unlocked(streams[i]);
        funlockfile(streams[i]);
        if (flushed != 0) return;
    }
    uint32_t wait_status = (uint32_t)(status & 0xff) << 8;
    unsigned char bytes[4] = { (unsigned char)wait_status, (unsigned char)(wait_status >> 8), 0, 0 };
    ssize_t sent;
    do { sent = send(exit_report, bytes, sizeof bytes, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
}

int coffer_runner_prepare_exit_report(void) { return on_exit(report_exit, NULL); }

void coffer_runner_report_exit_to(int socket) { exit_report = socket; }
