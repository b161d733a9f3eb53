/*
 * shoal-init: pid 1 of every Shoal sandbox.
 *
 * Usage: shoal-init <abstract-socket-name>
 *
 * It brings `lo` up, listens on the abstract AF_UNIX SOCK_SEQPACKET socket
 * "\0<name>" (abstract names are scoped by network namespace, which is how the node
 * agent finds exactly this sandbox's init), starts processes on request, hands their
 * stdio back with SCM_RIGHTS, reaps every child (orphans included) and reports exits.
 * One thread, one poll() loop, no allocation on the idle path: an idle init has ~70 KiB
 * of private memory (its ~650 KiB of static text is page cache shared by every sandbox).
 *
 * Anything inside the sandbox may connect too, so every length is checked, a malformed
 * message closes that connection only, sends never block (a client that does not read
 * gets a bounded queue, then is dropped), and a peer that is neither root, init's own
 * uid, nor outside the sandbox's pid namespace is refused (otherwise an unprivileged
 * sandbox user could ask for a uid 0 process).
 *
 * Surviving the agent: init keeps its own copy of every live spawned process's output
 * read ends (stdout, stderr) or pty master until the process is reaped, so a process
 * whose client went away (the node agent restarting) never gets EPIPE or SIGHUP; with
 * nobody reading, its output pipe fills and its writes block, as with any detached
 * reader. ADOPT hands a reconnected agent fresh duplicates, plus the opaque metadata blob
 * the spawner stored with SPAWNM. The write end of a stdin pipe is NOT kept (CloseStdin
 * must deliver EOF): a non-pty process's stdin reaches end of file when the connection
 * that holds it goes away. A pty's input goes through the master, so it survives.
 *
 * PROTOCOL (version 1). Every message is one SEQPACKET record in host byte order:
 *
 *   header   u32 op, u32 id            id: chosen by the client, echoed in the reply;
 *                                      0 in events
 * Requests (client -> init):
 *   SPAWN  1 u32 uid, u32 gid, u32 flags (1=pty, 2=stdin), u16 cols, u16 rows,
 *            u32 ngroups, u32 argc, u32 envc,
 *            u32 groups[ngroups],
 *            then exactly 1+argc+envc NUL-terminated strings filling the record:
 *            cwd, argv[0..argc), env[0..envc) ("KEY=VALUE")
 *            -> SPAWNED or ERR. argv[0] without '/' is looked up on PATH from env.
 *   SIGNAL 2 i32 pid, i32 signum, u32 flags (1=process group)      -> OK or ERR
 *            pid must be a live process that SPAWN started (else ESRCH); with the
 *            group flag the signal goes to its whole process group (kill(-pid)).
 *   LIST   3 (no body)                                             -> LIST
 *   STATUS 4 i32 pid, u32 flags (1=adopt: send this pid's EXIT to me; an in-sandbox
 *            peer cannot take a process a host peer started)            -> STATUS
 *   SPAWNM 5 SPAWN with a metadata blob: the SPAWN fields up to envc, then u32 metalen,
 *            u32 groups[ngroups], metalen opaque bytes (at most MAX_META), then the
 *            strings as in SPAWN. init keeps the blob with the process for ADOPT.
 *            -> SPAWNED or ERR (E2BIG "metadata" when over MAX_META)
 *   ADOPT  6 i32 pid -> ADOPTED or ERR: ESRCH (not a live spawned process), EAGAIN (its
 *            exec is still pending: ask again), EPERM (an in-sandbox peer asking for a
 *            process a host peer started), EBUSY (another live connection owns it and
 *            the asker may not take it: only a host peer takes a host-started process
 *            from a live owner). Makes the asker the process's owner (its EXIT goes there).
 *            Asking again for a process one already owns just sends new duplicates.
 * Replies / events (init -> client):
 *   OK      0x81 i32 value
 *   ERR     0x82 i32 errno, then a short ASCII word naming the failed step
 *                ("exec", "chdir", "setuid", ...), no NUL
 *   SPAWNED 0x83 i32 pid, u32 nfds; SCM_RIGHTS carries, in order, the pty master
 *                (pty) or [stdin write end (stdin flag)], stdout read end, stderr
 *                read end
 *   LIST    0x84 u32 n, i32 pids[n]            (live processes SPAWN started)
 *   STATUS  0x85 i32 state (0 unknown, 1 running, 2 exited), i32 code, i32 signal
 *   ADOPTED 0x86 i32 pid, u32 flags (as given to SPAWN), u32 nfds, then the metadata
 *                blob (the rest of the record, possibly empty); SCM_RIGHTS carries new
 *                duplicates of the pty master (pty) or stdout and stderr read ends
 *   EXIT    0x90 i32 pid, i32 code, i32 signal (code -1 when killed by signal, signal
 *                0 when it exited); sent to the connection that spawned (or adopted)
 *                the process. The last STATUS_RING exits are kept for STATUS queries,
 *                which is how a restarted agent learns what it missed.
 * Limits: a record is at most MAX_MSG (1 MiB), at most MAX_GROUPS groups and MAX_STRINGS
 * argv/env entries each, metadata at most MAX_META (64 KiB); MAX_CLIENTS connections,
 * MAX_CHILDREN live spawned processes, MAX_PENDING spawns waiting for exec. A record over
 * the limit, carrying fds, or malformed closes the connection; an unknown op gets ERR
 * ENOSYS (which is how a client tells an older init that lacks SPAWNM and ADOPT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif
#ifndef SO_SNDBUFFORCE
#define SO_SNDBUFFORCE 32
#endif

enum {
    OP_SPAWN = 1,
    OP_SIGNAL = 2,
    OP_LIST = 3,
    OP_STATUS = 4,
    OP_SPAWNM = 5,
    OP_ADOPT = 6,
    RP_OK = 0x81,
    RP_ERR = 0x82,
    RP_SPAWNED = 0x83,
    RP_LIST = 0x84,
    RP_STATUS = 0x85,
    RP_ADOPTED = 0x86,
    EV_EXIT = 0x90,
};

enum { SPAWN_PTY = 1, SPAWN_STDIN = 2 };
enum { SIGNAL_GROUP = 1 };
enum { STATUS_ADOPT = 1 };
enum { ST_UNKNOWN = 0, ST_RUNNING = 1, ST_EXITED = 2 };

#define MAX_MSG (1u << 20)
#define MAX_CLIENTS 64
#define MAX_CHILDREN 4096
#define MAX_PENDING 256
#define MAX_QUEUE 1024 /* queued replies/events per client before it is dropped */
#define MAX_GROUPS 1024
#define MAX_STRINGS 65536
#define STATUS_RING 1024
#define MAX_META (64u * 1024)
#define SNDBUF_WANTED (1 << 20)

