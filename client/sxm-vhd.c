/* sxm-vhd: create and inspect VHD images with the code the plugin uses.
 *
 *   sxm-vhd create [--type=dynamic|fixed] [--block-size=SIZE] [--uuid=U] FILE SIZE
 *   sxm-vhd create [...] --sr DIR SIZE             (DIR/<uuid>.vhd)
 *   sxm-vhd snapshot [--uuid=U] PARENT CHILD
 *   sxm-vhd snapshot --in-place [--uuid=U] LEAF [BASE]
 *   sxm-vhd info [--json] [--size-from=current|chs|qemu] FILE.vhd
 *   sxm-vhd map  [--json] FILE.vhd
 *   sxm-vhd check [--xen] FILE.vhd
 *   sxm-vhd repair FILE.vhd
 *   sxm-vhd set-parent CHILD.vhd PARENT
 *   sxm-vhd relink CHILD.vhd ANCESTOR.vhd
 *   sxm-vhd live SOCKET status|snapshot [BASE]|relink ANCESTOR
 *
 *   sxm-vhd coalesce [--force] CHILD.vhd
 *   sxm-vhd resize FILE.vhd NEW_SIZE
 */

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "jsonline.h"
#include "log.h"
#include "mirrorctl.h"
#include "size.h"
#include "vhd.h"

#ifndef SXM_VERSION
#define SXM_VERSION "unknown"
#endif

enum { EXIT_USAGE = 2, EXIT_REPAIRABLE = 4, EXIT_CORRUPT = 5,
       EXIT_PARENT = 6, EXIT_XEN_REFUSES = 7 };

static void
usage (FILE *f)
{
  fprintf (f,
"usage: sxm-vhd create [--type=dynamic|fixed] [--block-size=SIZE] [--uuid=UUID]\n"
"                      FILE.vhd SIZE\n"
"       sxm-vhd create [--type=...] [--block-size=SIZE] [--uuid=UUID] --sr DIR SIZE\n"
"       sxm-vhd snapshot [--uuid=UUID] PARENT.vhd CHILD.vhd\n"
"       sxm-vhd snapshot --in-place [--uuid=UUID] LEAF.vhd [BASE.vhd]\n"
"       sxm-vhd info [--json] [--size-from=current|chs|qemu] FILE.vhd\n"
"       sxm-vhd map  [--json] FILE.vhd\n"
"       sxm-vhd check [--xen] FILE.vhd\n"
"       sxm-vhd repair FILE.vhd\n"
"       sxm-vhd set-parent CHILD.vhd PARENT\n"
"       sxm-vhd relink CHILD.vhd ANCESTOR.vhd\n"
"       sxm-vhd live SOCKET status | snapshot [BASE.vhd] | relink ANCESTOR.vhd\n"
"       sxm-vhd coalesce [--force] CHILD.vhd\n"
"       sxm-vhd resize FILE.vhd NEW_SIZE\n"
"       sxm-vhd --version | --help\n"
"\n"
"create    a new empty image (default dynamic, 2M blocks); SIZE and block\n"
"          size take K, M, G, T suffixes (powers of 1024); prints its UUID\n"
"          (random unless --uuid); with --sr DIR the image is DIR/UUID.vhd\n"
"          (an SR's naming) and the line is 'UUID PATH'\n"
"snapshot  a new empty differencing child of PARENT (W2ru, W2ku and MacX\n"
"          locators), same size and block size\n"
"          --in-place: LEAF keeps its name and becomes the new empty child;\n"
"          its data stays in its file, renamed BASE (default: LEAF's\n"
"          directory/NEWUUID.vhd), crash-safely; prints BASE\n"
"info      header fields of FILE and of every parent in its chain (and\n"
"          whether the end footer is missing)\n"
"map       allocated ranges of the whole chain (what NBD block status reports)\n"
"check     full consistency check of FILE and its parents, and whether\n"
"          XenServer's tools (blktap's vhd-util check) would accept each\n"
"          file; --xen: if not, the exit status says so (4 when repair\n"
"          fixes it, else 7)\n"
"repair    fix what check calls repairable (a geometry XenServer refuses,\n"
"          a missing or stale footer copy), offline, crash-safely\n"
"set-parent  point CHILD at PARENT after the parent moved (PARENT must be\n"
"          the image CHILD was made over: its UUID is checked); new\n"
"          locators, written crash-safely, offline\n"
"relink    point CHILD at ANCESTOR, an image further down its chain, after\n"
"          the layers between were coalesced into it (they drop out)\n"
"live      the same snapshot (in place) and relink on a file a running\n"
"          nbdkit vhd serves, through its control=SOCKET; prints the JSON\n"
"          reply (exit 1 if it says ok:false)\n"
"coalesce  merge differencing CHILD into its parent (refused if the parent\n"
"          has another child in its directory, unless --force)\n"
"resize    grow a dynamic or differencing image (offline)\n"
"\n"
"Existing files are never overwritten.  Exit status: 0 ok (check: clean),\n"
"1 the image could not be found, opened, read or written (system error),\n"
"2 usage, 4 check: repairable (safe to serve), 5 invalid or corrupt image,\n"
"6 a parent could not be found, opened or matched (the image itself passed\n"
"its own checks), 7 check --xen: sound, but XenServer's tools would refuse\n"
"it in a way repair does not fix.\n");
}

