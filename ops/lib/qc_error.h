/* qc_error.h - the one error-code space of quancun, shared by every service and the wire.
 *
 * Every fallible function returns 0 on success or one of the negative codes below. The
 * codes travel in RpcReply.code, so their values are part of the wire protocol: append new
 * codes, never renumber. qc_strerror() names every code. */
#ifndef QC_ERROR_H
#define QC_ERROR_H

/* The X-macro keeps the enum and the names in one place. */
#define QC_ERRORS(X)                                                                               \
    X(QC_OK, 0, "success")                                                                         \
    /* generic operating errors */                                                                 \
    X(QC_EINVAL, -1, "invalid argument")                                                           \
    X(QC_ENOMEM, -2, "out of memory")                                                              \
    X(QC_EIO, -3, "input/output error")                                                            \
    X(QC_ETIMEOUT, -4, "timed out: the service did not answer, try again")                         \
    X(QC_EUNAVAIL, -5, "service unavailable, try again")                                           \
    X(QC_ECONFIG, -6, "bad configuration")                                                         \
    X(QC_EINTERNAL, -7, "internal error")                                                          \
    X(QC_ENOTFOUND, -8, "not found")                                                               \
    X(QC_EEXIST, -9, "already exists")                                                             \
    X(QC_EFULL, -10, "storage full")                                                               \
    X(QC_EMETHOD, -11, "unknown method")                                                           \
    X(QC_EDENIED, -12, "permission denied")                                                        \
    X(QC_EBUSY, -13, "busy, try again")                                                            \
    X(QC_EROLE, -14, "the caller's role may not have this signed")                                 \
    X(QC_ENOTLEADER, -15, "this replica is not its shard's leader: ask the leader")                \
    X(QC_ENOQUORUM, -16, "no majority of the shard's replicas: nothing changed, try again later")  \
    X(QC_ENOSPACE, -17, "no space left on the bank's disk: nothing changed, try again later")      \
    X(QC_ECORRUPT, -18, "stored data is corrupt: refused, see the service's log")                  \
    /* wire and decoding */                                                                        \
    X(QC_ETOOBIG, -20, "message larger than the limit")                                            \
    X(QC_EDECODE, -21, "malformed message")                                                        \
    X(QC_EMISSING, -22, "a required field is missing")                                             \
    X(QC_EVERSION, -23, "unsupported version")                                                     \
    X(QC_EALG, -24, "unsupported signature algorithm")                                             \
    /* signatures and certificates */                                                              \
    X(QC_EKEYID, -30, "unknown signing key")                                                       \
    X(QC_EBADSIG, -31, "bad signature")                                                            \
    X(QC_ECRYPTO, -32, "cryptographic library failure")                                            \
    X(QC_ECERT, -33, "certificate invalid")                                                        \
    X(QC_ECERTEXPIRED, -34, "certificate expired")                                                 \
    X(QC_ECERTNOTYET, -35, "certificate not yet valid")                                            \
    X(QC_ECERTREVOKED, -36, "certificate revoked")                                                 \
    X(QC_ECERTUSAGE, -37, "certificate key usage does not allow signing")                          \
    X(QC_ECERTCA, -38, "certificate not issued by a trusted CA")                                   \
    X(QC_EDEVICEID, -39, "device id does not match the certificate")                               \
    X(QC_EPIN, -40, "wrong PIN")                                                                   \
    X(QC_ELOCKED, -41, "locked after too many wrong PINs")                                         \
    X(QC_ECRLSTALE, -42, "the bank's revocation list is out of date, try again later")             \
    /* business refusals */                                                                        \
    X(QC_EUNKNOWNDEV, -50, "unknown device")                                                       \
    X(QC_EREVOKED, -51, "device revoked")                                                          \
    X(QC_ENOTBOUND, -52, "device not bound to this account")                                       \
    X(QC_ESTALE, -53, "stale counter: the request is older than the device's state")               \
    X(QC_EFUNDS, -54, "insufficient funds")                                                        \
    X(QC_ELIMIT, -55, "amount outside the account's limits")                                       \
    X(QC_EWALLETCAP, -56, "the wallet would exceed its cap")                                       \
    X(QC_EFROZEN, -57, "account frozen")                                                           \
    X(QC_EUNKNOWNACCT, -58, "unknown account")                                                     \
    X(QC_ECURRENCY, -59, "currency mismatch")                                                      \
    X(QC_ESHARD, -60, "account belongs to another shard")                                          \
    X(QC_EPENDING, -61, "the device has a load in progress")                                       \
    X(QC_EMISMATCH, -62, "message content does not match the load")                                \
    X(QC_EEXPIRED, -63, "deadline passed")                                                         \
    X(QC_ESTATE, -64, "operation not allowed in the load's current state")                         \
    X(QC_EREPLAY, -65, "replayed message")                                                         \
    X(QC_EAMOUNT, -66, "invalid amount")                                                           \
    /* IC card transfers (client/card_*.c) */                                                      \
    X(QC_EUNTRUSTED, -80, "the other side is not in the trusted list")                             \
    X(QC_ECARDMAX, -81, "the card's purse would exceed its maximum")                               \
    X(QC_ECARDPENDING, -82, "a card transfer is in progress: settle it with card-sync")

enum qc_error {
#define QC_ERROR_ENUM(name, value, text) name = value,
    QC_ERRORS(QC_ERROR_ENUM)
#undef QC_ERROR_ENUM
};

/* Marks a fallible function's declaration: a caller that drops its result fails to build
 * (-Werror), because an error code nobody reads is a failure nobody sees. */
#define QC_MUST_CHECK __attribute__((warn_unused_result))

/* Drops the result of a QC_MUST_CHECK call on purpose; a comment beside it says why. GCC
 * does not take a plain (void) cast as that, hence the negation. */
#define QC_IGNORE(call) ((void)!(call))

/* Returns a static, human-readable description of code (0 or a QC_E* code). An unknown
 * code yields "unknown error"; the result is never NULL. */
const char *qc_strerror(int code);

/* Returns the symbolic name of code ("QC_EFUNDS"), or "QC_EUNKNOWN"; never NULL. */
const char *qc_errname(int code);

#endif
