/* deploy_delay.c - qc-netdelay: delays every packet of one netfilter queue (NFQUEUE) by a fixed
 * time, for the multi-host tests (tests/deploy/netns_lib.sh, nsx_delay).
 *
 * Why this and not tc netem: the kernel of the test machine is built without sch_netem (and
 * without modules at all), and without fq, etf and cake, the qdiscs that honour a packet's
 * departure time (skb->tstamp) that a BPF program could set. It has nfnetlink_queue and the
 * NFQUEUE target: iptables hands each matching packet to this program, which holds it (the
 * packet stays in the kernel; only its id and a few bytes of metadata come here) and gives its
 * verdict ACCEPT once the delay has passed, in arrival order. The packet then goes on its way
 * unchanged, so the delay is real for every protocol on the link (ZeroMQ, Raft, HTTP).
 *
 * The messages are built and parsed by libnetfilter_queue's nfq_nlmsg_* functions and sent and
 * received with libmnl (Debian: libnetfilter-queue-dev, libmnl-dev), in the network namespace
 * it runs in. Usage:
 *   qc-netdelay --queue N --delay-ms MS [--seconds S]
 * It binds queue N, prints "ready queue N delay MS ms" on stdout once bound (the caller then
 * inserts its NFQUEUE rule), and runs until SIGTERM or SIGINT (or S seconds, a bound for
 * tests): then it accepts every packet it still holds at once, unbinds, prints one line of
 * counts on stderr and exits 0. Exit 1 on a local failure (bad usage, no nfnetlink_queue).
 *
 * Limits: at most NETDELAY_HELD_MAX packets held; the kernel's queue is given the same length,
 * and beyond it the kernel drops the packet (loss, which the kernel counts in
 * /proc/net/netfilter/nfnetlink_queue). Should the hold queue be full all the same, the packet
 * is accepted at once, undelayed, and counted ("passed undelayed, hold queue full"). A receive
 * overrun (ENOBUFS: the socket's buffer was full, packet messages lost) is counted; the kernel
 * still holds those packets until the queue is unbound. The delay is at most
 * NETDELAY_DELAY_MS_MAX.
 */
#define _GNU_SOURCE /* ppoll */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum {
    NETDELAY_HELD_MAX = 65536,     /* packets held at once: 50 ms of a busy 1 Gbit/s link */
    NETDELAY_DELAY_MS_MAX = 10000, /* a test's link, not a satellite */
    NETDELAY_RCVBUF = 16 << 20,    /* room for bursts of packet messages (META copies) */
    NETDELAY_MSG_MAX = 8192,       /* one recv: several packet messages of ~100 bytes */
    NETDELAY_ACK_TRIES_MAX = 100,  /* receives while waiting for a config message's ack */
};

/* One packet held: its id in the queue and when it may go (CLOCK_MONOTONIC, ns). */
typedef struct {
    uint32_t id;
    uint64_t due_ns;
} held_t;

/* What the run counts, printed at exit. */
typedef struct {
    unsigned long delayed;   /* packets held and then accepted */
    unsigned long undelayed; /* accepted at once: the hold queue was full */
    unsigned long overruns;  /* receives that failed with ENOBUFS */
    size_t held_peak;        /* most packets held at once */
} counts_t;

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A ring of held packets in arrival order: the same delay for each keeps it sorted by due. */
static held_t ring[NETDELAY_HELD_MAX];
static size_t ring_head, ring_count;

static int verdict_accept(struct mnl_socket *nl, uint16_t queue, uint32_t id)
{
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, queue);
    nfq_nlmsg_verdict_put(nlh, (int)id, NF_ACCEPT);
    return mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0 ? -1 : 0;
}

