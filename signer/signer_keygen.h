/* signer_keygen.h - `qc-signer keygen`: a key pair made inside the token, its public half out.
 *
 * Generates a P-256 key pair in the token (the private key is never exported) and writes
 * DIR/NAME-vN.pub.pem, DIR/NAME-vN.cert.pem (self-signed by the token key) and
 * DIR/NAME-vN.csr.pem. `qc-signer keygen --help` prints the flags. */
#ifndef SIGNER_KEYGEN_H
#define SIGNER_KEYGEN_H

/* Runs the subcommand; argv[0] is "keygen". Returns the process exit status: 0 when the key
 * and its three files were made (or --help was printed), 1 when the token or a file refused
 * (logged), 2 for bad arguments (on stderr). */
int signer_keygen_main(int argc, char **argv);

#endif