static int open_failure (const char *name, bool say);

/* live SOCKET COMMAND [PATH]: one request to a serving plugin's control
 * socket.  Snapshot and relink wait as long as they take (the plugin
 * holds guest requests meanwhile, so they are short). */
static int
live (int n, char **args)
{
  struct jbuf req = { 0 };
  struct json_obj reply;
  char *raw = NULL;
  bool ok = false;
  int fd, r;

  if (n < 2 || n > 3 ||
      (strcmp (args[1], "status") == 0 && n != 2) ||
      (strcmp (args[1], "relink") == 0 && n != 3) ||
      (strcmp (args[1], "snapshot") != 0 && strcmp (args[1], "status") != 0
       && strcmp (args[1], "relink") != 0)) {
    fprintf (stderr, "sxm-vhd live: expected SOCKET status, SOCKET snapshot "
             "[BASE.vhd] or SOCKET relink ANCESTOR.vhd\n");
    return EXIT_USAGE;
  }
  jbuf_add (&req, "{\"cmd\":");
  jbuf_str (&req, args[1]);
  if (n == 3) {
    jbuf_add (&req, strcmp (args[1], "relink") == 0 ? ",\"parent\":"
                                                    : ",\"base\":");
    jbuf_str (&req, args[2]);
  }
  jbuf_add (&req, "}");
  if (req.oom) {
    fprintf (stderr, "sxm-vhd: out of memory\n");
    return EXIT_FAILURE;
  }
  fd = mirrorctl_connect (args[0]);
  if (fd == -1) {
    jbuf_free (&req);
    return EXIT_FAILURE;
  }
  r = mirrorctl_call (fd, req.s, 0, &reply, &raw);
  jbuf_free (&req);
  close (fd);
  if (r == -1)
    return EXIT_FAILURE;
  printf ("%s\n", raw);
  if (json_bool (&reply, "ok", &ok) == -1 || !ok) {
    const char *e = json_str (&reply, "error");
    fprintf (stderr, "sxm-vhd live: %s\n", e ? e : "refused");
    ok = false;
  }
  json_free (&reply);
  free (raw);
  return ok ? 0 : EXIT_FAILURE;
}

/* snapshot --in-place LEAF [BASE] (BASE: vhd_snapshot_in_place's
 * default when not given). */
