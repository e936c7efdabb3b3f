/* qctest_port.h - the loopback ports of a test.
 *
 * The scheme (tests/CMakeLists.txt, "Ports"): every test that binds TCP ports owns a range of
 * them, declared once in CMake with qc_test_ports(TEST FIRST COUNT). CMake refuses two ranges
 * that overlap, and gives the test its range in the environment as QC_TEST_PORT_FIRST and
 * QC_TEST_PORT_COUNT. The test reads it with qctest_ports() (the default it passes is its
 * declared range, so the binary also runs by hand) and takes port i of it with qctest_port().
 * Scripts read the same two variables. So no two tests of one build collide, whatever ctest -j
 * runs at once; the ports lock (/tmp/qc-ports.lock) keeps two build trees apart.
 *
 * A test that may find its port taken anyway (a process of an earlier run still closing, a
 * build tree run without the lock) looks for a free one in its range with qctest_port_pick(). */
#ifndef QCTEST_PORT_H
#define QCTEST_PORT_H

#include <stdbool.h>

#define QCTEST_PORT_STEP 7   /* qctest_port_pick's stride through a range */
#define QCTEST_PORT_TRIES 28 /* ports qctest_port_pick looks at */
#define QCTEST_ENDPOINT_MAX 64

typedef struct qctest_ports {
    int first; /* the range is first .. first + count - 1 */
    int count;
} qctest_ports_t;

/* The test's range: QC_TEST_PORT_FIRST / QC_TEST_PORT_COUNT from the environment, or
 * first/count when they are unset. Aborts on a malformed value (the build wrote it). */
qctest_ports_t qctest_ports(int first, int count);

/* Port i of the range; i must lie inside it (asserted). */
int qctest_port(const qctest_ports_t *r, int i);

/* True when nothing is bound to 127.0.0.1:port right now. */
bool qctest_port_free(int port);

/* A free port of r, looked for from port start (wrapped into r) in steps of QCTEST_PORT_STEP,
 * other than avoid (-1: none). Returns start (wrapped) when none of QCTEST_PORT_TRIES is
 * free. */
int qctest_port_pick(const qctest_ports_t *r, int start, int avoid);

/* "tcp://127.0.0.1:PORT" into out (capacity QCTEST_ENDPOINT_MAX). */
void qctest_endpoint(int port, char out[QCTEST_ENDPOINT_MAX]);

#endif
