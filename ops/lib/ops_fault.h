/* ops_fault.h - named fault points for the chaos suite: compiled in always, off by default.
 *
 * QC_FAULT=name[,name...] in the environment (read once) arms points; an armed point kills
 * the process with SIGKILL when reached, so tests can crash a service at an exact step.
 * QC_FAULT_SKIP=n lets the first n hits pass; hits are counted across all armed points.
 * Just before dying the point logs {"level":"error","event":"fault.fired","point":name,
 * "hit":"n"}. At most 16 points of up to 63 bytes each are armed; others are logged as
 * "fault.not_armed". */
#ifndef OPS_FAULT_H
#define OPS_FAULT_H

/* Crashes the process (SIGKILL, no cleanup) if name is armed; otherwise does nothing. */
void ops_fault_point(const char *name);

#endif
