/* ops_crc32c.h - CRC-32C (Castagnoli), the checksum our stores put on every record.
 *
 * LMDB keeps no checksum of keys or values: a flipped bit on disk is read back as data. Each
 * record of the ledger (ledger/ledger_store.h) carries CRC-32C over its key and value, verified
 * on every read. CRC-32C rather than a truncated SHA-256: it catches every error burst of up
 * to 32 bits and every odd number of flipped bits, which is what disks and memory do; it is
 * what ext4, iSCSI, LevelDB and RocksDB use for the same job; and x86-64 computes it in
 * hardware (8 bytes an instruction), so a 4 KiB load record costs well under a microsecond. Neither
 * would stop a person who can write the disk (they could recompute any unkeyed checksum): that is
 * the job of the signatures in the records and of the audit chain. */
#ifndef OPS_CRC32C_H
#define OPS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

#define OPS_CRC32C_SIZE 4 /* bytes of a stored checksum (big-endian) */

/* Extends crc (0 to start) over data[0..len). ops_crc32c(0, "123456789", 9) == 0xE3069283.
 * Uses the CPU's crc32 instruction when it has one (SSE4.2), else ops_crc32c_soft(). */
uint32_t ops_crc32c(uint32_t crc, const void *data, size_t len);

/* The same, one table lookup per byte: the path of CPUs without the instruction (and of the
 * test that both agree). */
uint32_t ops_crc32c_soft(uint32_t crc, const void *data, size_t len);

#endif
