/* ledger_raftnet.h - the replica links of a shard: a libraft transport (struct
 * raft_uv_transport) over ZeroMQ CURVE, so replica traffic is authenticated and encrypted
 * like every other link, where libraft's stock TCP transport does neither.
 *
 * Who may talk. Every replica has its own CURVE key pair (raft_key) and a table of the
 * shard's replicas (replicas_file): raft id, raft address "host:port" and public key. A link
 * exists only between entries of that table:
 *   - inbound, the ROUTER bound at tcp://<own raft address> admits through ZAP (rpc_zap.h)
 *     only the public keys of the table; a refused key is logged (rpc.refused) and counted
 *     (qc_rpc_refused_total{service="raft"}). A connection it admits must then say hello
 *     claiming a raft id; the id must be the table's entry of the key that authenticated the
 *     connection (ZMQ's User-Id), and the address it claims must be that entry's. Anything
 *     else is refused (raftnet.refused, stats.hello_refused) and answered with BYE;
 *   - outbound, a DEALER connects to the address raft asks for with the server key of the
 *     table's entry for that id (unknown id or other address: the connect fails), so a host
 *     that is not that replica cannot finish the CURVE handshake.
 * So a host that is not a listed replica can neither join nor inject entries, and a listed
 * replica cannot speak as another.
 *
 * How it carries raft's bytes. libraft's uv I/O writes its messages on the streams that
 * connect() returns and reads them from the ones it is handed through accept_cb; it never
 * reads an outbound stream nor writes an inbound one. Each link is a socketpair(AF_UNIX):
 * raft gets one end as a uv_pipe_t on its loop; one bridge thread per transport owns every
 * ZMQ socket and the other ends, and polls them all together (zmq_poll takes raw fds). It
 * hands events to the loop through a uv_async_t: every callback into raft (connect's cb,
 * accept_cb, close's cb) runs on the loop thread, and never from inside the call that asked.
 *
 * Wire (one ZMQ frame per message after the ROUTER's routing id; integers big-endian):
 *   HELLO   'H' | version (1) | raft id (8) | raft address (1..LEDGER_RAFTNET_ADDRESS_MAX-1)
 *           dealer -> router, first message of an outbound link
 *   WELCOME 'W' | version (1)                 router -> dealer: the hello was accepted
 *   DATA    'D' | 1..LEDGER_RAFTNET_CHUNK_MAX bytes of raft's stream, dealer -> router
 *   BYE     'B'                               router -> dealer: no link (refused hello,
 *           data without hello, stream closed or replaced); the dealer closes its link
 * A connect completes when WELCOME arrives, within LEDGER_RAFTNET_CONNECT_TIMEOUT_MS; a
 * raft message of any size (a snapshot is one message) is cut into DATA chunks. Frames over
 * LEDGER_RAFTNET_FRAME_MAX are dropped by libzmq (ZMQ_MAXMSGSIZE) before we see them; DATA
 * from a routing id without an accepted hello is dropped and counted (stats.frames_dropped).
 *
 * Liveness. An outbound link is closed (raft's next write on it fails, and raft connects
 * again through connect()) when its ZMQ connection drops (the socket monitor's DISCONNECTED;
 * ZMQ heartbeats, as on every RPC socket, turn a silent peer into one) or BYE arrives. An inbound
 * link is closed when raft closes its stream, when the same replica says hello again (a restarted
 * replica replaces its old link), or when the table no longer lists its key. Both directions are
 * flow-controlled: the bridge stops reading raft's stream while ZMQ is at its high-water mark,
 * and stops reading the ROUTER while raft has not taken what it got.
 *
 * The process must ignore SIGPIPE (ops_signal does): a write on a closed link raises it, as
 * it does with libraft's TCP transport. Errors are QC_E* codes for the functions below; the
 * transport's own entry points answer libraft with RAFT_* codes, as it expects. */
#ifndef LEDGER_RAFTNET_H
#define LEDGER_RAFTNET_H

#include <stddef.h>
#include <stdint.h>

#include "proto_curve.h"
#include "qc_error.h"

struct raft_uv_transport;
struct uv_loop_s;