struct hdr {
    uint32_t op;
    uint32_t id;
};

struct spawn_req {
    uint32_t uid, gid, flags;
    uint16_t cols, rows;
    uint32_t ngroups, argc, envc;
};

struct outmsg {
    struct outmsg *next;
    int nfds;
    int fds[3];
    size_t len;
    unsigned char data[];
};

struct client {
    int fd; /* -1: free slot */
    uint32_t gen;
    int host; /* peer outside our pid namespace (the node agent) */
    int dead;
    uint64_t seq; /* accept order */
    unsigned qlen;
    struct outmsg *qhead, *qtail;
};

enum { C_FREE = 0, C_PENDING, C_RUNNING, C_FAILED };

struct child {
    pid_t pid;
    int state;
    int owner; /* client slot or -1 */
    uint32_t owner_gen;
    uint32_t req_id;
    int errfd; /* exec report pipe while C_PENDING */
    int nfds;
    int fds[3];
    int reaped; /* reaped before its exec report was read */
    int wstatus;
    int by_host;    /* started by a host peer (the agent) */
    uint32_t flags; /* SPAWN flags */
    int nkeep;      /* init's own copies of the output read ends / pty master */
    int keep[2];
    uint32_t metalen;
    unsigned char *meta; /* SPAWNM blob (malloc) or NULL */
};

struct exit_rec {
    pid_t pid;
    int32_t code, sig;
};

/* Child's report when it fails before exec: which step and errno. */
struct exec_report {
    int32_t step, err;
};

enum { STEP_STDIO = 1, STEP_SETGROUPS, STEP_SETGID, STEP_SETUID, STEP_CHDIR, STEP_EXEC, STEP_NOMEM };
static const char *const step_names[] = {"?",      "stdio", "setgroups", "setgid",
                                         "setuid", "chdir", "exec",      "nomem"};

static unsigned char rbuf[MAX_MSG + 64] __attribute__((aligned(4096)));
static struct client clients[MAX_CLIENTS];
static struct child children[MAX_CHILDREN];
static int children_hi; /* one past the highest slot ever used: scans stop there */
static int npending;
static struct exit_rec ring[STATUS_RING];
static unsigned ring_next;
static int listen_fd = -1, sig_fd = -1;
static uint64_t accept_seq;

/* ---------------------------------------------------------------- output */

static void mark_dead(int ci) { clients[ci].dead = 1; }

static void close_fds(int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
}

/* 1 sent, 0 would block, -1 error */
static int raw_send(int fd, const void *data, size_t len, const int *fds, int nfds) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 3)];
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) return 1;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return -1;
    }
}

/* Send to a client, queueing when its socket is full. Takes ownership of fds. */
static void send_to(int ci, const void *data, size_t len, int *fds, int nfds) {
    struct client *c = &clients[ci];
    if (c->fd < 0 || c->dead) {
        close_fds(fds, nfds);
        return;
    }
    if (!c->qhead) {
        int r = raw_send(c->fd, data, len, fds, nfds);
        if (r != 0) {
            close_fds(fds, nfds);
            if (r < 0) mark_dead(ci);
            return;
        }
    }
    if (c->qlen >= MAX_QUEUE) {
        close_fds(fds, nfds);
        mark_dead(ci);
        return;
    }
    struct outmsg *m = malloc(sizeof *m + len);
    if (!m) {
        close_fds(fds, nfds);
        mark_dead(ci);
        return;
    }
    m->next = NULL;
    m->nfds = nfds;
    for (int i = 0; i < nfds; i++) m->fds[i] = fds[i];
    m->len = len;
    memcpy(m->data, data, len);
    if (c->qtail)
        c->qtail->next = m;
    else
        c->qhead = m;
    c->qtail = m;
    c->qlen++;
}

