/* qcctl_audit.h - `qcctl audit verify|show|export|prove|consistency`: the audit log's operator
 * verbs in qcctl.
 *
 * The verbs work offline on a copy of the audit service's data_dir (no RPC, no key pair),
 * so qcctl dispatches to this function before it reads its own config and flags:
 *
 *     if (argc >= 2 && strcmp(argv[1], "audit") == 0)
 *         return qcctl_audit_main(argc - 1, argv + 1);
 *
 * Verbs, flags and exit statuses are those of audit/audit_cli.h:
 *   qcctl audit verify --dir DATA --cert PEM
 *   qcctl audit show --dir DATA [--allow-cert PEM] [--outcome-cert PEM] [--ca PEM] TXN_HEX
 *   qcctl audit export --dir DATA [--from SEQ]
 *   qcctl audit prove --dir DATA --cert PEM [--size N] [--json] TXN_HEX
 *   qcctl audit consistency --dir DATA --cert PEM [--json] OLD NEW */
#ifndef QCCTL_AUDIT_H
#define QCCTL_AUDIT_H

/* Runs `qcctl audit ...`: argv[0] is the word "audit", argv[1] the verb, the rest its
 * arguments. Returns the process exit status: 0 ok, 1 a break or something that does not
 * verify, 2 bad usage or unreadable files. */
int qcctl_audit_main(int argc, char **argv);

#endif
