/* The VHD format: the one parser in sxm.
 *
 * Microsoft's "Virtual Hard Disk Image Format Specification" (v1.0) defines
 * three disk types: fixed (raw data + 512-byte footer), dynamic (footer copy,
 * 1 KiB dynamic header, block allocation table (BAT), blocks each made of a
 * sector bitmap and block_size bytes of data, footer) and differencing
 * (dynamic + a parent named by locators; an unset sector bit means "read the
 * parent").  All metadata is big-endian.
 *
 * vhd_open_chain() opens an image and, for differencing disks, its parents,
 * validating every field it later trusts, so that the read and map paths need
 * no further checks beyond I/O errors.  See doc/design.md, "VHD layer". */
#ifndef SXM_VHD_H
#define SXM_VHD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "rangelock.h"

#define VHD_SECTOR        512
#define VHD_FOOTER_SIZE   512
#define VHD_HEADER_SIZE   1024
#define VHD_MAX_SIZE      (2040ULL << 30)     /* spec limit, also qemu's */
#define VHD_MAX_CHAIN     256                 /* parents followed at most */
#define VHD_MAX_BLOCK     (256U << 20)
#define VHD_MAX_BAT       (1U << 24)          /* entries actually used */
#define VHD_MAX_LOCATOR   65536               /* bytes of locator data */
#define VHD_BAT_UNUSED    0xffffffffU
#define VHD_NR_LOCATORS   8

enum vhd_type { VHD_TYPE_FIXED = 2, VHD_TYPE_DYNAMIC = 3, VHD_TYPE_DIFF = 4 };

/* How the virtual size is derived; see vhd_virtual_size().  CURRENT (the
 * footer's current size, what Xen's tapdisk and Hyper-V present) is the
 * default; CHS is the geometry's size, for images a Virtual PC guest used;
 * QEMU is qemu's vpc driver's choice between the two, for interop checks. */
enum vhd_size_rule { VHD_SIZE_CURRENT, VHD_SIZE_CHS, VHD_SIZE_QEMU };

struct vhd_footer {
  uint32_t features;
  uint32_t version;
  uint64_t data_offset;
  uint32_t timestamp;           /* seconds since 2000-01-01 00:00 UTC */
  char creator_app[5];          /* NUL-terminated copy of the 4 bytes */
  uint32_t creator_version;
  char creator_os[5];
  uint64_t original_size;
  uint64_t current_size;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors_per_track;
  uint32_t type;
  uint32_t checksum;
  uint8_t uuid[16];
  uint8_t saved_state;
};

struct vhd_locator {
  char code[5];                 /* "W2ru", "W2ku", "MacX", ... */
  uint32_t data_space;
  uint32_t data_length;
  uint64_t data_offset;
};

struct vhd_header {
  uint64_t data_offset;
  uint64_t table_offset;
  uint32_t version;
  uint32_t max_table_entries;
  uint32_t block_size;
  uint32_t checksum;
  uint8_t parent_uuid[16];
  uint32_t parent_timestamp;
  char parent_name[1024];       /* UTF-8, decoded from UTF-16BE */
  struct vhd_locator loc[VHD_NR_LOCATORS];
};

/* One image file of a chain. */
struct vhd_layer {
  char *path;
  int fd;
  uint64_t file_size;
  uint64_t data_limit;          /* end of the data area (the end footer, or
                                   the file end if only the copy at 0 was
                                   valid) */
  uint64_t footer_at;           /* offset of a valid end footer, or
                                   UINT64_MAX */
  struct vhd_footer footer;
  struct vhd_header header;     /* dynamic and differencing only */
  uint64_t size;                /* virtual size in bytes */

  /* Dynamic and differencing only. */
  uint32_t block_size;
  unsigned block_shift;
  uint32_t bitmap_bytes;        /* sector bitmap, padded to 512 bytes */
  uint32_t nblocks;             /* BAT entries covering 'size' */
  uint32_t *bat;                /* host order, VHD_BAT_UNUSED or sector */
  uint32_t allocated;           /* number of allocated BAT entries */
  uint8_t **bitmaps;            /* lazily filled cache, see vhd.c */

