// `coffer-run ARGS...` runs `coffer ARGS...` in the runner named by COFFER_RUNNER_SOCK (docs/FORMAT.md, "Command
// runner protocol"), or, when there is none or it declines, runs the `coffer` beside this file itself.
//
// In C, not Swift: what the launcher costs comes before every command it runs. Written in Swift (without Foundation)
// it took 1.9 ms of CPU per command (the dynamic loader, libstdc++, the Swift runtime, 268 page faults of a 12 MB
// binary), about a tenth of a warm 1 MiB push through the runner.
#define _GNU_SOURCE 1
#include "coffer_runner.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

extern char **environ;

enum { frame_run = 0x01, frame_go = 0x02, reply_started = 0x81, reply_exited = 0x82, reply_error = 0xFF };

static char coffer[PATH_MAX + 8];
static char **arguments;
static int argument_count;

/// One line on standard error: "coffer: " and the formatted message.
__attribute__((format(printf, 1, 2))) static void say(const char *format, ...) {
    char line[PATH_MAX + 1100] = "coffer: ";
    va_list values;
    va_start(values, format);
    int length = vsnprintf(line + 8, sizeof line - 9, format, values);
    va_end(values);
    if (length < 0) return;
    size_t end = 8 + ((size_t)length < sizeof line - 9 ? (size_t)length : sizeof line - 10);
    line[end] = '\n';
    (void)!write(2, line, end + 1);
}

/// The `coffer` beside this program.
static void find_coffer(void) {
    ssize_t length = readlink("/proc/self/exe", coffer, PATH_MAX);
    char *slash = length > 0 ? memrchr(coffer, '/', (size_t)length) : NULL;
    // Not a bare "coffer": execv would take it from the working directory.
    if (!slash) {
        say("cannot find this program's file (/proc/self/exe): %s", length < 0 ? strerror(errno) : "not a path");
        exit(127);
    }
    strcpy(slash + 1, "coffer");
}

/// Runs `coffer` itself in this process's place.
static void run_directly(void) {
    // With no arguments at all (argc 0), argv[0] is the list's end: a list of our own, not the environment after it.
    char *alone[] = { coffer, NULL };
    if (argument_count > 0) arguments[0] = coffer;
    execv(coffer, argument_count > 0 ? arguments : alone);
    say("cannot run %s: %s", coffer, strerror(errno));
    exit(127);
}

/// A stream socket (close-on-exec, blocking) connected to the Unix socket at `path`, or -1.
static int connect_to(const char *path) {
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof address.sun_path) return -1;
    strcpy(address.sun_path, path);
    // Non-blocking while it connects: with the listen queue full (a runner stopped or at its limit), connect fails at
    // once (EAGAIN) instead of waiting for a place.
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int connect_to_runner(void) {
    const char *path = getenv("COFFER_RUNNER_SOCK");
    if (!path || !*path) return -1;
    int fd = connect_to(path);
    if (fd < 0) return -1;
    // The runner would get this program's descriptors, environment and directory: never one of another user, nor
    // another program of this user's that listens where the variable points (a stale path made again as a link).
    uid_t uid;
    pid_t pid;
    if (coffer_peer_credentials(fd, &uid, &pid) != 0 || uid != geteuid()) {
        say("the runner at %s is not this user's; unset COFFER_RUNNER_SOCK", path);
        exit(1);
    }
    char executable[64];
    snprintf(executable, sizeof executable, "/proc/%d/exe", (int)pid);
    struct stat listening, mine;
    if (stat(executable, &listening) != 0 || stat(coffer, &mine) != 0 || listening.st_dev != mine.st_dev ||
        listening.st_ino != mine.st_ino) {
        close(fd);
        return -1;
    }
    // A runner that takes no more than 5 s to read the request, or none (a request as large as the environment).
    struct timeval deadline = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &deadline, sizeof deadline);
    return fd;
}

/// Whether `value` names a descriptor past the standard three (`<(...)` gives `/dev/fd/63`).
static int names_a_descriptor(const char *value) {
    static const char *const prefixes[] = { "/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/" };
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        size_t length = strlen(prefixes[i]);
        for (const char *found = strstr(value, prefixes[i]); found; found = strstr(found + 1, prefixes[i])) {
            const char *digits = found + length;
            const char *end = digits;
            while (*end >= '0' && *end <= '9') end++;
            // Past 2, or too long to be a number at all: either way not one of the standard three.
            if (end - digits > 9 || (end > digits && atoi(digits) > 2)) return 1;
        }
    }
    return 0;
}

/// Whether an argument or a COFFER_ variable names a descriptor past the standard three: a fork of the runner is
/// passed the standard three only. (Checking for every inherited descriptor instead would leave the runner unused
/// wherever a terminal or an IDE leaks one.)
static int names_another_descriptor(void) {
    for (int i = 1; i < argument_count; i++) {
        if (names_a_descriptor(arguments[i])) return 1;
    }
    for (char **entry = environ; *entry; entry++) {
        if (strncmp(*entry, "COFFER_", 7) == 0 && names_a_descriptor(*entry)) return 1;
    }
    return 0;
}

/// A growing byte buffer for the request; exits through `run_directly` when memory runs out.
struct buffer {
    unsigned char *bytes;
    size_t count, capacity;
};

static void append(struct buffer *buffer, const void *bytes, size_t count) {
    if (buffer->count + count > buffer->capacity) {
        size_t capacity = (buffer->count + count) * 2;
        unsigned char *grown = realloc(buffer->bytes, capacity);
        if (!grown) run_directly();
        buffer->bytes = grown;
        buffer->capacity = capacity;
    }
    memcpy(buffer->bytes + buffer->count, bytes, count);
    buffer->count += count;
}

