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
 * It speaks nfnetlink directly (linux/netfilter/nfnetlink_queue.h; no libnetfilter_queue), in
 * the network namespace it runs in. Usage:
 *   qc-netdelay --queue N --delay-ms MS [--seconds S]
 * It binds queue N, prints "ready queue N delay MS ms" on stdout once bound (the caller then
 * inserts its NFQUEUE rule), and runs until SIGTERM or SIGINT (or S seconds, a bound for
 * tests): then it accepts every packet it still holds at once, unbinds, prints one line of
 * counts on stderr and exits 0. Exit 1 on a local failure (bad usage, no nfnetlink_queue).
 *
 * Limits: at most NETDELAY_HELD_MAX packets held (the kernel's queue is as long; beyond it the
 * kernel drops, which is loss, counted by the kernel); the delay is at most NETDELAY_DELAY_MS_MAX.
 */
#define _GNU_SOURCE /* ppoll */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    NETDELAY_HELD_MAX = 65536,     /* packets held at once: 50 ms of a busy 1 Gbit/s link */
    NETDELAY_DELAY_MS_MAX = 10000, /* a test's link, not a satellite */
    NETDELAY_RCVBUF = 16 << 20,    /* room for bursts of packet messages (META copies) */
    NETDELAY_MSG_MAX = 8192,       /* one recv: several packet messages of ~100 bytes */
};

/* One packet held: its id in the queue and when it may go (CLOCK_MONOTONIC, ns). */
typedef struct {
    uint32_t id;
    uint64_t due_ns;
} held_t;

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

/* Appends an attribute to the message in buf (its nlmsg_len grows). */
static void attr_put(struct nlmsghdr *nlh, uint16_t type, const void *data, uint16_t len)
{
    struct nlattr *a = (struct nlattr *)((char *)nlh + NLMSG_ALIGN(nlh->nlmsg_len));
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy((char *)a + NLA_HDRLEN, data, len);
    nlh->nlmsg_len = NLMSG_ALIGN(nlh->nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static struct nlmsghdr *msg_start(char *buf, uint16_t type, uint16_t flags, uint16_t queue)
{
    memset(buf, 0, 256);
    struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
    nlh->nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
    nlh->nlmsg_type = (uint16_t)((NFNL_SUBSYS_QUEUE << 8) | type);
    nlh->nlmsg_flags = flags;
    struct nfgenmsg *g = NLMSG_DATA(nlh);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(queue);
    return nlh;
}

static int send_msg(int fd, const struct nlmsghdr *nlh)
{
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    ssize_t n = sendto(fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&to, sizeof to);
    return n == (ssize_t)nlh->nlmsg_len ? 0 : -1;
}

/* Sends one config message with NLM_F_ACK and waits for the kernel's answer (0 or -errno). */
static int config(int fd, const struct nlmsghdr *nlh)
{
    if (send_msg(fd, nlh) != 0)
        return -errno;
    char buf[NETDELAY_MSG_MAX];
    for (int tries = 0; tries < 100; tries++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            return -ETIMEDOUT;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0)
            return -errno;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_ERROR)
                return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
        }
    }
    return -EPROTO;
}

static int queue_cmd(int fd, uint16_t queue, uint8_t cmd)
{
    char buf[256];
    struct nlmsghdr *nlh = msg_start(buf, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue);
    struct nfqnl_msg_config_cmd c = {.command = cmd, .pf = htons(AF_INET)};
    attr_put(nlh, NFQA_CFG_CMD, &c, sizeof c);
    return config(fd, nlh);
}

/* Binds the queue, copying only packet metadata (the payload stays in the kernel). */
static int queue_bind(int fd, uint16_t queue)
{
    int rc = queue_cmd(fd, queue, NFQNL_CFG_CMD_BIND);
    if (rc != 0)
        return rc;
    char buf[256];
    struct nlmsghdr *nlh = msg_start(buf, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue);
    struct nfqnl_msg_config_params params = {.copy_range = htonl(0), .copy_mode = NFQNL_COPY_META};
    attr_put(nlh, NFQA_CFG_PARAMS, &params, sizeof params);
    uint32_t maxlen = htonl(NETDELAY_HELD_MAX);
    attr_put(nlh, NFQA_CFG_QUEUE_MAXLEN, &maxlen, sizeof maxlen);
    return config(fd, nlh);
}

static int verdict_accept(int fd, uint16_t queue, uint32_t id)
{
    char buf[256];
    struct nlmsghdr *nlh = msg_start(buf, NFQNL_MSG_VERDICT, NLM_F_REQUEST, queue);
    struct nfqnl_msg_verdict_hdr v = {.verdict = htonl(NF_ACCEPT), .id = htonl(id)};
    attr_put(nlh, NFQA_VERDICT_HDR, &v, sizeof v);
    return send_msg(fd, nlh);
}