/* Sends one config message with NLM_F_ACK and waits for the kernel's answer (0 or -errno). */
static int config(struct mnl_socket *nl, struct nlmsghdr *nlh)
{
    nlh->nlmsg_flags |= NLM_F_ACK;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
        return -errno;
    char buf[NETDELAY_MSG_MAX];
    for (int tries = 0; tries < NETDELAY_ACK_TRIES_MAX; tries++) {
        struct pollfd p = {.fd = mnl_socket_get_fd(nl), .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            return -ETIMEDOUT;
        ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof buf);
        if (n < 0)
            return -errno;
        /* The ack (an error 0) stops the run; an error sets errno; a packet is not ours yet. */
        int rc = mnl_cb_run(buf, (size_t)n, 0, mnl_socket_get_portid(nl), NULL, NULL);
        if (rc == MNL_CB_ERROR)
            return -errno;
        if (rc == MNL_CB_STOP)
            return 0;
    }
    return -EPROTO;
}

static int queue_cmd(struct mnl_socket *nl, uint16_t queue, uint8_t cmd)
{
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, cmd);
    return config(nl, nlh);
}

/* Binds the queue, copying only packet metadata (the payload stays in the kernel), with the
 * kernel's queue as long as the hold queue. */
static int queue_bind(struct mnl_socket *nl, uint16_t queue)
{
    int rc = queue_cmd(nl, queue, NFQNL_CFG_CMD_BIND);
    if (rc != 0)
        return rc;
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_META, 0);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, NETDELAY_HELD_MAX);
    return config(nl, nlh);
}

/* What on_packet needs: the socket and queue (to accept at once when full), the due time of
 * the packets of this receive, the counts; verdict_failed once a verdict could not be sent. */
typedef struct {
    struct mnl_socket *nl;
    uint16_t queue;
    uint64_t due_ns;
    counts_t *counts;
    bool verdict_failed;
} receive_t;

/* Holds the packet of one packet message until its due time. */
static int on_packet(const struct nlmsghdr *nlh, void *data)
{
    receive_t *r = data;
    struct nlattr *attr[NFQA_MAX + 1] = {0};
    if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL ||
        mnl_attr_get_payload_len(attr[NFQA_PACKET_HDR]) < sizeof(struct nfqnl_msg_packet_hdr))
        return MNL_CB_OK; /* not a packet message we can act on: the kernel's to time out */
    const struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
    uint32_t id = ntohl(ph->packet_id);
    assert(ring_count <= NETDELAY_HELD_MAX);
    if (ring_count == NETDELAY_HELD_MAX) {
        r->counts->undelayed++;
        r->verdict_failed = verdict_accept(r->nl, r->queue, id) != 0;
        return r->verdict_failed ? MNL_CB_ERROR : MNL_CB_OK;
    }
    ring[(ring_head + ring_count) % NETDELAY_HELD_MAX] = (held_t){.id = id, .due_ns = r->due_ns};
    ring_count++;
    r->counts->delayed++;
    if (ring_count > r->counts->held_peak)
        r->counts->held_peak = ring_count;
    return MNL_CB_OK;
}

/* An error message (the kernel's answer to a verdict it refused) does not stop the reading of
 * the packet messages after it in the same receive. */
static int on_error(const struct nlmsghdr *nlh, void *data)
{
    (void)nlh;
    (void)data;
    return MNL_CB_OK;
}
static mnl_cb_t ctl[NLMSG_ERROR + 1] = {[NLMSG_ERROR] = on_error};

/* Reads every waiting packet message (the socket is non-blocking) and holds each packet until
 * now + delay. 0, or -1 when a verdict could not be sent (errno). */
static int receive(struct mnl_socket *nl, uint16_t queue, uint64_t delay_ns, counts_t *counts)
{
    char buf[NETDELAY_MSG_MAX];
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof buf);
        if (n < 0) {
            if (errno == ENOBUFS) {
                counts->overruns++;
                continue;
            }
            return 0; /* EAGAIN: nothing more now */
        }
        receive_t r = {.nl = nl, .queue = queue, .due_ns = now_ns() + delay_ns, .counts = counts};
        (void)mnl_cb_run2(buf, (size_t)n, 0, 0, on_packet, &r, ctl, MNL_ARRAY_SIZE(ctl));
        if (r.verdict_failed)
            return -1;
    }
}