  /* Writer state (top layer opened with VHD_OPEN_WRITE only); see
   * vhd-write.c for the locking and the crash-safe ordering. */
  bool writable;
  uint8_t footer_buf[VHD_FOOTER_SIZE];  /* the footer as read */
  pthread_mutex_t meta;         /* dirty lists, bitmap bits, data_end */
  pthread_mutex_t flush_lock;   /* one flush at a time */
  struct rangelock block_locks; /* per block: allocation, partial bitmaps */
  uint64_t data_end;            /* where the next block goes */
  uint8_t *dirty;               /* per block: DIRTY_* flags */
  uint32_t *dirty_list;
  size_t ndirty, dirty_cap;
  bool footer_dirty;

  /* A raw parent (XenServer's `vhd-util snapshot -m`: a differencing
   * VHD over a raw file, parent UUID all zeros): no footer or header, the
   * footer fields zero but type FIXED and current_size the file size, so
   * that reads and the map treat it as a fixed image.  Never written. */
  bool raw;
  char *parent_via;             /* "W2ru ./p.vhd": how the parent was found */
  struct vhd_layer *parent;
  unsigned depth;               /* 0 for the top of the chain */
};

/* Open PATH and its whole parent chain read-only.  On failure returns NULL
 * and reports the reason through sxm_error(), naming the file, the field and
 * its file offset. */
struct vhd_layer *vhd_open_chain (const char *path, enum vhd_size_rule rule);

/* The same, but the top image is opened read-write if the file allows it
 * (top->writable says whether it was).  Parents are always read-only. */
struct vhd_layer *vhd_open_chain_rw (const char *path,
                                     enum vhd_size_rule rule);

/* Writes to a writable top layer (vhd-write.c).  Any alignment.  Data
 * reaches the file at once; the metadata that makes it visible after a
 * restart (BAT entries, sector bitmaps, footer) is written by vhd_flush(),
 * after the data is durable.  Return 0, or -1 with errno set. */
int vhd_write (struct vhd_layer *top, const void *buf, uint64_t count,
               uint64_t offset);
/* Make [offset, offset+count) read as zeros.  If FAST_ONLY and that needs
 * any writing (a range not already zero through the chain), fail with
 * ENOTSUP before doing anything. */
int vhd_zero (struct vhd_layer *top, uint64_t count, uint64_t offset,
              bool fast_only);
/* Make every write completed before the call durable. */
int vhd_flush (struct vhd_layer *top);
void vhd_close_chain (struct vhd_layer *top);

/* Read COUNT bytes at virtual OFFSET (any alignment; OFFSET + COUNT must not
 * exceed top->size).  Sectors resolve through the chain; sectors allocated in
 * no layer read as zeros.  Returns 0, or -1 with errno set (EIO on short
 * reads of a file that changed under us). */
int vhd_read (struct vhd_layer *top, void *buf, uint64_t count,
              uint64_t offset);

/* Allocation map of [OFFSET, OFFSET+COUNT): calls FN for maximal runs of
 * equal allocation, in order.  'allocated' means some layer of the chain
 * holds data there; otherwise the range reads as zeros.  If FIRST_ONLY, stops
 * after the first run.  FN returns 0 to go on, non-zero to stop.  Returns 0,
 * or -1 with errno set. */
typedef int (*vhd_map_fn) (void *opaque, uint64_t offset, uint64_t length,
                           bool allocated);
int vhd_map (struct vhd_layer *top, uint64_t offset, uint64_t count,
             bool first_only, vhd_map_fn fn, void *opaque);

/* One layer's own data (an increment: what a differencing image holds
 * over its parents): L's sectors read as stored in L, every other sector
 * as zeros, and the map calls 'allocated' exactly L's sectors.  L is any
 * layer of an opened chain (its parents are what lies under it). */