/* Reads every waiting packet message and holds each packet until now + delay. Returns the
 * number of packets the kernel had to drop from the netlink socket (ENOBUFS), else 0. */
static unsigned long receive(int fd, uint64_t delay_ns, unsigned long *held_total,
                             size_t *held_peak)
{
    char buf[NETDELAY_MSG_MAX];
    unsigned long overruns = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == ENOBUFS) {
                overruns++;
                continue;
            }
            return overruns; /* EAGAIN: nothing more now */
        }
        uint64_t due = now_ns() + delay_ns;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if ((h->nlmsg_type & 0xff) != NFQNL_MSG_PACKET)
                continue;
            size_t off = NLMSG_LENGTH(sizeof(struct nfgenmsg));
            while (off + NLA_HDRLEN <= h->nlmsg_len) {
                const struct nlattr *a = (const struct nlattr *)((const char *)h + off);
                if (a->nla_len < NLA_HDRLEN || off + a->nla_len > h->nlmsg_len)
                    break;
                if ((a->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR &&
                    a->nla_len >= NLA_HDRLEN + sizeof(struct nfqnl_msg_packet_hdr)) {
                    struct nfqnl_msg_packet_hdr ph;
                    memcpy(&ph, (const char *)a + NLA_HDRLEN, sizeof ph);
                    /* The kernel's queue is as long as the ring: it cannot hand more. */
                    assert(ring_count < NETDELAY_HELD_MAX);
                    ring[(ring_head + ring_count) % NETDELAY_HELD_MAX] =
                        (held_t){.id = ntohl(ph.packet_id), .due_ns = due};
                    ring_count++;
                    (*held_total)++;
                    if (ring_count > *held_peak)
                        *held_peak = ring_count;
                    break;
                }
                off += NLA_ALIGN(a->nla_len);
            }
        }
    }
}

/* Lets every held packet whose time has come (all of them with force) go. */
static int release(int fd, uint16_t queue, bool force)
{
    uint64_t now = now_ns();
    while (ring_count > 0 && (force || ring[ring_head].due_ns <= now)) {
        if (verdict_accept(fd, queue, ring[ring_head].id) != 0)
            return -1;
        ring_head = (ring_head + 1) % NETDELAY_HELD_MAX;
        ring_count--;
    }
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: qc-netdelay --queue N --delay-ms MS [--seconds S]\n");
    return 1;
}

int main(int argc, char **argv)
{
    long queue = -1, delay_ms = -1, seconds = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        char *end = NULL;
        long v = strtol(argv[i + 1], &end, 10);
        if (end == argv[i + 1] || *end != '\0')
            return usage();
        if (strcmp(argv[i], "--queue") == 0)
            queue = v;
        else if (strcmp(argv[i], "--delay-ms") == 0)
            delay_ms = v;
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = v;
        else
            return usage();
    }
    if (argc % 2 != 1 || queue < 0 || queue > 65535 || delay_ms < 0 ||
        delay_ms > NETDELAY_DELAY_MS_MAX || seconds < 0)
        return usage();

    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) {
        perror("qc-netdelay: netlink socket");
        return 1;
    }
    int rcvbuf = NETDELAY_RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_nl self = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&self, sizeof self) != 0) {
        perror("qc-netdelay: bind");
        return 1;
    }
    int rc = queue_bind(fd, (uint16_t)queue);
    if (rc != 0) {
        fprintf(stderr, "qc-netdelay: binding queue %ld: %s (no nfnetlink_queue in the kernel?)\n",
                queue, strerror(-rc));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready queue %ld delay %ld ms\n", queue, delay_ms);
    fflush(stdout);

    const uint64_t delay_ns = (uint64_t)delay_ms * 1000000u;
    const uint64_t end_ns = seconds > 0 ? now_ns() + (uint64_t)seconds * 1000000000u : UINT64_MAX;
    unsigned long held_total = 0, overruns = 0;
    size_t held_peak = 0;
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
        if (n > 0)
            overruns += receive(fd, delay_ns, &held_total, &held_peak);
        if (release(fd, (uint16_t)queue, false) != 0) {
            perror("qc-netdelay: verdict");
            status = 1;
            break;
        }
    }
    /* Nothing is left in the kernel waiting for us: what is held goes now. */
    overruns += receive(fd, 0, &held_total, &held_peak);
    if (release(fd, (uint16_t)queue, true) != 0)
        status = 1;
    (void)queue_cmd(fd, (uint16_t)queue, NFQNL_CFG_CMD_UNBIND);
    close(fd);
    fprintf(stderr,
            "qc-netdelay: queue %ld: %lu packets delayed %ld ms, at most %zu held at once, "
            "%lu receive overruns\n",
            queue, held_total, delay_ms, held_peak, overruns);
    return status;
}
