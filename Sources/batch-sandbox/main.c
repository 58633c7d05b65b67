// batch-sandbox: one slot's sandbox, started by the executor (as root) and kept for the node's life.
//
// It makes the slot's PID, IPC, UTS and mount namespaces once (the network namespace is the node's, inherited), and
// runs as PID 1 of them. For each instance the executor sends a request on descriptor 3; the sandbox forks the
// instance, which gets a mount namespace of its own with a fresh root (the system directories read-only, a private
// /tmp, /var/tmp, /dev and /dev/shm, its attempt directory and its mappings), joins its cgroups, takes its own
// session, drops every capability and becomes the instance's user before it execs the command. When the command
// ends, every process left in the slot is killed and reaped before the next request is read: instances of a slot
// never overlap, and an instance never sees another's processes or files.
//
// What a bubblewrap launch paid for each instance (two execs, new PID/IPC/UTS namespaces and their teardown) is paid
// once per slot; an instance costs a fork, a mount namespace of about twenty mounts and its exec.
//
// Protocol on descriptor 3 (a stream socket), both ways: frames of a 4-byte little-endian length and a payload.
// A request is a list of NUL-terminated strings, a tag and its arguments:
//   base DIR           the empty directory the instance's root is built on (a tmpfs mounted there)
//   ro PATH            PATH read-only, at the same path
//   link TARGET PATH   a symbolic link
//   bind SOURCE PATH   SOURCE read-write at PATH
//   tmp PATH MODE      a tmpfs at PATH (octal mode)
//   cwd PATH           the command's working directory
//   user UID GID       the instance's user
//   fsize BYTES        the largest file it may write
//   out PATH / err PATH  stdout / stderr, appended (not followed if a link)
//   cgroup PATH        a cgroup.procs file to join
//   arg S / env K=V    the command and its whole environment
// Replies: "S" once the command runs, "F<why>" when it could not start, "E<status>" (a waitpid status, decimal) when
// it has ended and the slot is clean again.
#define _GNU_SOURCE
// The release, as BatchRelease.version in BatchCore says it (a test holds the two together).
#define BATCH_VERSION "0.1.0"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

enum { channel = 3, max_items = 4096, max_frame = 16 << 20 };