static int
snapshot_in_place (int n, char **args, const uuid_t uuid)
{
  char *base;

  if (n != 1 && n != 2) {
    fprintf (stderr, "sxm-vhd snapshot --in-place: expected LEAF.vhd "
             "[BASE.vhd]\n");
    return EXIT_USAGE;
  }
  if (vhd_snapshot_in_place (args[0], n == 2 ? args[1] : NULL, uuid,
                             &base) == -1)
    return EXIT_FAILURE;
  printf ("%s\n", base);
  free (base);
  return 0;
}

/* Print S as a JSON string, escaped. */
static void
print_json_str (const char *s)
{
  putchar ('"');
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      printf ("\\%c", c);
    else if (c < 0x20)
      printf ("\\u%04x", c);
    else
      putchar (c);
  }
  putchar ('"');
}

/* The 4-byte creator fields may hold NULs or binary; show them printable. */
static const char *
printable4 (const char *in, char out[17])
{
  char *o = out;
  int i;

  for (i = 0; i < 4; i++) {
    unsigned char c = in[i];
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"')
      *o++ = c;
    else
      o += sprintf (o, "\\x%02x", c);
  }
  *o = '\0';
  return out;
}

/* Which of the two sizes the rule gave (the image may have them equal). */
static const char *
size_rule_used (const struct vhd_layer *l)
{
  uint64_t chs = vhd_chs_size (&l->footer);
  if (l->size == chs && l->size == l->footer.current_size / VHD_SECTOR * VHD_SECTOR)
    return "chs = current_size";
  return l->size == chs ? "chs" : "current_size";
}

