#ifndef COFFER_RUNNER_H
#define COFFER_RUNNER_H
// What the command runner and its launcher need that Swift's Glibc module does not import: descriptors passed over a
// Unix socket (the CMSG_* macros) and pidfds (Linux 5.3).
#include <stddef.h>
#include <poll.h>
#include <sys/types.h>

/// Sends `length` bytes of `bytes` with `count` descriptors (SCM_RIGHTS) attached to them; returns what sendmsg does.
ssize_t coffer_send_descriptors(int socket, const void *bytes, size_t length, const int *descriptors, int count);

/// Receives up to `length` bytes into `bytes`, and up to `capacity` descriptors into `descriptors` (close-on-exec),
/// their number in `*count`; returns what recvmsg does. Descriptors past `capacity` or a cut-off control message
/// are closed and make it return -1 with errno EBADMSG.
ssize_t coffer_receive_descriptors(int socket, void *bytes, size_t length, int *descriptors, int capacity, int *count);

/// The largest frame body (docs/FORMAT.md, "Command runner protocol": a `u32` length, 1 to this, then the body).
enum { COFFER_FRAME_LIMIT = 4194304 };

/// Writes `body` as one frame, `count` descriptors attached to its first byte; 0, or -1
/// with errno when the socket refused it.
int coffer_frame_write(int socket, const unsigned char *body, size_t length, const int *descriptors, int count);

/// Reads one frame into a new buffer (free it), its length in `*length`; the descriptors that came with it go to
/// `descriptors` (at most `capacity`, close-on-exec), their number in `*received`, even when the frame then fails.
/// NULL at the end of the stream, on an error, or when the length is 0 or over COFFER_FRAME_LIMIT.
unsigned char *coffer_frame_read(int socket, size_t *length, int *descriptors, int capacity, int *received);

/// The uid and pid of the process at the other end of a Unix socket (SO_PEERCRED); 0, or -1 with errno.
int coffer_peer_credentials(int socket, uid_t *uid, pid_t *pid);
/// The working directory as an O_PATH descriptor (a directory without read permission can still be entered).
int coffer_open_working_directory(void);
/// accept4 with SOCK_CLOEXEC.
int coffer_accept(int listener);
/// POLLRDHUP, which needs _GNU_SOURCE.
short coffer_poll_read_hangup(void);

int coffer_pidfd_open(pid_t pid);
int coffer_pidfd_send_signal(int pidfd, int signal);

/// The number of threads of this process (entries of /proc/self/task), or -1.
int coffer_thread_count(void);

/// In the runner: every signal back to its default, then SIGTERM, SIGINT and SIGHUP set a flag instead of ending it;
/// they are blocked except while coffer_runner_wait waits, which they interrupt.
void coffer_runner_catch_stop(void);
/// ppoll with the stop signals unblocked for the wait alone; `milliseconds` < 0 waits without a limit.
int coffer_runner_wait(struct pollfd *descriptors, unsigned long count, int milliseconds);
int coffer_runner_stop_requested(void);
/// In a fork of the runner: those signals back to their defaults, before the command installs its own.
void coffer_runner_uncatch_stop(void);

/// In the runner, before anything registers an exit handler (its warm-up, OpenSSL): registers the handler that reports
/// a fork's exit status, so that it runs after the handlers registered later (not after those the C++ runtime and
/// libraries registered at load: their destructors, which write nothing). 0, or -1 when it could not.
int coffer_runner_prepare_exit_report(void);
/// In a fork of the runner, before the command runs: when the command calls exit, its wait status (4 bytes,
/// little-endian, one SOCK_SEQPACKET message) goes to `socket` once stdout and stderr are flushed, before the process
/// is torn down; the runner then answers `exited` without waiting for the end (about 1 ms for a push's address space).
void coffer_runner_report_exit_to(int socket);

/// In the launcher: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH and SIGCONT go on to the process of
/// `pidfd`; SIGTSTP stops it (SIGSTOP) and then the launcher.
void coffer_forward_signals(int pidfd);
#endif