static void flush_queue(int ci) {
    struct client *c = &clients[ci];
    while (c->qhead && !c->dead) {
        struct outmsg *m = c->qhead;
        int r = raw_send(c->fd, m->data, m->len, m->fds, m->nfds);
        if (r == 0) return;
        if (r < 0) mark_dead(ci);
        close_fds(m->fds, m->nfds);
        c->qhead = m->next;
        if (!c->qhead) c->qtail = NULL;
        c->qlen--;
        free(m);
    }
}

static void reply_ok(int ci, uint32_t id, int32_t value) {
    struct {
        struct hdr h;
        int32_t v;
    } m = {{RP_OK, id}, value};
    send_to(ci, &m, sizeof m, NULL, 0);
}

static void reply_err(int ci, uint32_t id, int err, const char *what) {
    struct {
        struct hdr h;
        int32_t err;
        char what[32];
    } m;
    size_t wl = strlen(what);
    if (wl > sizeof m.what) wl = sizeof m.what;
    m.h.op = RP_ERR;
    m.h.id = id;
    m.err = err;
    memcpy(m.what, what, wl);
    send_to(ci, &m, offsetof(__typeof__(m), what) + wl, NULL, 0);
}

/* ---------------------------------------------------------------- clients */

static void drop_client(int ci) {
    struct client *c = &clients[ci];
    if (c->fd < 0) return;
    close(c->fd);
    c->fd = -1;
    c->dead = 0;
    while (c->qhead) {
        struct outmsg *m = c->qhead;
        c->qhead = m->next;
        close_fds(m->fds, m->nfds);
        free(m);
    }
    c->qtail = NULL;
    c->qlen = 0;
    /* Its processes keep running; their exits go to the status ring only. */
    for (int i = 0; i < children_hi; i++)
        if (children[i].state != C_FREE && children[i].owner == ci) children[i].owner = -1;
}

static int owner_alive(const struct child *ch) {
    return ch->owner >= 0 && clients[ch->owner].fd >= 0 && !clients[ch->owner].dead &&
           clients[ch->owner].gen == ch->owner_gen;
}

static void accept_clients(void) {
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or out of fds: try again on the next wakeup */
        }
        struct ucred cred;
        socklen_t cl = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
            close(fd);
            continue;
        }
        /* pid 0: the peer lives outside our pid namespace, i.e. on the host. */
        int host = cred.pid == 0;
        if (!host && cred.uid != 0 && cred.uid != geteuid()) {
            close(fd);
            continue;
        }
        int slot = -1, victim = -1;
        for (int i = 0; i < MAX_CLIENTS; i++) {
            if (clients[i].fd < 0) {
                slot = i;
                break;
            }
            if (!clients[i].host && (victim < 0 || clients[i].seq < clients[victim].seq))
                victim = i;
        }
        if (slot < 0 && host && victim >= 0) {
            /* In-sandbox code must not be able to lock the agent out: the longest-connected
               in-sandbox peer makes room. */
            drop_client(victim);
            slot = victim;
        }
        if (slot < 0) {
            close(fd);
            continue;
        }
        int sz = SNDBUF_WANTED;
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz) < 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        clients[slot].fd = fd;
        clients[slot].gen++;
        clients[slot].seq = ++accept_seq;
        clients[slot].host = host;
        clients[slot].dead = 0;
    }
}

/* ---------------------------------------------------------------- children */

static int find_child(pid_t pid) {
    for (int i = 0; i < children_hi; i++)
        if (children[i].state != C_FREE && children[i].pid == pid && !children[i].reaped) return i;
    return -1;
}

static int alloc_child(void) {
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].state == C_FREE) {
            if (i >= children_hi) children_hi = i + 1;
            return i;
        }
    }
    return -1;
}

/* Let go of what init holds for a process: its output copies and its metadata. */
static void release_child(struct child *ch) {
    close_fds(ch->keep, ch->nkeep);
    ch->nkeep = 0;
    free(ch->meta);
    ch->meta = NULL;
    ch->metalen = 0;
}

static void free_child(int i) {
    release_child(&children[i]);
    memset(&children[i], 0, sizeof children[i]);
    children[i].errfd = -1;
    while (children_hi > 0 && children[children_hi - 1].state == C_FREE) children_hi--;
}

static void decode_status(int ws, int32_t *code, int32_t *sig) {
    if (WIFSIGNALED(ws)) {
        *code = -1;
        *sig = WTERMSIG(ws);
    } else {
        *code = WEXITSTATUS(ws);
        *sig = 0;
    }
}