#define LEDGER_RAFTNET_VERSION 1
#define LEDGER_RAFTNET_PEERS_MAX 16    /* replicas in a table: groups are 1, 3 or 5, plus room */
#define LEDGER_RAFTNET_ADDRESS_MAX 256 /* a raft address "host:port" with its NUL */
#define LEDGER_RAFTNET_CHUNK_MAX 65536 /* bytes of raft's stream per DATA frame */
#define LEDGER_RAFTNET_FRAME_MAX (LEDGER_RAFTNET_CHUNK_MAX + 1)
#define LEDGER_RAFTNET_INBOUND_MAX 32  /* inbound links at once (2 per peer: one replacing) */
#define LEDGER_RAFTNET_OUTBOUND_MAX 32 /* outbound links at once */
#define LEDGER_RAFTNET_HWM 64          /* frames queued per ZMQ link: 4 MiB of chunks */
#define LEDGER_RAFTNET_CONNECT_TIMEOUT_MS 1000 /* connect() to WELCOME, at most */

#define LEDGER_RAFTNET_MSG_HELLO 'H'
#define LEDGER_RAFTNET_MSG_WELCOME 'W'
#define LEDGER_RAFTNET_MSG_DATA 'D'
#define LEDGER_RAFTNET_MSG_BYE 'B'
#define LEDGER_RAFTNET_HELLO_HEAD 10 /* 'H', version, raft id: then the address */

/* One replica of the shard, as replicas_file lists it. */
typedef struct ledger_raftnet_peer {
    uint64_t id;                                  /* raft id, >= 1 */
    char address[LEDGER_RAFTNET_ADDRESS_MAX];     /* "host:port", as raft knows it */
    char public_z85[PROTO_CURVE_KEY_Z85_LEN + 1]; /* its raft_key's public half */
} ledger_raftnet_peer_t;

/* What a transport has seen since ledger_raftnet_init(); safe to read from any thread. Each
 * counter is also a metric of the process, summed over its transports (one in qc-ledger):
 * qc_raftnet_links_total{direction="out"|"in"}, qc_raftnet_connects_failed_total,
 * qc_raftnet_links_lost_total, qc_raftnet_links_replaced_total,
 * qc_raftnet_hellos_refused_total, qc_raftnet_frames_dropped_total. */
typedef struct ledger_raftnet_stats {
    uint64_t links_out;       /* outbound links opened (WELCOME received) */
    uint64_t connects_failed; /* connect() attempts that ended without a link */
    uint64_t links_out_lost;  /* open outbound links closed by a drop or a BYE */
    uint64_t links_in;        /* hellos accepted */
    uint64_t links_replaced;  /* inbound links closed by a new hello of the same replica */
    uint64_t hello_refused;   /* hellos refused: id, key, address, version, size, full */
    uint64_t frames_dropped;  /* frames from a routing id without an accepted hello, or bad */
} ledger_raftnet_stats_t;

/* Makes *t a transport for raft_uv_init(): keys is this replica's key pair (copied; the
 * caller wipes its own), peers the shard's table (copied; it includes this replica, whose
 * entry raft's init() must match). Nothing is bound and no thread runs until raft starts
 * (listen). Returns 0, QC_EINVAL (a peer without id, address or a valid key, an id twice,
 * more than LEDGER_RAFTNET_PEERS_MAX) or QC_ENOMEM; on error *t holds nothing to free. */
QC_MUST_CHECK int ledger_raftnet_init(struct raft_uv_transport *t, struct uv_loop_s *loop,
                                      const proto_curve_keypair_t *keys,
                                      const ledger_raftnet_peer_t *peers, size_t n_peers);

/* Replaces the table (SIGHUP re-reads replicas_file): new connections and hellos are checked
 * against it, the ZAP allow-list becomes its keys, and open links of a replica no longer
 * listed with the same key are closed. Any thread. Returns 0, QC_EINVAL (as init; the table
 * is kept) or QC_ENOMEM. */
QC_MUST_CHECK int ledger_raftnet_set_peers(struct raft_uv_transport *t,
                                           const ledger_raftnet_peer_t *peers, size_t n);

/* Copies the counters into *out. */
void ledger_raftnet_stats(struct raft_uv_transport *t, ledger_raftnet_stats_t *out);

/* Frees what init made, once raft_close() has completed (its transport close callback has
 * run), or when raft never initialised the transport. Wipes the secret key. Called before
 * raft_close() completed (a caller that gave up waiting), it logs raftnet.close_pending and
 * leaves the transport allocated: the loop still holds its handle. */
void ledger_raftnet_close(struct raft_uv_transport *t);

#endif