/* Lets every held packet whose time has come (all of them with force) go. */
static int release(struct mnl_socket *nl, uint16_t queue, bool force)
{
    uint64_t now = now_ns();
    while (ring_count > 0 && (force || ring[ring_head].due_ns <= now)) {
        if (verdict_accept(nl, queue, ring[ring_head].id) != 0)
            return -1;
        ring_head = (ring_head + 1) % NETDELAY_HELD_MAX;
        ring_count--;
    }
    return 0;
}

static const char usage_text[] =
    "usage: qc-netdelay --queue N --delay-ms MS [--seconds S]\n"
    "Holds every packet of netfilter queue N (an iptables NFQUEUE rule) for MS ms (at most %d),\n"
    "then accepts it unchanged. Prints \"ready queue N delay MS ms\" once bound; on SIGTERM,\n"
    "SIGINT or after S seconds accepts what it holds, prints its counts on stderr, exits 0.\n";

static int usage(FILE *to, int status)
{
    fprintf(to, usage_text, NETDELAY_DELAY_MS_MAX);
    return status;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--help") == 0)
        return usage(stdout, 0);
    long queue = -1, delay_ms = -1, seconds = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        char *end = NULL;
        long v = strtol(argv[i + 1], &end, 10);
        if (end == argv[i + 1] || *end != '\0')
            return usage(stderr, 1);
        if (strcmp(argv[i], "--queue") == 0)
            queue = v;
        else if (strcmp(argv[i], "--delay-ms") == 0)
            delay_ms = v;
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = v;
        else
            return usage(stderr, 1);
    }
    if (argc % 2 != 1 || queue < 0 || queue > 65535 || delay_ms < 0 ||
        delay_ms > NETDELAY_DELAY_MS_MAX || seconds < 0)
        return usage(stderr, 1);

    struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
    if (nl == NULL) {
        perror("qc-netdelay: netlink socket");
        return 1;
    }
    int fd = mnl_socket_get_fd(nl);
    int rcvbuf = NETDELAY_RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0 ||
        mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) != 0) {
        perror("qc-netdelay: netlink bind");
        mnl_socket_close(nl);
        return 1;
    }
    int rc = queue_bind(nl, (uint16_t)queue);
    if (rc != 0) {
        fprintf(stderr, "qc-netdelay: binding queue %ld: %s (no nfnetlink_queue in the kernel?)\n",
                queue, strerror(-rc));
        mnl_socket_close(nl);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready queue %ld delay %ld ms\n", queue, delay_ms);
    fflush(stdout);

    const uint64_t delay_ns = (uint64_t)delay_ms * 1000000u;
    const uint64_t end_ns = seconds > 0 ? now_ns() + (uint64_t)seconds * 1000000000u : UINT64_MAX;
    counts_t counts = {0};
    int status = 0;
    while (!stop_requested && now_ns() < end_ns) {
        /* Sleep until the next packet is due, a new one comes, or 100 ms pass. */
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
        if (ring_count > 0) {
            uint64_t now = now_ns(), due = ring[ring_head].due_ns;
            uint64_t wait = due > now ? due - now : 0;
            if (wait < 100000000u)
                ts.tv_nsec = (long)wait;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = ppoll(&p, 1, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            perror("qc-netdelay: poll");
            status = 1;
            break;
        }
        if ((n > 0 && receive(nl, (uint16_t)queue, delay_ns, &counts) != 0) ||
            release(nl, (uint16_t)queue, false) != 0) {
            perror("qc-netdelay: verdict");
            status = 1;
            break;
        }
    }
    /* Nothing is left in the kernel waiting for us: what is held goes now. */
    if (receive(nl, (uint16_t)queue, 0, &counts) != 0 || release(nl, (uint16_t)queue, true) != 0)
        status = 1;
    (void)queue_cmd(nl, (uint16_t)queue, NFQNL_CFG_CMD_UNBIND);
    mnl_socket_close(nl);
    fprintf(stderr,
            "qc-netdelay: queue %ld: %lu packets delayed %ld ms, at most %zu held at once, "
            "%lu receive overruns, %lu passed undelayed (hold queue full)\n",
            queue, counts.delayed, delay_ms, counts.held_peak, counts.overruns, counts.undelayed);
    return status;
}