static void append_u32(struct buffer *buffer, uint32_t value) {
    unsigned char bytes[4] = { (unsigned char)value, (unsigned char)(value >> 8), (unsigned char)(value >> 16), (unsigned char)(value >> 24) };
    append(buffer, bytes, 4);
}

static void append_blob(struct buffer *buffer, const char *string) {
    size_t length = strlen(string);
    append_u32(buffer, (uint32_t)length);
    append(buffer, string, length);
}

static uint32_t u32_at(const unsigned char *bytes) {
    return (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 | (uint32_t)bytes[3] << 24;
}

int main(int argc, char **argv) {
    arguments = argv;
    argument_count = argc;
    find_coffer();
    // What the runner cannot reproduce, coffer itself does: a closed standard descriptor (the socket would take its
    // number and become the command's stdio), a descriptor past the standard three named on the command line, and a
    // launcher in the background of the terminal on its stdio (coffer would be stopped by job control before reading
    // or writing it; a fork of the runner has no controlling terminal to stop it).
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) < 0 || (isatty(fd) && tcgetpgrp(fd) != getpgrp())) run_directly();
    }
    int runner = connect_to_runner();
    if (runner < 0 || names_another_descriptor()) run_directly();
    mode_t mask = umask(077);
    umask(mask);
    // The terminal for prompts, only while this launcher is in its foreground: a prompt must not take a line typed at
    // the shell for a job it started in the background.
    int terminal = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (terminal >= 0 && tcgetpgrp(terminal) != getpgrp()) {
        close(terminal);
        terminal = -1;
    }
    int directory = coffer_open_working_directory();
    if (directory < 0) run_directly();

    struct buffer request = { 0 };
    unsigned char type = frame_run, has_terminal = terminal >= 0;
    append(&request, &type, 1);
    append_u32(&request, (uint32_t)mask);
    append(&request, &has_terminal, 1);
    append_u32(&request, (uint32_t)getpgrp());
    append_blob(&request, coffer);
    append_u32(&request, (uint32_t)(argc > 0 ? argc - 1 : 0));
    for (int i = 1; i < argc; i++) append_blob(&request, argv[i]);
    uint32_t environment_count = 0;
    for (char **entry = environ; *entry; entry++) environment_count++;
    append_u32(&request, environment_count);
    for (char **entry = environ; *entry; entry++) append_blob(&request, *entry);
    // Over the frame limit (an environment of megabytes), the runner would refuse it: coffer itself takes it.
    if (request.count > COFFER_FRAME_LIMIT) run_directly();
    int passing[5] = { directory, 0, 1, 2, terminal };
    if (coffer_frame_write(runner, request.bytes, request.count, passing, has_terminal ? 5 : 4) != 0) run_directly();
    free(request.bytes);
    close(directory);
    if (terminal >= 0) close(terminal);

    // A runner that does not answer within 5 s (stopped, swapping) is left: the fork runs nothing without `go`. The
    // deadline holds for the whole of `started`, not only its first byte.
    struct timeval deadline = { .tv_sec = 5 };
    setsockopt(runner, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof deadline);
    struct pollfd answering = { .fd = runner, .events = POLLIN };
    int waited;
    do {
        waited = poll(&answering, 1, 5000);
    } while (waited < 0 && errno == EINTR);
    if (waited <= 0) run_directly();
    int pidfd = -1, received = 0;
    size_t length = 0;
    unsigned char *first = coffer_frame_read(runner, &length, &pidfd, 1, &received);
    if (!first) run_directly();
    if (first[0] == reply_error && length >= 5 && u32_at(first + 1) == length - 5) {
        char message[1024];
        size_t count = length - 5 < sizeof message - 1 ? length - 5 : sizeof message - 1;
        memcpy(message, first + 5, count);
        message[count] = 0;
        say("runner: %s", message);
        exit(1);
    }
    // Declined, or an answer this launcher does not know: nothing ran, nor will without `go`.
    if (!(first[0] == reply_started && length == 1 && received == 1)) run_directly();
    free(first);
    // The command may run for hours: no deadline on `exited`.
    struct timeval none = { 0 };
    setsockopt(runner, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    coffer_forward_signals(pidfd);
    unsigned char go = frame_go;
    if (coffer_frame_write(runner, &go, 1, NULL, 0) != 0) run_directly();

    unsigned char *last = coffer_frame_read(runner, &length, NULL, 0, &received);
    if (!last || last[0] != reply_exited || length != 5) {
        // The runner went away while the command ran: wait for the command, whose status is lost with it.
        struct pollfd end = { .fd = pidfd, .events = POLLIN };
        while (poll(&end, 1, -1) < 0 && errno == EINTR) {}
        say("the runner stopped while the command ran; its exit status is lost");
        exit(1);
    }
    int status = (int)u32_at(last + 1);
    if ((status & 0x7f) == 0) exit((status >> 8) & 0xff);
    // Ended by a signal: end this process the same way, so that a shell sees what it would have seen (without a core
    // of the launcher's own: the command's, if any, is the command's).
    int signal_number = status & 0x7f;
    struct rlimit no_core = { 0, 0 };
    setrlimit(RLIMIT_CORE, &no_core);
    signal(signal_number, SIG_DFL);
    sigset_t unblocked;
    sigemptyset(&unblocked);
    sigaddset(&unblocked, signal_number);
    sigprocmask(SIG_UNBLOCK, &unblocked, NULL);
    raise(signal_number);
    exit(128 + signal_number);
}
