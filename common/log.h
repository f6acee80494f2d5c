/* Logging shared by the plugin, the filter and the command-line tools.
 *
 * Library code in common/ never prints directly: it calls sxm_error() and
 * sxm_debug(), and the host program installs a sink.  The nbdkit plugin routes
 * them to nbdkit_error()/nbdkit_debug(); the tools print to stderr with their
 * program name.  Without a sink, errors go to stderr and debug is dropped. */
#ifndef SXM_LOG_H
#define SXM_LOG_H

enum sxm_log_level { SXM_LOG_ERROR, SXM_LOG_DEBUG };

typedef void (*sxm_log_sink) (enum sxm_log_level level, const char *msg);

void sxm_log_set_sink (sxm_log_sink sink);
void sxm_log_set_program (const char *name); /* prefix for the default sink */

void sxm_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void sxm_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

#endif