/* A spawned process ended: remember it and tell whoever owns it. */
static void report_exit(int i) {
    struct child *ch = &children[i];
    struct exit_rec *r = &ring[ring_next++ % STATUS_RING];
    r->pid = ch->pid;
    decode_status(ch->wstatus, &r->code, &r->sig);
    if (owner_alive(ch)) {
        struct {
            struct hdr h;
            int32_t pid, code, sig;
        } m = {{EV_EXIT, 0}, ch->pid, r->code, r->sig};
        send_to(ch->owner, &m, sizeof m, NULL, 0);
    }
}

/* The exec report pipe of a pending spawn became readable (report or EOF). */
static void resolve_pending(int i) {
    struct child *ch = &children[i];
    struct exec_report rep;
    ssize_t n;
    do n = read(ch->errfd, &rep, sizeof rep);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN) return;
    close(ch->errfd);
    ch->errfd = -1;
    npending--;
    int alive = owner_alive(ch);
    if (n == (ssize_t)sizeof rep) {
        /* Never started: the requester gets ERR; the child's _exit(127) is not news. */
        close_fds(ch->fds, ch->nfds);
        ch->nfds = 0;
        release_child(ch);
        if (alive) {
            int step = rep.step > 0 && rep.step <= STEP_NOMEM ? rep.step : 0;
            reply_err(ch->owner, ch->req_id, rep.err, step_names[step]);
        }
        if (ch->reaped)
            free_child(i);
        else
            ch->state = C_FAILED;
        return;
    }
    /* EOF: exec succeeded (or the child died before it: its exit says how). */
    ch->state = C_RUNNING;
    if (alive) {
        struct {
            struct hdr h;
            int32_t pid;
            uint32_t nfds;
        } m = {{RP_SPAWNED, ch->req_id}, ch->pid, (uint32_t)ch->nfds};
        send_to(ch->owner, &m, sizeof m, ch->fds, ch->nfds);
    } else {
        close_fds(ch->fds, ch->nfds);
    }
    ch->nfds = 0;
    if (ch->reaped) {
        report_exit(i);
        free_child(i);
    }
}

static void reap(void) {
    struct signalfd_siginfo si;
    while (read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
    }
    for (;;) {
        int ws;
        pid_t pid = waitpid(-1, &ws, WNOHANG);
        if (pid < 0 && errno == EINTR) continue;
        if (pid <= 0) return;
        int i = find_child(pid);
        if (i < 0) continue; /* a reparented orphan: just gone */
        struct child *ch = &children[i];
        ch->wstatus = ws;
        if (ch->state == C_PENDING) {
            ch->reaped = 1; /* resolve_pending finishes the job */
        } else if (ch->state == C_FAILED) {
            free_child(i);
        } else {
            report_exit(i);
            free_child(i);
        }
    }
}

/* ---------------------------------------------------------------- the child side */

static void child_fail(int errfd, int step, int err) {
    struct exec_report rep = {step, err};
    ssize_t n = write(errfd, &rep, sizeof rep);
    (void)n;
    _exit(127);
}

static void close_other_fds(int keep) {
    /* close_range(2); a loop on kernels without it */
    if (keep > 3 && syscall(SYS_close_range, 3, keep - 1, 0) < 0) {
        for (int fd = 3; fd < keep; fd++) close(fd);
    }
    if (syscall(SYS_close_range, keep + 1, ~0U, 0) < 0) {
        long max = sysconf(_SC_OPEN_MAX);
        if (max < 0 || max > 1 << 20) max = 1 << 20;
        for (long fd = keep + 1; fd < max; fd++) close((int)fd);
    }
}

static void exec_file(const char *file, char **argv, char **envp) {
    execve(file, argv, envp);
    if (errno == ENOEXEC) {
        /* a script without a #! line: what execvp(3) does */
        size_t n = 0;
        while (argv[n]) n++;
        char **nargv = malloc((n + 2) * sizeof *nargv);
        if (!nargv) return;
        nargv[0] = "/bin/sh";
        nargv[1] = (char *)file;
        for (size_t i = 1; i <= n; i++) nargv[i + 1] = argv[i];
        execve("/bin/sh", nargv, envp);
        errno = ENOEXEC;
    }
}

/* execvpe(3) with PATH taken from the new environment, not from init's. */
static void exec_search(const char *file, char **argv, char **envp) {
    if (strchr(file, '/')) {
        exec_file(file, argv, envp);
        return;
    }
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
    size_t flen = strlen(file);
    int saw_eacces = 0;
    char buf[4096];
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        if (dlen + 1 + flen + 1 <= sizeof buf) {
            if (dlen == 0) {
                memcpy(buf, file, flen + 1);
            } else {
                memcpy(buf, p, dlen);
                buf[dlen] = '/';
                memcpy(buf + dlen + 1, file, flen + 1);
            }
            exec_file(buf, argv, envp);
            switch (errno) {
            case EACCES:
                saw_eacces = 1;
                break;
            case ENOENT:
            case ENOTDIR:
            case ESTALE:
            case ENODEV:
            case ETIMEDOUT:
            case ELOOP:
            case ENAMETOOLONG:
                break;
            default:
                return;
            }
        }
        if (*end == '\0') break;
        p = end;
    }
    errno = saw_eacces ? EACCES : ENOENT;
}

