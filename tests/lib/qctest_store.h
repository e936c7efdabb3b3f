/* qctest_store.h - `init` of a store before a test starts its service, as an operator does once
 * (ops/lib/ops_store.h). */
#ifndef QCTEST_STORE_H
#define QCTEST_STORE_H

/* When the directory data holds no store with an identity, runs `args[0] init [--upgrade]
 * args[1..]` (args NULL-terminated: the service's own command line, whose flags init reads
 * too), with --upgrade when data.mdb exists without one (a store a test filled through the
 * store API). Its output goes to log. A store that exists but is damaged is left alone, so the
 * service's own refusal is what the test sees. Returns 0, or -1 when init failed. */
int qctest_store_init(const char *const *args, const char *data, const char *log);

#endif