int vhd_read_own (struct vhd_layer *l, void *buf, uint64_t count,
                  uint64_t offset);
int vhd_map_own (struct vhd_layer *l, uint64_t offset, uint64_t count,
                 bool first_only, vhd_map_fn fn, void *opaque);

/* Create a new fixed or dynamic image at PATH (which must not exist) of
 * SIZE bytes (a multiple of 512); BLOCK_SIZE applies to dynamic images.
 * Written to a temporary file, synced and renamed into place.  Returns 0,
 * or -1 after sxm_error(). */
int vhd_create (const char *path, enum vhd_type type, uint64_t size,
                uint32_t block_size, const uint8_t uuid[16]);

/* Create CHILD, a new empty differencing image over PARENT (validated as a
 * whole chain first), with W2ru (relative), W2ku (absolute) and MacX
 * locators.  Same virtual size and block size as the parent. */
int vhd_snapshot (const char *parent, const char *child,
                  const uint8_t uuid[16]);
/* Snapshot LEAF keeping its name (XenServer's way: the disk's file stays
 * the one that takes the writes): LEAF's file gets the second name BASE
 * (which must not exist, on the same file system; NULL: a new random
 * UUID's name in LEAF's directory, an SR's naming; the name used is
 * returned in *BASE_OUT, malloc'd, on success) and LEAF becomes a new
 * empty differencing child of BASE with UUID.  Crash-safe: BASE is a hard
 * link (directory synced), the child is written beside LEAF and synced,
 * then renamed over LEAF (directory synced), so LEAF always names a whole
 * image that reads the same.  A crash before the rename leaves BASE as a
 * second name of LEAF's file.  Offline: nobody may have LEAF open for
 * writing (the vhd plugin's "snapshot" control command closes its chain
 * around this).  0, or -1 after sxm_error() with LEAF as it was. */
int vhd_snapshot_in_place (const char *leaf, const char *base,
                           const uint8_t uuid[16], char **base_out);
/* A random (version 4) UUID, from getrandom(2). */
void vhd_uuid_random (uint8_t uuid[16]);

/* Merge differencing image CHILD into its parent (vhd-coalesce.c): every
 * sector CHILD holds is written into the parent through the crash-safe
 * writer; CHILD is only read, so an interrupted run is resumed by running
 * it again.  The caller must make sure the parent has no other child.
 * *COPIED gets the bytes written.  Returns 0, or -1 after sxm_error(). */
int vhd_coalesce (const char *child, uint64_t *copied);
/* Grow a dynamic or differencing image to NEW_SIZE (offline), relocating
 * the BAT to the end of the file if it is too small (vhd-resize.c). */
int vhd_resize (const char *path, uint64_t new_size);
/* Whether PATH carries a VHD footer cookie (at the end, or the copy at 0,
 * where opening looks): 1, 0, or -1 if it cannot be read (errno).  Nothing
 * else is checked: opening says what is wrong with it. */
int vhd_has_footer (const char *path);
/* Whether PATH is a differencing VHD whose parent has UUID (quiet; finds
 * the footer exactly as opening does). */
bool vhd_is_child_of (const char *path, const uint8_t uuid[16]);

/* Check an opened chain (vhd-check.c): opening already refused everything
 * that makes reads wrong; this reports what a writer can leave behind (no
 * end footer, footer copies that differ: repairable; unreferenced space:
 * informational) and reads every sector bitmap.  REPORT is called for each
 * finding with its severity. */
enum vhd_check_result { VHD_CHECK_CLEAN, VHD_CHECK_REPAIRABLE,
                        VHD_CHECK_CORRUPT };
typedef void (*vhd_check_report) (void *opaque, enum vhd_check_result sev,
                                  const char *msg);
enum vhd_check_result vhd_check (struct vhd_layer *top,
                                 vhd_check_report report, void *opaque);