struct spawn_ctx {
    const struct spawn_req *req;
    const uint32_t *groups;
    const char *strings; /* cwd, argv..., env... */
    int master;          /* pty master or -1 */
    int in_r;            /* stdin pipe read end or -1 */
    int out_w, err_w;
    int errfd;
};

static void child_main(const struct spawn_ctx *x) {
    const struct spawn_req *r = x->req;
    int errfd = x->errfd;

    /* init blocks SIGCHLD and ignores SIGTERM/SIGINT/SIGPIPE: none of that may leak. */
    /* Raw syscalls, not libc: glibc refuses to touch its internal signals (32, 33), so
     * an ignore or block of those inherited from whoever started init would survive
     * sigaction()/sigprocmask() and leak into every process of the sandbox. */
    struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } kdfl;
    memset(&kdfl, 0, sizeof kdfl); /* SIG_DFL is 0 */
    for (int s = 1; s <= 64; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        syscall(SYS_rt_sigaction, s, &kdfl, NULL, sizeof kdfl.mask);
    }
    uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none);

    setsid();

    if (x->master >= 0) {
        int slave = ioctl(x->master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0) {
            unsigned int n;
            char path[64];
            if (ioctl(x->master, TIOCGPTN, &n) < 0) child_fail(errfd, STEP_STDIO, errno);
            snprintf(path, sizeof path, "/dev/pts/%u", n);
            slave = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
            if (slave < 0) child_fail(errfd, STEP_STDIO, errno);
        }
        if (ioctl(slave, TIOCSCTTY, 0) < 0) child_fail(errfd, STEP_STDIO, errno);
        if (geteuid() == 0 && fchown(slave, r->uid, r->gid) == 0) fchmod(slave, 0620);
        for (int fd = 0; fd < 3; fd++)
            if (dup2(slave, fd) < 0) child_fail(errfd, STEP_STDIO, errno);
    } else {
        int in = x->in_r;
        if (in < 0) {
            in = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (in < 0) {
                /* no /dev/null in this root: an empty pipe reads as EOF just the same */
                int p[2];
                if (pipe2(p, O_CLOEXEC) < 0) child_fail(errfd, STEP_STDIO, errno);
                close(p[1]);
                in = p[0];
            }
        }
        if (dup2(in, 0) < 0 || dup2(x->out_w, 1) < 0 || dup2(x->err_w, 2) < 0)
            child_fail(errfd, STEP_STDIO, errno);
    }

    if (geteuid() == 0) {
        if (setgroups(r->ngroups, (const gid_t *)x->groups) < 0) {
            /* a user namespace with setgroups denied: fine if they already are what we want */
            int e = errno;
            gid_t cur[MAX_GROUPS];
            int n = getgroups(MAX_GROUPS, cur);
            if (n != (int)r->ngroups) child_fail(errfd, STEP_SETGROUPS, e);
            for (int i = 0; i < n; i++) {
                int found = 0;
                for (uint32_t j = 0; j < r->ngroups && !found; j++) found = cur[i] == x->groups[j];
                if (!found) child_fail(errfd, STEP_SETGROUPS, e);
            }
        }
        if (setgid(r->gid) < 0) child_fail(errfd, STEP_SETGID, errno);
        if (setuid(r->uid) < 0) child_fail(errfd, STEP_SETUID, errno);
    } else if (r->uid != geteuid() || r->gid != getegid()) {
        child_fail(errfd, STEP_SETUID, EPERM);
    }

    const char *s = x->strings;
    const char *cwd = s;
    s += strlen(s) + 1;
    char **argv = malloc((r->argc + 1) * sizeof *argv);
    char **envp = malloc((r->envc + 1) * sizeof *envp);
    if (!argv || !envp) child_fail(errfd, STEP_NOMEM, ENOMEM);
    for (uint32_t i = 0; i < r->argc; i++, s += strlen(s) + 1) argv[i] = (char *)s;
    argv[r->argc] = NULL;
    for (uint32_t i = 0; i < r->envc; i++, s += strlen(s) + 1) envp[i] = (char *)s;
    envp[r->envc] = NULL;

    if (chdir(cwd) < 0) child_fail(errfd, STEP_CHDIR, errno);

    close_other_fds(errfd);
    exec_search(argv[0], argv, envp);
    child_fail(errfd, STEP_EXEC, errno);
}

/* ---------------------------------------------------------------- requests */

