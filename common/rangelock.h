/* Byte-range locks: a writer of [offset, offset+length) waits only for
 * holders of overlapping ranges, so writers of different blocks never
 * serialise.  Used where several NBD requests may touch the same block
 * (allocation in the VHD writer, the mirror's copy/guest-write exclusion).
 *
 * Locks are exclusive and not re-entrant.  Waiters are woken on every unlock
 * and re-check; held ranges are few (bounded by requests in flight), so a
 * list is the right structure. */
#ifndef SXM_RANGELOCK_H
#define SXM_RANGELOCK_H

#include <pthread.h>
#include <stdint.h>

struct range_held {
  uint64_t start, end;
  struct range_held *next;
};

struct rangelock {
  pthread_mutex_t lock;
  pthread_cond_t released;
  struct range_held *held;
};

#define RANGELOCK_INIT \
  { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL }

/* Block until [offset, offset+length) overlaps no held range, then hold it.
 * Returns a token for rangelock_unlock, or NULL on ENOMEM. */
struct range_held *rangelock_lock (struct rangelock *rl, uint64_t offset,
                                   uint64_t length);
void rangelock_unlock (struct rangelock *rl, struct range_held *token);

#endif
