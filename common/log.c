#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"

static sxm_log_sink sink;
static const char *program = "sxm";
static int debug_to_stderr = -1;

void
sxm_log_set_sink (sxm_log_sink s)
{
  sink = s;
}

void
sxm_log_set_program (const char *name)
{
  program = name;
}

static void
vlog (enum sxm_log_level level, const char *fmt, va_list ap)
{
  char msg[1024];

  vsnprintf (msg, sizeof msg, fmt, ap);
  if (sink) {
    sink (level, msg);
    return;
  }
  if (level == SXM_LOG_DEBUG) {
    if (debug_to_stderr == -1)
      debug_to_stderr = getenv ("SXM_DEBUG") != NULL;
    if (!debug_to_stderr)
      return;
  }
  fprintf (stderr, "%s: %s%s\n", program,
           level == SXM_LOG_DEBUG ? "debug: " : "", msg);
}

void
sxm_error (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vlog (SXM_LOG_ERROR, fmt, ap);
  va_end (ap);
}

void
sxm_debug (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vlog (SXM_LOG_DEBUG, fmt, ap);
  va_end (ap);
}
