/* audit_cli.h - the operator's verbs on an audit log copy: verify, show, export, prove,
 * consistency.
 *
 * Shared by `qc-audit VERB ...` and `qcctl audit VERB ...`; every verb opens the files
 * read-only (audit_verify.h), so it may run on a copy while the service writes the original.
 *
 *   verify --dir DATA --cert PEM [--json]
 *       Recomputes the whole chain and checks every checkpoint signature against PEM (the
 *       audit-checkpoint certificate or public key), every signed tree head's Merkle root,
 *       and every stored tree node against the entries. Prints a summary (--json: one JSON
 *       object {ok, entries, last_seq, checkpoints, signed_seq, tree_heads, tree_size
 *       [, break_seq, error, why]}); exit 0 when intact, 1 at the first break (its seq is
 *       printed), 2 on bad usage or unreadable files.
 *   show --dir DATA [--allow-cert PEM] [--outcome-cert PEM] [--ca PEM] TXN_HEX
 *       Every entry about one load, in order, with its payload decoded and every signature
 *       in it checked where the key is known: device signatures by the certificate carried
 *       in the request (chained to --ca when given), allows by --allow-cert, outcomes by
 *       --outcome-cert; the allow's request digest and the report's allow digest too.
 *       Exit 0 when everything shown verifies, 1 when something does not, 2 as above.
 *   export --dir DATA [--from SEQ]
 *       Every entry as one JSON object per line (hex ids and hashes, base64 payload).
 *   prove --dir DATA --cert PEM [--size N] [--json] TXN_HEX
 *       Every entry about the load with its RFC 9162 inclusion proof against the latest signed
 *       tree head (or the head of size N), each verified as a device would
 *       (proto_receipt_verify()). --json: {txn, tree_head {size, time_ms, root},
 *       signed_tree_head (base64), entries [{seq, leaf_index, type, leaf_hash, entry (base64),
 *       path [hex]}], pending, verified [, error]}. Exit 0 when every entry verified, 1 when
 *       one does not or there is nothing to prove yet, 2 as above.
 *   consistency --dir DATA --cert PEM [--json] OLD NEW
 *       The consistency proof from the signed tree head of size OLD to that of size NEW (0:
 *       the latest), both heads' signatures checked and the proof verified. --json: {old,
 *       new, proof [hex], consistent [, error]}. Exit 0 consistent, 1 not (or no such head). */
#ifndef AUDIT_CLI_H
#define AUDIT_CLI_H

#include <stdbool.h>

/* True when name is one of the verbs above. */
bool audit_cli_is_verb(const char *name);

/* Runs verb argv[0] with its arguments argv[1..argc); prog names the program in messages
 * ("qc-audit", "qcctl audit"). Writes results to stdout, problems to stderr. Returns the
 * process exit status described above. */
int audit_cli_main(const char *prog, int argc, char **argv);

#endif