static void do_spawn(int ci, uint32_t id, const unsigned char *body, size_t blen, int with_meta) {
    struct spawn_req req;
    uint32_t metalen = 0;
    if (blen < sizeof req + (with_meta ? 4 : 0)) {
        mark_dead(ci);
        return;
    }
    memcpy(&req, body, sizeof req);
    body += sizeof req;
    blen -= sizeof req;
    if (with_meta) {
        memcpy(&metalen, body, 4);
        body += 4;
        blen -= 4;
    }
    if (req.ngroups > MAX_GROUPS || req.argc > MAX_STRINGS || req.envc > MAX_STRINGS ||
        (size_t)req.ngroups * 4 > blen || metalen > blen - (size_t)req.ngroups * 4) {
        mark_dead(ci);
        return;
    }
    const uint32_t *groups = (const uint32_t *)body; /* rbuf is aligned, offsets are too */
    const unsigned char *meta = body + (size_t)req.ngroups * 4;
    const char *strings = (const char *)meta + metalen;
    size_t slen = blen - (size_t)req.ngroups * 4 - metalen;
    size_t nuls = 0;
    for (size_t k = 0; k < slen; k++) nuls += strings[k] == '\0';
    if (slen == 0 || strings[slen - 1] != '\0' || nuls != 1 + (size_t)req.argc + req.envc) {
        mark_dead(ci);
        return;
    }
    if (req.argc == 0 || strings[0] == '\0' || strings[strlen(strings) + 1] == '\0' ||
        (req.flags & ~(uint32_t)(SPAWN_PTY | SPAWN_STDIN)) || req.uid == (uint32_t)-1 ||
        req.gid == (uint32_t)-1) {
        reply_err(ci, id, EINVAL, "request");
        return;
    }
    if (metalen > MAX_META) {
        reply_err(ci, id, E2BIG, "metadata");
        return;
    }
    if (npending >= MAX_PENDING) {
        reply_err(ci, id, EAGAIN, "pending");
        return;
    }
    int slot = alloc_child();
    if (slot < 0) {
        reply_err(ci, id, EAGAIN, "children");
        return;
    }

    int master = -1, in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, rep[2] = {-1, -1};
    int keep[2] = {-1, -1};
    unsigned char *meta_copy = NULL;
    const char *what = "metadata";
    if (metalen > 0) {
        meta_copy = malloc(metalen);
        if (!meta_copy) goto fail;
        memcpy(meta_copy, meta, metalen);
    }
    what = "stdio";
    if (req.flags & SPAWN_PTY) {
        master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        int unlock = 0;
        struct winsize ws = {.ws_row = req.rows, .ws_col = req.cols};
        if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 ||
            ioctl(master, TIOCSWINSZ, &ws) < 0)
            goto fail;
        if ((keep[0] = fcntl(master, F_DUPFD_CLOEXEC, 3)) < 0) goto fail;
    } else {
        if ((req.flags & SPAWN_STDIN) && pipe2(in, O_CLOEXEC) < 0) goto fail;
        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) goto fail;
        /* init's own copies of the read ends: the writer never sees EPIPE while no client
           holds them (see "Surviving the agent" above) */
        if ((keep[0] = fcntl(out[0], F_DUPFD_CLOEXEC, 3)) < 0 ||
            (keep[1] = fcntl(err[0], F_DUPFD_CLOEXEC, 3)) < 0)
            goto fail;
    }
    what = "fork";
    if (pipe2(rep, O_CLOEXEC | O_NONBLOCK) < 0) goto fail;

    struct spawn_ctx x = {&req, groups, strings, master, in[0], out[1], err[1], rep[1]};
    pid_t pid = fork();
    if (pid < 0) goto fail;
    if (pid == 0) child_main(&x);

    close(rep[1]);
    struct child *ch = &children[slot];
    ch->pid = pid;
    ch->state = C_PENDING;
    ch->owner = ci;
    ch->owner_gen = clients[ci].gen;
    ch->req_id = id;
    ch->errfd = rep[0];
    ch->reaped = 0;
    ch->by_host = clients[ci].host;
    ch->flags = req.flags;
    ch->nkeep = master >= 0 ? 1 : 2;
    ch->keep[0] = keep[0];
    ch->keep[1] = keep[1];
    ch->meta = meta_copy;
    ch->metalen = metalen;
    ch->nfds = 0;
    if (master >= 0) {
        ch->fds[ch->nfds++] = master;
    } else {
        if (in[1] >= 0) ch->fds[ch->nfds++] = in[1];
        ch->fds[ch->nfds++] = out[0];
        ch->fds[ch->nfds++] = err[0];
        if (in[0] >= 0) close(in[0]);
        close(out[1]);
        close(err[1]);
    }
    npending++;
    return;

fail: {
    int e = errno;
    int all[] = {master, in[0], in[1], out[0], out[1], err[0], err[1], rep[0], rep[1],
                 keep[0], keep[1]};
    close_fds(all, (int)(sizeof all / sizeof all[0]));
    free(meta_copy);
    free_child(slot);
    reply_err(ci, id, e, what);
}
}

