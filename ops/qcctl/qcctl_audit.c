/* qcctl_audit.c - `qcctl audit ...`: hands the verb to the audit verifier library. */
#include "qcctl_audit.h"

#include <stdio.h>
#include <string.h>

#include "audit_cli.h"

#define QCCTL_AUDIT_PROG "qcctl audit"
#define QCCTL_AUDIT_EXIT_USAGE 2

int qcctl_audit_main(int argc, char **argv)
{
    /* "qcctl audit --help" prints the verbs' usage, as "qcctl audit verify --help" does. */
    if (argc >= 2 && argv != NULL &&
        (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        char *help[] = {"verify", "--help", NULL};
        return audit_cli_main(QCCTL_AUDIT_PROG, 2, help);
    }
    if (argc < 2 || argv == NULL || !audit_cli_is_verb(argv[1])) {
        fprintf(
            stderr,
            "usage: %s verify|show|export|prove|consistency --dir DATA ... (%s verify --help)\n",
            QCCTL_AUDIT_PROG, QCCTL_AUDIT_PROG);
        return QCCTL_AUDIT_EXIT_USAGE;
    }
    return audit_cli_main(QCCTL_AUDIT_PROG, argc - 1, argv + 1);
}
