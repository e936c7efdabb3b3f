/* chaos_check_main.c - chaos_check FACTS: the verdicts of a chaos run (qc-chaos-check's core). */
#include "chaos_check.h"

#include "qc_error.h"

#include <stdio.h>
#include <string.h>

enum { MAIN_EXIT_PASS = 0, MAIN_EXIT_FAIL = 1, MAIN_EXIT_USAGE = 2 };

static void usage(FILE *to)
{
    fprintf(to, "Usage: chaos_check [FACTS]\n"
                "Proves the bank invariants of a chaos run from the facts file that\n"
                "tests/chaos/qc-chaos-check gathers (format: tests/chaos/chaos_check.c), read\n"
                "from FACTS or standard input. Prints PASS, FAIL or PENDING with figures for\n"
                "each property. Exit: 0 none failed, 1 one failed, 2 usage or unreadable facts.\n");
}

int main(int argc, char **argv)
{
    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))) {
        usage(argc > 2 ? stderr : stdout);
        return argc > 2 ? MAIN_EXIT_USAGE : MAIN_EXIT_PASS;
    }
    FILE *in = stdin;
    if (argc == 2 && strcmp(argv[1], "-") != 0) {
        in = fopen(argv[1], "r");
        if (in == NULL) {
            perror(argv[1]);
            return MAIN_EXIT_USAGE;
        }
    }
    chaos_check_result_t r;
    int rc = chaos_check_run(in, stdout, &r);
    if (in != stdin)
        fclose(in);
    if (rc != 0) {
        fprintf(stderr, "chaos_check: %s\n", qc_strerror(rc));
        return MAIN_EXIT_USAGE;
    }
    printf("%s: %d failed, %d pending, %d passed\n", r.failed == 0 ? "PASS" : "FAIL", r.failed,
           r.pending, CHAOS_CHECK_COUNT - r.failed - r.pending);
    return r.failed == 0 ? MAIN_EXIT_PASS : MAIN_EXIT_FAIL;
}