static void do_signal(int ci, uint32_t id, const unsigned char *body, size_t blen) {
    struct {
        int32_t pid, signum;
        uint32_t flags;
    } req;
    if (blen != sizeof req) {
        mark_dead(ci);
        return;
    }
    memcpy(&req, body, sizeof req);
    if (req.signum < 0 || req.signum >= NSIG) {
        reply_err(ci, id, EINVAL, "signal");
        return;
    }
    /* Only what SPAWN started: never pid 1, init's own group, or the host (tests run init
       without a pid namespace). Each spawned process leads its own session, so its pid
       is its group's id. */
    int i = req.pid > 1 ? find_child(req.pid) : -1;
    if (i < 0 || children[i].state == C_FAILED) {
        reply_err(ci, id, ESRCH, "signal");
        return;
    }
    int rc = kill((req.flags & SIGNAL_GROUP) ? -req.pid : req.pid, req.signum);
    if (rc < 0)
        reply_err(ci, id, errno, "signal");
    else
        reply_ok(ci, id, 0);
}

static void do_list(int ci, uint32_t id, size_t blen) {
    if (blen != 0) {
        mark_dead(ci);
        return;
    }
    /* rbuf is free again: the request was fully parsed */
    struct hdr *h = (struct hdr *)rbuf;
    h->op = RP_LIST;
    h->id = id;
    uint32_t n = 0;
    int32_t *pids = (int32_t *)(rbuf + sizeof *h + 4);
    for (int i = 0; i < children_hi; i++) {
        struct child *ch = &children[i];
        if ((ch->state == C_PENDING || ch->state == C_RUNNING) && !ch->reaped) pids[n++] = ch->pid;
    }
    memcpy(rbuf + sizeof *h, &n, 4);
    send_to(ci, rbuf, sizeof *h + 4 + (size_t)n * 4, NULL, 0);
}

static void do_status(int ci, uint32_t id, const unsigned char *body, size_t blen) {
    struct {
        int32_t pid;
        uint32_t flags;
    } req;
    if (blen != sizeof req) {
        mark_dead(ci);
        return;
    }
    memcpy(&req, body, sizeof req);
    struct {
        struct hdr h;
        int32_t state, code, sig;
    } m = {{RP_STATUS, id}, ST_UNKNOWN, 0, 0};
    int i = req.pid > 0 ? find_child(req.pid) : -1;
    if (i >= 0 && children[i].state != C_FAILED) {
        m.state = ST_RUNNING;
        struct child *ch = &children[i];
        /* in-sandbox code may not divert the agent's exit events away from it, even while
           the agent is away (restarting) */
        int keep = !clients[ci].host &&
                   (ch->by_host || (owner_alive(ch) && clients[ch->owner].host));
        if ((req.flags & STATUS_ADOPT) && !keep) {
            ch->owner = ci;
            ch->owner_gen = clients[ci].gen;
        }
    } else if (req.pid > 0) {
        for (unsigned k = 1; k <= STATUS_RING && k <= ring_next; k++) {
            struct exit_rec *r = &ring[(ring_next - k) % STATUS_RING];
            if (r->pid == req.pid) {
                m.state = ST_EXITED;
                m.code = r->code;
                m.sig = r->sig;
                break;
            }
        }
    }
    send_to(ci, &m, sizeof m, NULL, 0);
}

static void do_adopt(int ci, uint32_t id, const unsigned char *body, size_t blen) {
    int32_t pid;
    if (blen != sizeof pid) {
        mark_dead(ci);
        return;
    }
    memcpy(&pid, body, sizeof pid);
    int i = pid > 1 ? find_child(pid) : -1;
    if (i < 0 || children[i].state == C_FAILED) {
        reply_err(ci, id, ESRCH, "adopt");
        return;
    }
    struct child *ch = &children[i];
    if (ch->state == C_PENDING) {
        reply_err(ci, id, EAGAIN, "adopt");
        return;
    }
    int host = clients[ci].host;
    if (!host && ch->by_host) {
        /* the agent's processes: their output and exits are not the sandbox's to take */
        reply_err(ci, id, EPERM, "adopt");
        return;
    }
    int mine = ch->owner == ci && owner_alive(ch);
    if (!mine && owner_alive(ch) && !(host && ch->by_host)) {
        reply_err(ci, id, EBUSY, "adopt");
        return;
    }
    int fds[2];
    int nfds = 0;
    for (int k = 0; k < ch->nkeep; k++) {
        int fd = fcntl(ch->keep[k], F_DUPFD_CLOEXEC, 3);
        if (fd < 0) {
            int e = errno;
            close_fds(fds, nfds);
            reply_err(ci, id, e, "dup");
            return;
        }
        fds[nfds++] = fd;
    }
    ch->owner = ci;
    ch->owner_gen = clients[ci].gen;
    /* rbuf is free again: the request was fully parsed */
    struct {
        struct hdr h;
        int32_t pid;
        uint32_t flags, nfds;
    } m = {{RP_ADOPTED, id}, ch->pid, ch->flags, (uint32_t)nfds};
    memcpy(rbuf, &m, sizeof m);
    if (ch->metalen) memcpy(rbuf + sizeof m, ch->meta, ch->metalen);
    send_to(ci, rbuf, sizeof m + ch->metalen, fds, nfds);
}