static void
time_str (uint32_t vhd_ts, char out[32])
{
  time_t t = (time_t) vhd_ts + VHD_EPOCH;
  struct tm tm;
  gmtime_r (&t, &tm);
  strftime (out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void
info_human (const struct vhd_layer *l, enum vhd_size_rule rule)
{
  char uuid[37], ts[32], c1[17], c2[17];

  for (; l; l = l->parent) {
    if (l->raw) {               /* no footer: nothing but its length */
      printf ("\nparent: %s\n  type:           raw file (read-only, no "
              "footer; the child's parent UUID is all zeros)\n"
              "  size:           %" PRIu64 "\n", l->path, l->size);
      continue;
    }
    vhd_uuid_str (l->footer.uuid, uuid);
    time_str (l->footer.timestamp, ts);
    printf ("%s%s\n", l->depth ? "\nparent: " : "", l->path);
    printf ("  type:           %s\n", vhd_type_name (l->footer.type));
    printf ("  virtual size:   %" PRIu64 " (%.2f GiB; size_from=%s: %s)\n",
            l->size, l->size / 1073741824.0, vhd_size_rule_name (rule),
            size_rule_used (l));
    printf ("  current size:   %" PRIu64 "\n", l->footer.current_size);
    printf ("  CHS size:       %" PRIu64 " (geometry %u/%u/%u C/H/S)\n",
            vhd_chs_size (&l->footer), l->footer.cylinders,
            l->footer.heads, l->footer.sectors_per_track);
    printf ("  uuid:           %s\n", uuid);
    printf ("  time stamp:     %s\n", ts);
    printf ("  creator:        \"%s\" version 0x%08" PRIx32 " on \"%s\"\n",
            printable4 (l->footer.creator_app, c1), l->footer.creator_version,
            printable4 (l->footer.creator_os, c2));
    printf ("  file size:      %" PRIu64 "\n", l->file_size);
    if (l->footer_at == UINT64_MAX)
      printf ("  end footer:     MISSING (the copy at offset 0 is used; "
              "sxm-vhd check: repairable)\n");
    if (l->footer.type != VHD_TYPE_FIXED) {
      printf ("  block size:     %" PRIu32 "\n", l->block_size);
      printf ("  blocks:         %" PRIu32 " allocated of %" PRIu32 "\n",
              l->allocated, l->nblocks);
    }
    if (l->footer.type == VHD_TYPE_DIFF) {
      vhd_uuid_str (l->header.parent_uuid, uuid);
      printf ("  parent uuid:    %s\n", uuid);
      printf ("  parent name:    %s\n", l->header.parent_name);
      printf ("  parent found:   %s\n", l->parent_via ? l->parent_via : "-");
    }
  }
}

static void
info_json (const struct vhd_layer *top, enum vhd_size_rule rule)
{
  const struct vhd_layer *l;
  char uuid[37], ts[32], c[17];

  printf ("{\"virtual_size\": %" PRIu64 ", \"chain\": [", top->size);
  for (l = top; l; l = l->parent) {
    vhd_uuid_str (l->footer.uuid, uuid);
    time_str (l->footer.timestamp, ts);
    printf ("%s\n  {\"file\": ", l->depth ? "," : "");
    print_json_str (l->path);
    if (l->raw) {
      printf (", \"type\": \"raw\", \"virtual_size\": %" PRIu64
              ", \"file_size\": %" PRIu64 "}", l->size, l->file_size);
      continue;
    }
    printf (", \"type\": \"%s\", \"virtual_size\": %" PRIu64
            ", \"current_size\": %" PRIu64 ", \"chs_size\": %" PRIu64
            ", \"size_from\": \"%s\", \"size_rule\": \"%s\""
            ", \"cylinders\": %u, \"heads\": %u, \"sectors_per_track\": %u"
            ", \"uuid\": \"%s\", \"timestamp\": \"%s\", \"creator_app\": ",
            vhd_type_name (l->footer.type), l->size, l->footer.current_size,
            vhd_chs_size (&l->footer), vhd_size_rule_name (rule),
            size_rule_used (l), l->footer.cylinders, l->footer.heads,
            l->footer.sectors_per_track, uuid, ts);
    print_json_str (printable4 (l->footer.creator_app, c));
    printf (", \"file_size\": %" PRIu64 ", \"end_footer_missing\": %s",
            l->file_size, l->footer_at == UINT64_MAX ? "true" : "false");
    if (l->footer.type != VHD_TYPE_FIXED)
      printf (", \"block_size\": %" PRIu32 ", \"blocks\": %" PRIu32
              ", \"blocks_allocated\": %" PRIu32, l->block_size, l->nblocks,
              l->allocated);
    if (l->footer.type == VHD_TYPE_DIFF) {
      vhd_uuid_str (l->header.parent_uuid, uuid);
      printf (", \"parent_uuid\": \"%s\", \"parent_name\": ", uuid);
      print_json_str (l->header.parent_name);
      printf (", \"parent_via\": ");
      print_json_str (l->parent_via ? l->parent_via : "");
    }
    printf ("}");
  }
  printf ("\n]}\n");
}

/* coalesce: refuse when another image in the parent's directory is also a
 * child of the parent (it would see its parent change), then merge. */
static int
coalesce (const char *child_path, bool force)
{
  struct vhd_layer *child = vhd_open_chain (child_path, VHD_SIZE_CURRENT);
  char *parent = NULL, *pdir = NULL, *dircopy = NULL, *self = NULL;
  uint8_t puuid[16];
  uint64_t copied;
  DIR *dir;
  struct dirent *d;
  int ret = EXIT_FAILURE;

  if (!child)
    return open_failure (child_path, false);
  if (child->footer.type != VHD_TYPE_DIFF) {
    fprintf (stderr, "sxm-vhd coalesce: %s is not a differencing image\n",
             child_path);
    vhd_close_chain (child);
    return EXIT_USAGE;
  }
  parent = realpath (child->parent->path, NULL);
  self = realpath (child_path, NULL);
  memcpy (puuid, child->parent->footer.uuid, 16);
  vhd_close_chain (child);
  if (!parent || !self || !(dircopy = strdup (parent)))
    goto out;
  pdir = dirname (dircopy);
  dir = opendir (pdir);
  if (!dir) {
    fprintf (stderr, "sxm-vhd: %s: %s\n", pdir, strerror (errno));
    goto out;
  }
  while ((d = readdir (dir)) != NULL) {
    char *p, *rp;
    size_t n = strlen (d->d_name);
    if (n < 4 || strcasecmp (d->d_name + n - 4, ".vhd") != 0)
      continue;
    if (asprintf (&p, "%s/%s", pdir, d->d_name) == -1)
      continue;
    rp = realpath (p, NULL);
    if (rp && strcmp (rp, self) != 0 && strcmp (rp, parent) != 0 &&
        vhd_is_child_of (rp, puuid)) {
      fprintf (stderr, "sxm-vhd coalesce: %s has another child, %s: "
               "merging %s into it would change what that child reads%s\n",
               parent, rp, child_path,
               force ? " (--force given: going on)" : "; refusing (use "
               "--force if that child is to be discarded)");
      if (!force) {
        free (rp);
        free (p);
        closedir (dir);
        ret = EXIT_USAGE;
        goto out;
      }
    }
    free (rp);
    free (p);
  }
  closedir (dir);
  if (vhd_coalesce (child_path, &copied) == -1) {
    ret = open_failure (child_path, false);
    goto out;
  }
  printf ("coalesced %" PRIu64 " bytes of %s into %s; %s is now redundant\n",
          copied, child_path, parent, child_path);
  ret = 0;
 out:
  free (parent);
  free (self);
  free (dircopy);
  return ret;
}

static void
print_finding (void *opaque, enum vhd_check_result sev, const char *msg)
{
  static const char *const tag[] = { "note", "repairable", "corrupt" };
  printf ("%s: %s\n", tag[sev], msg);
}

struct xen_tally {
  const char *file;
  int failures, unrepairable;
};

static void
print_xen (void *opaque, bool repairable, const char *msg)
{
  struct xen_tally *t = opaque;
  printf ("xen: %s: %s%s\n", t->file, msg,
          repairable ? "" : " [repair does not fix this]");
  t->failures++;
  if (!repairable)
    t->unrepairable++;
}

/* XenServer's rules for every VHD file of the chain (a raw parent has
 * none): a line each, and a summary line.  Returns the tally. */
static struct xen_tally
check_xen (struct vhd_layer *top, const char *name)
{
  struct xen_tally all = { name, 0, 0 };

  for (struct vhd_layer *l = top; l; l = l->parent) {
    struct xen_tally t = { l->path, 0, 0 };
    if (l->raw)
      continue;
    if (vhd_xen_rules (l->path, print_xen, &t) == -1) {
      printf ("xen: %s: cannot be read: %s\n", l->path, strerror (errno));
      t.failures = t.unrepairable = 1;
    }
    all.failures += t.failures;
    all.unrepairable += t.unrepairable;
  }
  if (all.failures == 0)
    printf ("%s: XenServer's tools (blktap's vhd-util check rules) would "
            "accept it\n", name);
  else
    printf ("%s: XenServer's tools would REFUSE it: %d rule%s failed%s\n",
            name, all.failures, all.failures == 1 ? "" : "s",
            all.unrepairable ? "" : " ('sxm-vhd repair' fixes them)");
  return all;
}

static void
print_repair (void *opaque, const char *msg)
{
  printf ("%s: repaired: %s\n", (const char *) opaque, msg);
}

/* Exit status of a failed vhd_open_chain*(). */
static int
open_failure (const char *name, bool say)
{
  if (vhd_last_open_parent_failed ()) {
    if (say)
      printf ("%s: parent not found or unusable (see the error above); %s "
              "itself passed its own checks\n", name, name);
    return EXIT_PARENT;
  }
  if (vhd_last_open_was_invalid ()) {
    if (say)
      printf ("%s: corrupt (see the error above)\n", name);
    return EXIT_CORRUPT;
  }
  return EXIT_FAILURE;
}

struct map_out {
  bool json;
  bool first;
};

static int
print_run (void *opaque, uint64_t off, uint64_t len, bool alloc)
{
  struct map_out *mo = opaque;

  if (mo->json) {
    printf ("%s\n  {\"offset\": %" PRIu64 ", \"length\": %" PRIu64
            ", \"data\": %s}", mo->first ? "" : ",", off, len,
            alloc ? "true" : "false");
    mo->first = false;
  }
  else
    printf ("%16" PRIu64 " %16" PRIu64 "  %s\n", off, len,
            alloc ? "data" : "hole,zero");
  return 0;
}

int
main (int argc, char **argv)
{
  static const struct option opts[] = {
    { "json", no_argument, NULL, 'j' },
    { "size-from", required_argument, NULL, 's' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "type", required_argument, NULL, 't' },
    { "block-size", required_argument, NULL, 'b' },
    { "uuid", required_argument, NULL, 'u' },
    { "force", no_argument, NULL, 'f' },
    { "sr", required_argument, NULL, 'S' },
    { "xen", no_argument, NULL, 'x' },
    { "in-place", no_argument, NULL, 'i' },
    { NULL, 0, NULL, 0 }
  };
  enum vhd_size_rule rule = VHD_SIZE_CURRENT;
  enum vhd_type type = VHD_TYPE_DYNAMIC;
  uint64_t block_size = 2 << 20;
  uuid_t uuid;
  bool json = false, have_uuid = false, force = false, xen = false, in_place = false;
  const char *cmd, *sr = NULL;
  struct vhd_layer *top;
  int c, r = 0;

  sxm_log_set_program ("sxm-vhd");
  if (argc >= 2 && strcmp (argv[1], "--help") == 0) {
    usage (stdout);
    return 0;
  }
  if (argc >= 2 && strcmp (argv[1], "--version") == 0) {
    printf ("sxm-vhd %s\n", SXM_VERSION);
    return 0;
  }
  if (argc < 2) {
    usage (stderr);
    return EXIT_USAGE;
  }
  cmd = argv[1];
  if (strcmp (cmd, "live") == 0)
    return live (argc - 2, argv + 2);
  if (strcmp (cmd, "info") != 0 && strcmp (cmd, "map") != 0 &&
      strcmp (cmd, "check") != 0 && strcmp (cmd, "coalesce") != 0 &&
      strcmp (cmd, "resize") != 0 && strcmp (cmd, "repair") != 0 &&
      strcmp (cmd, "set-parent") != 0 && strcmp (cmd, "relink") != 0 &&
      strcmp (cmd, "create") != 0 && strcmp (cmd, "snapshot") != 0) {
    fprintf (stderr, "sxm-vhd: unknown subcommand '%s'\n", cmd);
    usage (stderr);
    return EXIT_USAGE;
  }
  optind = 2;
  while ((c = getopt_long (argc, argv, "", opts, NULL)) != -1)
    switch (c) {
    case 'j': json = true; break;
    case 's':
      if (vhd_size_rule_parse (optarg, &rule) == -1) {
        fprintf (stderr, "sxm-vhd: --size-from=%s: expected current, chs or "
                 "qemu\n", optarg);
        return EXIT_USAGE;
      }
      break;
    case 't':
      if (strcmp (optarg, "dynamic") == 0) type = VHD_TYPE_DYNAMIC;
      else if (strcmp (optarg, "fixed") == 0) type = VHD_TYPE_FIXED;
      else {
        fprintf (stderr, "sxm-vhd: --type=%s: expected dynamic or fixed\n",
                 optarg);
        return EXIT_USAGE;
      }
      break;
    case 'b':
      if (parse_size (optarg, &block_size) == -1 || block_size > UINT32_MAX) {
        fprintf (stderr, "sxm-vhd: --block-size=%s: not a size\n", optarg);
        return EXIT_USAGE;
      }
      break;
    case 'u':
      if (uuid_parse (optarg, uuid) == -1) {
        fprintf (stderr, "sxm-vhd: --uuid=%s: not a UUID\n", optarg);
        return EXIT_USAGE;
      }
      have_uuid = true;
      break;
    case 'f': force = true; break;
    case 'x': xen = true; break;
    case 'i': in_place = true; break;
    case 'S':
      if (!*optarg) {
        fprintf (stderr, "sxm-vhd: --sr: expected a directory\n");
        return EXIT_USAGE;
      }
      sr = optarg;
      break;
    case 'h': usage (stdout); return 0;
    default: usage (stderr); return EXIT_USAGE;
    }
  if (!have_uuid)
    uuid_generate (uuid);
  if (xen && strcmp (cmd, "check") != 0) {
    fprintf (stderr, "sxm-vhd %s: --xen is for check\n", cmd);
    return EXIT_USAGE;
  }
  if (in_place && strcmp (cmd, "snapshot") != 0) {
    fprintf (stderr, "sxm-vhd %s: --in-place is for snapshot\n", cmd);
    return EXIT_USAGE;
  }
  if (in_place)
    return snapshot_in_place (argc - optind, argv + optind, uuid);
  if (strcmp (cmd, "relink") == 0) {
    if (optind != argc - 2) {
      fprintf (stderr, "sxm-vhd relink: expected CHILD.vhd ANCESTOR.vhd\n");
      return EXIT_USAGE;
    }
    r = vhd_relink (argv[optind], argv[optind + 1]);
    if (r == -1)
      return open_failure (argv[optind], false);
    if (r == -2)
      return EXIT_FAILURE;
    printf ("%s: parent is now %s\n", argv[optind], argv[optind + 1]);
    return 0;
  }
  if (sr && strcmp (cmd, "create") != 0) {
    fprintf (stderr, "sxm-vhd %s: --sr is for create\n", cmd);
    return EXIT_USAGE;
  }

  if (strcmp (cmd, "resize") == 0) {
    uint64_t size;
    if (optind != argc - 2 || parse_size (argv[optind + 1], &size) == -1) {
      fprintf (stderr, "sxm-vhd resize: expected FILE.vhd NEW_SIZE (with an "
               "optional K, M, G or T suffix)\n");
      return EXIT_USAGE;
    }
    if (vhd_resize (argv[optind], size) == -1)
      return open_failure (argv[optind], false);
    return 0;
  }
  if (strcmp (cmd, "set-parent") == 0) {
    if (optind != argc - 2) {
      fprintf (stderr, "sxm-vhd set-parent: expected CHILD.vhd PARENT\n");
      return EXIT_USAGE;
    }
    r = vhd_set_parent (argv[optind], argv[optind + 1]);
    if (r == -1)
      return open_failure (argv[optind], false);
    if (r == -2)
      return EXIT_FAILURE;      /* PARENT refused (said why); CHILD as it was */
    printf ("%s: parent is now %s\n", argv[optind], argv[optind + 1]);
    return 0;
  }
  if (strcmp (cmd, "create") == 0 || strcmp (cmd, "snapshot") == 0) {
    uint64_t size = 0;
    char us[37];
    char *sr_path = NULL;
    const char *file, *second;    /* FILE SIZE, or PARENT CHILD */
    struct stat st;

    if (optind != argc - (sr ? 1 : 2)) {
      if (sr)
        fprintf (stderr, "sxm-vhd create --sr DIR: expected one argument, "
                 "SIZE (the image is DIR/UUID.vhd)\n");
      else
        fprintf (stderr, "sxm-vhd %s: expected two arguments (see --help)\n",
                 cmd);
      return EXIT_USAGE;
    }
    file = argv[optind];
    second = sr ? argv[optind] : argv[optind + 1];
    if (strcmp (cmd, "create") == 0 && parse_size (second, &size) == -1) {
      fprintf (stderr, "sxm-vhd create: size '%s': expected a number with "
               "an optional K, M, G or T suffix\n", second);
      return EXIT_USAGE;
    }
    uuid_unparse_lower (uuid, us);
    if (sr) {
      /* In an SR an image is named by its UUID: DIR/<uuid>.vhd. */
      if (stat (sr, &st) == -1) {
        fprintf (stderr, "sxm-vhd create: --sr %s: %s\n", sr,
                 strerror (errno));
        return EXIT_FAILURE;
      }
      if (!S_ISDIR (st.st_mode)) {
        fprintf (stderr, "sxm-vhd create: --sr %s: not a directory\n", sr);
        return EXIT_FAILURE;
      }
      if (asprintf (&sr_path, "%s%s%s.vhd", sr,
                    sr[strlen (sr) - 1] == '/' ? "" : "/", us) == -1) {
        fprintf (stderr, "sxm-vhd: out of memory\n");
        return EXIT_FAILURE;
      }
      file = sr_path;
    }
    if (strcmp (cmd, "snapshot") == 0)
      r = vhd_snapshot (file, second, uuid);
    else
      r = vhd_create (file, type, size, block_size, uuid);
    if (r == 0) {
      if (sr_path)
        printf ("%s %s\n", us, sr_path);
      else
        printf ("%s\n", us);
    }
    free (sr_path);
    return r == 0 ? 0 : EXIT_FAILURE;
  }

  if (optind != argc - 1) {
    fprintf (stderr, "sxm-vhd %s: expected exactly one FILE.vhd\n", cmd);
    return EXIT_USAGE;
  }

  if (strcmp (cmd, "coalesce") == 0)
    return coalesce (argv[optind], force);
  if (strcmp (cmd, "repair") == 0) {
    r = vhd_repair (argv[optind], print_repair, argv[optind]);
    if (r == -1)
      return open_failure (argv[optind], true);
    if (r == 0)
      printf ("%s: nothing to repair\n", argv[optind]);
    return 0;
  }

  top = vhd_open_chain (argv[optind], rule);
  if (!top)
    return open_failure (argv[optind], strcmp (cmd, "check") == 0);
  if (strcmp (cmd, "check") == 0) {
    enum vhd_check_result res = vhd_check (top, print_finding, NULL);
    static const char *const word[] = { "clean", "repairable", "corrupt" };
    struct xen_tally xt;
    int status;

    printf ("%s: %s\n", argv[optind], word[res]);
    status = res == VHD_CHECK_CLEAN ? 0
             : res == VHD_CHECK_REPAIRABLE ? EXIT_REPAIRABLE : EXIT_CORRUPT;
    xt = check_xen (top, argv[optind]);
    vhd_close_chain (top);
    /* Only with --xen does XenServer's verdict decide the status, and
     * never over a worse one of our own. */
    if (xen && status != EXIT_CORRUPT && xt.failures)
      status = xt.unrepairable ? EXIT_XEN_REFUSES : EXIT_REPAIRABLE;
    return status;
  }
  if (strcmp (cmd, "info") == 0) {
    if (json)
      info_json (top, rule);
    else
      info_human (top, rule);
  }
  else {
    struct map_out mo = { json, true };
    if (json)
      printf ("[");
    r = vhd_map (top, 0, top->size, false, print_run, &mo);
    if (json)
      printf ("\n]\n");
    if (r == -1)
      fprintf (stderr, "sxm-vhd: map of %s failed: %s\n", argv[optind],
               strerror (errno));
  }
  vhd_close_chain (top);
  if (fflush (stdout) == EOF) {
    fprintf (stderr, "sxm-vhd: writing output: %s\n", strerror (errno));
    return EXIT_FAILURE;
  }
  return r == -1 ? EXIT_FAILURE : 0;
}
