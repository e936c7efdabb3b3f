/* qc_curve_keygen.c - writes a new CURVE key pair for a quancun service or client. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proto_rpc.h"
#include "qc_error.h"

static void usage(FILE *to)
{
    fprintf(to, "usage: qc-curve-keygen PATH\n"
                "Writes a new CURVE key pair to PATH (mode 0600, lines \"public = Z85\" and\n"
                "\"secret = Z85\") and the public key alone to PATH.pub, one Z85 line, ready\n"
                "to append to a server's allow-list. Refuses to overwrite an existing PATH.\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    /* proto_curve_keypair_create() refuses to overwrite too; this only names the reason. */
    if (access(argv[1], F_OK) == 0) {
        fprintf(stderr, "qc-curve-keygen: %s: already exists, not overwriting a key\n", argv[1]);
        return 1;
    }
    proto_curve_keypair_t kp;
    int rc = proto_curve_keypair_create(argv[1], &kp);
    if (rc != 0) {
        fprintf(stderr, "qc-curve-keygen: %s: %s\n", argv[1], qc_strerror(rc));
        return 1;
    }
    printf("%s\n", kp.public_z85);
    proto_curve_keypair_wipe(&kp);
    return 0;
}