static int read_full(int fd, void *buffer, size_t count) {
    char *bytes = buffer;
    while (count > 0) {
        ssize_t n = read(fd, bytes, count);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        bytes += n;
        count -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buffer, size_t count) {
    const char *bytes = buffer;
    while (count > 0) {
        ssize_t n = write(fd, bytes, count);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        bytes += n;
        count -= (size_t)n;
    }
    return 0;
}

static void reply(const char *format, ...) {
    char payload[4096];
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(payload, sizeof payload, format, arguments);
    va_end(arguments);
    if (length < 0) return;
    if (length >= (int)sizeof payload) length = sizeof payload - 1;
    uint8_t header[4] = {length & 0xff, (length >> 8) & 0xff, (length >> 16) & 0xff, (length >> 24) & 0xff};
    if (write_full(channel, header, 4) < 0 || write_full(channel, payload, (size_t)length) < 0) _exit(1);
}

// The request, as pointers into its frame.
struct request {
    char *items[max_items];
    int count;
};

// In the forked instance: reports why it could not start on `failures` (close-on-exec) and ends.
static int failures = -1;
static void fail(const char *format, ...) {
    char message[1024];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(message, sizeof message, format, arguments);
    va_end(arguments);
    size_t length = strlen(message);
    snprintf(message + length, sizeof message - length, ": %s", strerror(errno));
    if (failures >= 0) (void)!write(failures, message, strlen(message));
    _exit(127);
}

// Walks `path` (absolute) down from the new root `base`, making each missing directory (0755) on the way, and
// never through a link: an absolute link would resolve against the node's root, not the new one, and a task's
// mapping paths are its own choice. The last component is made a directory, or an empty file when `file`. After it,
// `base` + `path` names what was checked (nothing but this process can change the new root's tmpfs, and the
// read-only system directories are the operator's).
static void make_path(const char *base, const char *path, int file) {
    char copy[4096];
    if (path[0] != '/' || snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy) {
        errno = EINVAL;
        fail("%s is not an absolute path", path);
    }
    int directory = open(base, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) fail("cannot open the root");
    char *rest = copy;
    char *component;
    while ((component = strsep(&rest, "/")) != NULL) {
        if (*component == 0) continue;
        if (!strcmp(component, ".") || !strcmp(component, "..")) {
            errno = EINVAL;
            fail("%s climbs with . or ..", path);
        }
        int last = rest == NULL || strspn(rest, "/") == strlen(rest);
        int next;
        if (last && file) {
            struct stat status;
            next = openat(directory, component, O_PATH | O_NOFOLLOW | O_CLOEXEC);
            if (next >= 0 && (fstat(next, &status) < 0 || !S_ISREG(status.st_mode))) {
                close(next);
                errno = EEXIST;
                next = -1;
            } else if (next < 0 && errno == ENOENT) {
                next = openat(directory, component, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
            }
        } else {
            if (mkdirat(directory, component, 0755) < 0 && errno != EEXIST) fail("cannot make %s in %s", component, path);
            next = openat(directory, component, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (next < 0) fail("%s is not a plain directory path (a link on the way?)", path);
        close(directory);
        directory = next;
    }
    close(directory);
}

static void inside(char *buffer, size_t size, const char *base, const char *path) {
    if (snprintf(buffer, size, "%s%s", base, path) >= (int)size) {
        errno = ENAMETOOLONG;
        fail("%s", path);
    }
}

// The mount point for `source` at `path`: a directory, or an empty file for a file.
static void mount_point(const char *base, const char *source, const char *path) {
    struct stat status;
    if (stat(source, &status) < 0) fail("cannot bind %s", source);
    make_path(base, path, !S_ISDIR(status.st_mode));
}

static void bind(const char *base, const char *source, const char *path, int read_only) {
    mount_point(base, source, path);
    char target[4096];
    inside(target, sizeof target, base, path);
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0) fail("cannot bind %s at %s", source, path);
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (read_only ? MS_RDONLY : 0);
    if (mount(NULL, target, NULL, flags, NULL) < 0) {
        // A source mounted nodev already (or not) keeps what it had: only what is asked is required.
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (read_only ? MS_RDONLY : 0);
        if (mount(NULL, target, NULL, flags, NULL) < 0) fail("cannot restrict %s", path);
    }
}

static void temporary(const char *base, const char *path, const char *mode) {
    make_path(base, path, 0);
    char target[4096];
    inside(target, sizeof target, base, path);
    char options[64];
    snprintf(options, sizeof options, "mode=%s", mode);
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0) fail("cannot mount a tmpfs at %s", path);
}

// /dev: a tmpfs with the harmless device nodes of the node's /dev bound in, a private devpts and /dev/shm.
static void devices(const char *base) {
    char target[4096];
    make_path(base, "/dev", 0);
    inside(target, sizeof target, base, "/dev");
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755") < 0) fail("cannot mount /dev");
    static const char *nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < sizeof nodes / sizeof *nodes; i++) {
        char source[64], path[64];
        snprintf(source, sizeof source, "/dev/%s", nodes[i]);
        snprintf(path, sizeof path, "/dev/%s", nodes[i]);
        inside(target, sizeof target, base, path);
        int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
        if (fd < 0) fail("cannot make %s", path);
        close(fd);
        if (mount(source, target, NULL, MS_BIND, NULL) < 0) fail("cannot bind %s", source);
    }
    static const char *links[][2] = {
        {"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"},
        {"/proc/self/fd/2", "/dev/stderr"}, {"pts/ptmx", "/dev/ptmx"},
    };
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        inside(target, sizeof target, base, links[i][1]);
        if (symlink(links[i][0], target) < 0) fail("cannot link %s", links[i][1]);
    }
    make_path(base, "/dev/pts", 0);
    inside(target, sizeof target, base, "/dev/pts");
    if (mount("devpts", target, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620") < 0)
        fail("cannot mount /dev/pts");
    temporary(base, "/dev/shm", "1777");
}

// In the forked child: everything between the fork and the command.
static void start(struct request *request, int failure_pipe) {
    failures = failure_pipe;
    const char *base = NULL, *cwd = "/", *out = NULL, *err = NULL;
    uid_t uid = 65534;
    gid_t gid = 65534;
    long long fsize = -1;
    char *argv[max_items + 1], *envp[max_items + 1];
    int argc = 0, envc = 0;
    for (int i = 0; i < request->count; i++) {
        const char *tag = request->items[i];
        if (!strcmp(tag, "base")) base = request->items[++i];
        else if (!strcmp(tag, "cwd")) cwd = request->items[++i];
        else if (!strcmp(tag, "out")) out = request->items[++i];
        else if (!strcmp(tag, "err")) err = request->items[++i];
        else if (!strcmp(tag, "fsize")) fsize = atoll(request->items[++i]);
        else if (!strcmp(tag, "user")) {
            uid = (uid_t)strtoul(request->items[i + 1], NULL, 10);
            gid = (gid_t)strtoul(request->items[i + 2], NULL, 10);
            i += 2;
        } else if (!strcmp(tag, "arg")) argv[argc++] = request->items[++i];
        else if (!strcmp(tag, "env")) envp[envc++] = request->items[++i];
        else if (!strcmp(tag, "ro") || !strcmp(tag, "cgroup")) i += 1;
        else if (!strcmp(tag, "link") || !strcmp(tag, "bind") || !strcmp(tag, "tmp")) i += 2;
        else {
            errno = EINVAL;
            fail("unknown request item %s", tag);
        }
    }
    argv[argc] = NULL;
    envp[envc] = NULL;
    if (!base || argc == 0 || uid == 0) {
        errno = EINVAL;
        fail("incomplete request");
    }

    if (setsid() < 0) fail("cannot make a session");
    // Its cgroups first: everything it starts is counted and can be killed from the node.
    for (int i = 0; i < request->count; i++) {
        if (strcmp(request->items[i], "cgroup")) continue;
        const char *path = request->items[++i];
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) fail("cannot join %s", path);
        close(fd);
    }
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int stdout_fd = out ? open(out, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644) : -1;
    int stderr_fd = err ? open(err, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644) : -1;
    if (null < 0 || (out && stdout_fd < 0) || (err && stderr_fd < 0)) fail("cannot open the instance's logs");

    if (unshare(CLONE_NEWNS | CLONE_NEWCGROUP) < 0) fail("cannot make a mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) fail("cannot make mounts private");
    if (mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0) fail("cannot mount the root");
    for (int i = 0; i < request->count; i++) {
        const char *tag = request->items[i];
        if (!strcmp(tag, "ro")) {
            bind(base, request->items[i + 1], request->items[i + 1], 1);
            i += 1;
        } else if (!strcmp(tag, "link")) {
            char target[4096];
            inside(target, sizeof target, base, request->items[i + 2]);
            if (symlink(request->items[i + 1], target) < 0) fail("cannot link %s", request->items[i + 2]);
            i += 2;
        } else if (!strcmp(tag, "tmp")) {
            temporary(base, request->items[i + 1], request->items[i + 2]);
            i += 2;
        } else if (!strcmp(tag, "bind")) {
            bind(base, request->items[i + 1], request->items[i + 2], 0);
            i += 2;
        } else if (!strcmp(tag, "base") || !strcmp(tag, "cwd") || !strcmp(tag, "out") || !strcmp(tag, "err") ||
                   !strcmp(tag, "fsize") || !strcmp(tag, "arg") || !strcmp(tag, "env") || !strcmp(tag, "cgroup")) {
            i += 1;
        } else if (!strcmp(tag, "user")) {
            i += 2;
        }
    }
    // The slot's /proc (its PID namespace's: nothing of the node's processes) and the devices.
    bind(base, "/proc", "/proc", 0);
    devices(base);
    if (chdir(base) < 0) fail("cannot enter the root");
    if (syscall(SYS_pivot_root, ".", ".") < 0) fail("cannot pivot to the root");
    if (umount2(".", MNT_DETACH) < 0) fail("cannot detach the node's root");
    if (chdir("/") < 0 || chdir(cwd) < 0) fail("cannot enter %s", cwd);

    struct rlimit core = {0, 0};
    if (setrlimit(RLIMIT_CORE, &core) < 0) fail("cannot forbid core dumps");
    if (fsize >= 0) {
        struct rlimit files = {(rlim_t)fsize, (rlim_t)fsize};
        if (setrlimit(RLIMIT_FSIZE, &files) < 0) fail("cannot limit file sizes");
    }
    if (dup2(null, 0) < 0 || (out && dup2(stdout_fd, 1) < 0) || (err && dup2(stderr_fd, 2) < 0))
        fail("cannot set up the instance's descriptors");

    // No way back to any privilege: no new privileges on exec, no capability in the bounding set, then the user's ids
    // (which clear the permitted, effective and ambient sets).
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail("cannot set no_new_privs");
    for (int capability = 0; capability <= 63; capability++) {
        if (prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) < 0 && errno != EINVAL) fail("cannot drop capabilities");
    }
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
        fail("cannot become the instance's user");
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) fail("cannot tie the instance to its slot");
    signal(SIGPIPE, SIG_DFL);
    execve(argv[0], argv, envp);
    fail("cannot run %s", argv[0]);
}