/* True if the last failed vhd_open_chain*() in this thread failed because
 * the image is invalid (rather than for an I/O or system error). */
bool vhd_last_open_was_invalid (void);
/* True if it failed at a parent: not found through any locator, found
 * with another UUID, or unusable itself.  The image that names it passed
 * every check of its own (parents are opened last). */
bool vhd_last_open_parent_failed (void);

/* VHD time stamps count seconds from 2000-01-01 00:00:00 UTC. */
#define VHD_EPOCH 946684800

/* Format helpers, exposed for the tools and the unit tests. */
uint32_t vhd_checksum (const uint8_t *buf, size_t len, size_t skip_offset);
/* PATH NULL: validate quietly (no error report). */
int vhd_footer_parse (const uint8_t *buf,
                      struct vhd_footer *f, const char *path, uint64_t where);
uint64_t vhd_virtual_size (const struct vhd_footer *f, enum vhd_size_rule r);

/* XenServer's rules (vhd-xen.c): would blktap's libvhd and 'vhd-util
 * check' accept the file at PATH?  Each failed rule is reported once, in
 * blktap's words with the offset, REPAIRABLE when 'sxm-vhd repair' fixes
 * it.  Returns the number of failures (0: accepted), or -1 with errno if
 * the file cannot be read.  Parents are not checked, only located. */
typedef void (*vhd_xen_report) (void *opaque, bool repairable,
                                const char *msg);
int vhd_xen_rules (const char *path, vhd_xen_report report, void *opaque);
/* Point differencing image CHILD at PARENT, which must be the image it was
 * made over (same UUID; a raw file for a child of a raw file), after the
 * parent moved: new locators and parent name, written crash-safely
 * (vhd-setparent.c), offline.  0; -1 if CHILD does not open (see
 * vhd_last_open_*); -2 for anything else (PARENT refused, I/O): with a
 * message. */
int vhd_set_parent (const char *child, const char *parent);
/* The same, but ANCESTOR is an image further down CHILD's chain (not its
 * parent): CHILD's parent UUID becomes ANCESTOR's, so the layers between
 * drop out.  They must have been coalesced into ANCESTOR first (the
 * caller's promise: CHILD then reads the same).  Same returns. */
int vhd_relink (const char *child, const char *ancestor);

/* Repair what check calls repairable (vhd-repair.c), offline: a geometry
 * larger than blktap accepts, a missing end footer, a footer copy at
 * offset 0 that differs.  Each change is reported; returns 1 if something
 * was repaired, 0 if nothing needed it, -1 with a message printed. */
typedef void (*vhd_repair_report) (void *opaque, const char *msg);
int vhd_repair (const char *path, vhd_repair_report report, void *opaque);
/* The geometry blktap expects for SIZE, packed C << 16 | H << 8 | S. */
uint32_t vhd_xen_geometry (uint64_t size);
/* The geometry's size, cylinders x heads x sectors x 512. */
uint64_t vhd_chs_size (const struct vhd_footer *f);
/* "current", "chs", "qemu"; parse accepts those and "auto" (the name the
 * qemu rule had when it was the default).  Parse returns 0 or -1. */
const char *vhd_size_rule_name (enum vhd_size_rule r);
int vhd_size_rule_parse (const char *s, enum vhd_size_rule *r);
const char *vhd_type_name (uint32_t type);
void vhd_uuid_str (const uint8_t uuid[16], char out[37]);
/* UTF-16 (big- or little-endian) to UTF-8; returns bytes written or -1 on
 * malformed input.  OUT is always NUL-terminated when OUTLEN > 0. */
ssize_t vhd_utf16_to_utf8 (const uint8_t *in, size_t inlen, bool big_endian,
                           char *out, size_t outlen);
/* UTF-8 to UTF-16 (no terminator); returns bytes written or -1 on malformed
 * input or overflow. */
ssize_t vhd_utf8_to_utf16 (const char *in, bool big_endian, uint8_t *out,
                           size_t outlen);

#endif
