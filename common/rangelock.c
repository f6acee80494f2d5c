#include <stdbool.h>
#include <stdlib.h>

#include "rangelock.h"

static bool
overlaps_held (const struct rangelock *rl, uint64_t start, uint64_t end)
{
  const struct range_held *h;

  for (h = rl->held; h; h = h->next)
    if (start < h->end && h->start < end)
      return true;
  return false;
}

struct range_held *
rangelock_lock (struct rangelock *rl, uint64_t offset, uint64_t length)
{
  struct range_held *t = malloc (sizeof *t);

  if (!t)
    return NULL;
  t->start = offset;
  /* Saturate rather than wrap for ranges reaching the top of the space. */
  t->end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  pthread_mutex_lock (&rl->lock);
  while (overlaps_held (rl, t->start, t->end))
    pthread_cond_wait (&rl->released, &rl->lock);
  t->next = rl->held;
  rl->held = t;
  pthread_mutex_unlock (&rl->lock);
  return t;
}

void
rangelock_unlock (struct rangelock *rl, struct range_held *t)
{
  struct range_held **pp;

  pthread_mutex_lock (&rl->lock);
  for (pp = &rl->held; *pp; pp = &(*pp)->next)
    if (*pp == t) {
      *pp = t->next;
      break;
    }
  pthread_cond_broadcast (&rl->released);
  pthread_mutex_unlock (&rl->lock);
  free (t);
}