// Kills every process left in the slot (everything but this PID 1) and reaps them.
static void clean(void) {
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
}

static int serve(void) {
    static char frame[max_frame];
    for (;;) {
        uint8_t header[4];
        if (read_full(channel, header, 4) < 0) return 0;
        uint32_t length = header[0] | header[1] << 8 | header[2] << 16 | (uint32_t)header[3] << 24;
        if (length == 0 || length > max_frame - 1) return 1;
        if (read_full(channel, frame, length) < 0) return 0;
        frame[length] = 0;
        struct request request = {.count = 0};
        for (char *item = frame; item < frame + length && request.count < max_items; item += strlen(item) + 1) {
            request.items[request.count++] = item;
        }
        int pipe_fds[2];
        if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
            reply("Fcannot make a pipe: %s", strerror(errno));
            continue;
        }
        pid_t child = fork();
        if (child < 0) {
            close(pipe_fds[0]);
            close(pipe_fds[1]);
            reply("Fcannot fork: %s", strerror(errno));
            continue;
        }
        if (child == 0) {
            close(pipe_fds[0]);
            close(channel);
            start(&request, pipe_fds[1]);
        }
        close(pipe_fds[1]);
        char why[1024];
        ssize_t said;
        while ((said = read(pipe_fds[0], why, sizeof why - 1)) < 0 && errno == EINTR) {
        }
        close(pipe_fds[0]);
        if (said > 0) {
            why[said] = 0;
            clean();
            reply("F%s", why);
            continue;
        }
        reply("S");
        int status = 0;
        for (;;) {
            pid_t ended = waitpid(-1, &status, 0);
            if (ended == child) break;
            if (ended < 0 && errno != EINTR) {
                status = 0;
                break;
            }
        }
        clean();
        reply("E%d", status);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("%s\n", BATCH_VERSION);
        return 0;
    }
    if (argc != 1 || fcntl(channel, F_GETFD) < 0) {
        fprintf(stderr, "batch-sandbox: started by the executor only, with its channel on descriptor 3\n");
        return 2;
    }
    if (geteuid() != 0) {
        fprintf(stderr, "batch-sandbox: needs root (it makes namespaces and mounts)\n");
        return 2;
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) return 2;
    if (unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS) < 0) {
        fprintf(stderr, "batch-sandbox: cannot make the slot's namespaces: %s\n", strerror(errno));
        return 2;
    }
    pid_t init = fork();
    if (init < 0) {
        fprintf(stderr, "batch-sandbox: cannot fork: %s\n", strerror(errno));
        return 2;
    }
    if (init > 0) {
        // The node's side: nothing but waiting for the slot's PID 1, which dies with it.
        close(channel);
        int status;
        while (waitpid(init, &status, 0) < 0 && errno == EINTR) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) return 2;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        fprintf(stderr, "batch-sandbox: cannot mount the slot's /proc: %s\n", strerror(errno));
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int result = serve();
    clean();
    return result;
}