static void handle_message(int ci, size_t len) {
    struct hdr h;
    if (len < sizeof h) {
        mark_dead(ci);
        return;
    }
    memcpy(&h, rbuf, sizeof h);
    const unsigned char *body = rbuf + sizeof h;
    size_t blen = len - sizeof h;
    switch (h.op) {
    case OP_SPAWN:
        do_spawn(ci, h.id, body, blen, 0);
        break;
    case OP_SPAWNM:
        do_spawn(ci, h.id, body, blen, 1);
        break;
    case OP_ADOPT:
        do_adopt(ci, h.id, body, blen);
        break;
    case OP_SIGNAL:
        do_signal(ci, h.id, body, blen);
        break;
    case OP_LIST:
        do_list(ci, h.id, blen);
        break;
    case OP_STATUS:
        do_status(ci, h.id, body, blen);
        break;
    default:
        reply_err(ci, h.id, ENOSYS, "op");
    }
    if (len > 65536) {
        /* give back the pages a big SPAWN touched: idle init stays small */
        madvise(rbuf + 65536, sizeof rbuf - 65536, MADV_DONTNEED);
    }
}

static void read_client(int ci) {
    /* a bounded number of records per wakeup keeps one chatty peer from starving others */
    for (int k = 0; k < 64 && !clients[ci].dead; k++) {
        struct iovec iov = {.iov_base = rbuf, .iov_len = MAX_MSG};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(clients[ci].fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) mark_dead(ci);
            return;
        }
        if (n == 0 || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            /* EOF, oversized, or fds sent to us (the kernel dropped them: no control buffer) */
            mark_dead(ci);
            return;
        }
        handle_message(ci, (size_t)n);
    }
}

/* ---------------------------------------------------------------- setup and loop */

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(s, SIOCSIFFLAGS, &ifr); /* EPERM without CAP_NET_ADMIN: the runtime did it */
    }
    close(s);
}

int main(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '\0' || strlen(argv[1]) > sizeof(((struct sockaddr_un *)0)->sun_path) - 1) {
        fprintf(stderr, "usage: shoal-init <abstract-socket-name (1-107 bytes)>\n");
        return 2;
    }
    /* fds 0-2 must be taken so no pipe we make lands there and gets clobbered by dup2 */
    for (;;) {
        int fd = open("/dev/null", O_RDWR);
        if (fd < 0) break;
        if (fd > 2) {
            close(fd);
            break;
        }
    }
    if (getpid() != 1) {
        /* run outside a pid namespace (tests): still be the reaper of our subtree, and lead
           our own group so a group signal can never reach whoever started us */
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        setsid();
    }

    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGTERM, &ign, NULL);
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGHUP, &ign, NULL);
    sigaction(SIGPIPE, &ign, NULL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    sig_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sig_fd < 0) {
        perror("shoal-init: signalfd");
        return 1;
    }

    loopback_up();

    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t nlen = strlen(argv[1]);
    memcpy(addr.sun_path + 1, argv[1], nlen);
    listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd < 0 ||
        bind(listen_fd, (struct sockaddr *)&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + nlen)) < 0 ||
        listen(listen_fd, 128) < 0) {
        perror("shoal-init: listen");
        return 1;
    }

    /* children[] is left untouched (all C_FREE as zeroed): its pages cost nothing until used */
    for (int i = 0; i < MAX_CLIENTS; i++) clients[i].fd = -1;

    static struct pollfd pfds[2 + MAX_CLIENTS + MAX_PENDING];
    static int who[2 + MAX_CLIENTS + MAX_PENDING]; /* client slot, or -(child slot)-1 */
    for (;;) {
        int n = 0;
        pfds[n++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
        pfds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        int first_client = n;
        for (int i = 0; i < MAX_CLIENTS; i++) {
            if (clients[i].fd < 0) continue;
            who[n] = i;
            pfds[n++] = (struct pollfd){
                .fd = clients[i].fd, .events = (short)(POLLIN | (clients[i].qhead ? POLLOUT : 0))};
        }
        int first_pending = n;
        for (int i = 0; i < children_hi; i++) {
            if (children[i].state != C_PENDING) continue;
            who[n] = i;
            pfds[n++] = (struct pollfd){.fd = children[i].errfd, .events = POLLIN};
        }
        if (poll(pfds, (nfds_t)n, -1) < 0) continue;

        /* exec reports before reaping, so a fast exit rarely needs the reaped-while-pending path */
        for (int k = first_pending; k < n; k++)
            if (pfds[k].revents) resolve_pending(who[k]);
        if (pfds[0].revents) reap();
        for (int k = first_client; k < first_pending; k++) {
            int ci = who[k];
            if (clients[ci].fd < 0) continue;
            if (pfds[k].revents & POLLOUT) flush_queue(ci);
            if (pfds[k].revents & POLLIN)
                read_client(ci);
            else if (pfds[k].revents & (POLLHUP | POLLERR | POLLNVAL))
                mark_dead(ci);
        }
        /* free the slots of finished peers before taking new ones */
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (clients[i].fd >= 0 && clients[i].dead) drop_client(i);
        if (pfds[1].revents) accept_clients();
    }
}
